// Command tailguard-oci packs the static tailguard binary into a container
// image with no base layer (the equivalent of FROM scratch), with
// go-containerregistry, reproducibly: every timestamp is SOURCE_DATE_EPOCH,
// tar entries are sorted with fixed owners and modes, gzip carries no
// timestamp. Two builds of the same binary give the same digest.
//
//	tailguard-oci build --binary FILE --out DIR --name tailguard --version V --revision R --source URL
//	tailguard-oci unpack --layout DIR --out ROOTFS
//	tailguard-oci verify --layout DIR --archive FILE
//
// build writes DIR/oci (an OCI image layout), DIR/tailguard-V.tar (an image
// archive for docker load, podman load, kind load image-archive, skopeo and
// crane), DIR/tailguard-V.deps.json (the dependency list cargo-auditable
// embedded in the binary) and prints the manifest digest. unpack applies the
// image's layers to a directory (what a runtime does before it starts the
// container). verify reads the archive as `docker load` does and checks it
// holds the layout's image (config and layers).
package main

import (
	"archive/tar"
	"bytes"
	"compress/zlib"
	"debug/elf"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

// The user the image runs as (the chart's runAsUser/runAsGroup too).
const (
	uid = 65532
	gid = 65532
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "build":
		err = cmdBuild(os.Args[2:])
	case "unpack":
		err = cmdUnpack(os.Args[2:])
	case "verify":
		err = cmdVerify(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "tailguard-oci %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: tailguard-oci build --binary FILE --out DIR --version V [--revision R] [--source URL] [--name N]")
	fmt.Fprintln(os.Stderr, "       tailguard-oci unpack --layout DIR --out ROOTFS")
	fmt.Fprintln(os.Stderr, "       tailguard-oci verify --layout DIR --archive FILE")
	os.Exit(2)
}

// sourceEpoch is SOURCE_DATE_EPOCH (seconds), 0 when unset.
func sourceEpoch() (time.Time, error) {
	v := os.Getenv("SOURCE_DATE_EPOCH")
	if v == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH=%q: %w", v, err)
	}
	return time.Unix(n, 0).UTC(), nil
}

type entry struct {
	name string
	mode int64
	body []byte // nil for a directory
}

// rootLayer is the image's only layer: the binary and the passwd/group
// entries of its user, in a tar with sorted entries, fixed owners and times.
func rootLayer(binary []byte, epoch time.Time) (v1.Layer, error) {
	entries := []entry{
		{name: "etc/", mode: 0o755},
		{name: "etc/group", mode: 0o644, body: []byte(fmt.Sprintf("nonroot:x:%d:\n", gid))},
		{name: "etc/passwd", mode: 0o644, body: []byte(fmt.Sprintf("nonroot:x:%d:%d:nonroot:/nonexistent:/sbin/nologin\n", uid, gid))},
		{name: "tailguard", mode: 0o755, body: binary},
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].name < entries[j].name })
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: e.mode, ModTime: epoch, Uid: 0, Gid: 0, Format: tar.FormatUSTAR}
		if e.body == nil {
			h.Typeflag = tar.TypeDir
		} else {
			h.Typeflag = tar.TypeReg
			h.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.body); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	}, tarball.WithMediaType(types.OCILayer))
}

// auditDeps returns the dependency list cargo-auditable embeds in a binary
// (the zlib-compressed JSON of the .dep-v0 section).
func auditDeps(binary []byte) ([]byte, error) {
	f, err := elf.NewFile(bytes.NewReader(binary))
	if err != nil {
		return nil, fmt.Errorf("not an ELF binary: %w", err)
	}
	sec := f.Section(".dep-v0")
	if sec == nil {
		return nil, errors.New("no .dep-v0 section: build it with `cargo auditable build` (scripts/image.sh does)")
	}
	raw, err := sec.Data()
	if err != nil {
		return nil, err
	}
	zr, err := zlib.NewReader(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf(".dep-v0: %w", err)
	}
	defer zr.Close()
	return io.ReadAll(io.LimitReader(zr, 16<<20))
}

// staticELF checks the binary needs no loader or libraries from the image.
func staticELF(binary []byte) error {
	f, err := elf.NewFile(bytes.NewReader(binary))
	if err != nil {
		return err
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return errors.New("the binary is dynamically linked (it has an ELF interpreter); the image has no libc")
		}
	}
	return nil
}

func cmdBuild(args []string) error {
	fs := flag.NewFlagSet("build", flag.ContinueOnError)
	binPath := fs.String("binary", "", "the static tailguard binary")
	out := fs.String("out", "", "output directory")
	imgName := fs.String("name", "tailguard", "image name (the archive's tag)")
	version := fs.String("version", "", "image version (tag and label)")
	revision := fs.String("revision", "", "source revision (label)")
	source := fs.String("source", "", "source repository URL (label)")
	licenses := fs.String("licenses", "Apache-2.0", "SPDX license expression (label)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *binPath == "" || *out == "" || *version == "" {
		return errors.New("--binary, --out and --version are required")
	}
	epoch, err := sourceEpoch()
	if err != nil {
		return err
	}
	binary, err := os.ReadFile(*binPath)
	if err != nil {
		return err
	}
	if err := staticELF(binary); err != nil {
		return err
	}
	deps, err := auditDeps(binary)
	if err != nil {
		return err
	}
	layer, err := rootLayer(binary, epoch)
	if err != nil {
		return err
	}
	img, err := mutate.Append(empty.Image, mutate.Addendum{
		Layer: layer,
		History: v1.History{
			Created:   v1.Time{Time: epoch},
			CreatedBy: "tailguard-oci build: /tailguard, /etc/passwd, /etc/group",
		},
	})
	if err != nil {
		return err
	}
	img = mutate.MediaType(img, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = "amd64", "linux"
	cf.Created = v1.Time{Time: epoch}
	cf.Config.User = fmt.Sprintf("%d:%d", uid, gid)
	cf.Config.Entrypoint = []string{"/tailguard"}
	cf.Config.Cmd = []string{"serve"}
	cf.Config.WorkingDir = "/"
	// 8443: the webhook (HTTPS). 8080: /healthz, /readyz, /metrics.
	cf.Config.ExposedPorts = map[string]struct{}{"8443/tcp": {}, "8080/tcp": {}}
	cf.Config.Labels = map[string]string{
		"org.opencontainers.image.title":       "tailguard",
		"org.opencontainers.image.description": "Admission webhook and linter for Tailscale workloads on Kubernetes",
		"org.opencontainers.image.version":     *version,
		"org.opencontainers.image.licenses":    *licenses,
		"org.opencontainers.image.created":     epoch.Format(time.RFC3339),
	}
	if *revision != "" {
		cf.Config.Labels["org.opencontainers.image.revision"] = *revision
	}
	if *source != "" {
		cf.Config.Labels["org.opencontainers.image.source"] = *source
	}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return err
	}

	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	// The OCI image layout, written fresh (an existing one would be appended to).
	layoutDir := filepath.Join(*out, "oci")
	if err := os.RemoveAll(layoutDir); err != nil {
		return err
	}
	p, err := layout.Write(layoutDir, empty.Index)
	if err != nil {
		return err
	}
	ref := fmt.Sprintf("%s:%s", *imgName, *version)
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{
		"org.opencontainers.image.ref.name": *version,
		"io.containerd.image.name":          ref,
	})); err != nil {
		return err
	}
	tag, err := name.NewTag(ref, name.WithDefaultRegistry(""))
	if err != nil {
		return err
	}
	archive := filepath.Join(*out, fmt.Sprintf("%s-%s.tar", *imgName, *version))
	if err := tarball.WriteToFile(archive, tag, img); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(*out, fmt.Sprintf("%s-%s.deps.json", *imgName, *version)), deps, 0o644); err != nil {
		return err
	}
	// What was written, read back as a consumer would, validated (every
	// digest and size), and the archive checked to hold the same image.
	written, err := verify(layoutDir, archive)
	if err != nil {
		return fmt.Errorf("the written image does not verify: %w", err)
	}
	digest, err := written.Digest()
	if err != nil {
		return err
	}
	size := int64(0)
	if l, err := written.Layers(); err == nil {
		for _, x := range l {
			if s, err := x.Size(); err == nil {
				size += s
			}
		}
	}
	fmt.Printf("digest=%s\nref=%s\narchive=%s\nlayout=%s\ncompressed_bytes=%d\n", digest, ref, archive, layoutDir, size)
	return nil
}

// layoutImage is the only image of an OCI layout.
func layoutImage(dir string) (v1.Image, error) {
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return nil, err
	}
	m, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	if len(m.Manifests) != 1 {
		return nil, fmt.Errorf("want one image in %s, found %d", dir, len(m.Manifests))
	}
	return idx.Image(m.Manifests[0].Digest)
}

func cmdVerify(args []string) error {
	fs := flag.NewFlagSet("verify", flag.ContinueOnError)
	layoutDir := fs.String("layout", "", "OCI image layout directory")
	archive := fs.String("archive", "", "image archive (docker load format)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	img, err := verify(*layoutDir, *archive)
	if err != nil {
		return err
	}
	d, err := img.Digest()
	if err != nil {
		return err
	}
	fmt.Printf("ok digest=%s\n", d)
	return nil
}

// verify validates the layout's image and the archive's, and checks they
// have the same config and layers; it returns the layout's image.
func verify(layoutDir, archive string) (v1.Image, error) {
	want, err := layoutImage(layoutDir)
	if err != nil {
		return nil, err
	}
	got, err := tarball.ImageFromPath(archive, nil)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", archive, err)
	}
	for _, img := range []v1.Image{want, got} {
		if err := validate.Image(img); err != nil {
			return nil, err
		}
	}
	wc, err := want.ConfigName()
	if err != nil {
		return nil, err
	}
	gc, err := got.ConfigName()
	if err != nil {
		return nil, err
	}
	if wc != gc {
		return nil, fmt.Errorf("config %s in the layout, %s in the archive", wc, gc)
	}
	wl, err := want.Layers()
	if err != nil {
		return nil, err
	}
	gl, err := got.Layers()
	if err != nil {
		return nil, err
	}
	if len(wl) != len(gl) {
		return nil, fmt.Errorf("%d layers in the layout, %d in the archive", len(wl), len(gl))
	}
	for i := range wl {
		wd, _ := wl[i].Digest()
		gd, _ := gl[i].Digest()
		if wd != gd {
			return nil, fmt.Errorf("layer %d: %s vs %s", i, wd, gd)
		}
	}
	return want, nil
}

// cmdUnpack applies the layers of the only image in an OCI layout to a
// directory (regular files, directories and symlinks; no whiteouts: the
// image has one layer).
func cmdUnpack(args []string) error {
	fs := flag.NewFlagSet("unpack", flag.ContinueOnError)
	layoutDir := fs.String("layout", "", "OCI image layout directory")
	out := fs.String("out", "", "directory to unpack into (created)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *layoutDir == "" || *out == "" {
		return errors.New("--layout and --out are required")
	}
	img, err := layoutImage(*layoutDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		clean := filepath.Clean("/" + h.Name)
		if clean == "/" {
			continue
		}
		target := filepath.Join(*out, strings.TrimPrefix(clean, "/"))
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, os.FileMode(h.Mode)&0o7777); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				return err
			}
			f, err := os.OpenFile(target, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, os.FileMode(h.Mode)&0o7777)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
		case tar.TypeSymlink:
			if err := os.Symlink(h.Linkname, target); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%s: unsupported entry type %c", h.Name, h.Typeflag)
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	fmt.Printf("user=%s\nentrypoint=%s\ncmd=%s\n", cf.Config.User, strings.Join(cf.Config.Entrypoint, " "), strings.Join(cf.Config.Cmd, " "))
	return nil
}

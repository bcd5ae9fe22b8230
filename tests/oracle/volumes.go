package main

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

const saMountPath = "/var/run/secrets/kubernetes.io/serviceaccount"

// volume is a pod volume prepared on the emulated node.
type volume struct {
	dir      string // host path of the volume's root (dir or file)
	readOnly bool   // always mounted read-only (secret, configMap, projected, downwardAPI)
	hostDev  bool   // a hostPath under /dev: the host's real device nodes
}

// writeFiles writes data files into dir (0644 unless mode), like the kubelet's
// atomic writer does for secret/configMap/projected volumes.
func writeFiles(dir string, files map[string]string, mode os.FileMode, gid *int64) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for rel, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(path.Clean("/"+rel)))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			return err
		}
		if err := os.Chmod(p, mode); err != nil {
			return err
		}
		if gid != nil {
			os.Lchown(p, 0, int(*gid))
		}
	}
	return nil
}

func fileMode(m *int32, def os.FileMode) os.FileMode {
	if m != nil {
		return os.FileMode(*m) & 0o777
	}
	return def
}

// projectKeys selects keys of an object per items (all keys when none).
func projectKeys(data map[string]string, items []KeyToPath) (map[string]string, error) {
	out := map[string]string{}
	if len(items) == 0 {
		for k, v := range data {
			out[k] = v
		}
		return out, nil
	}
	for _, it := range items {
		v, ok := data[it.Key]
		if !ok {
			return nil, fmt.Errorf("configmap references non-existent config key: %s", it.Key)
		}
		out[it.Path] = v
	}
	return out, nil
}

// prepareVolumes materialises the pod's volumes under the case directory. A
// missing Secret/ConfigMap that is not optional is reported as a config error
// (on a real node the pod would stay in ContainerCreating with FailedMount).
func (p *pod) prepareVolumes() error {
	p.volumes = map[string]*volume{}
	var fsGroup *int64
	if sc := p.c.Pod.Spec.SecurityContext; sc != nil {
		fsGroup = sc.FSGroup
	}
	for _, v := range p.c.Pod.Spec.Volumes {
		dir := filepath.Join(p.dir, "volumes", v.Name)
		switch {
		case v.HostPath != nil:
			vol, err := p.hostPathVolume(v.Name, v.HostPath)
			if err != nil {
				return err
			}
			p.volumes[v.Name] = vol
		case v.Secret != nil || v.ConfigMap != nil:
			kind, name, items, mode, optional := "secret", "", []KeyToPath(nil), (*int32)(nil), (*bool)(nil)
			if v.Secret != nil {
				name, items, mode, optional = v.Secret.SecretName, v.Secret.Items, v.Secret.DefaultMode, v.Secret.Optional
			} else {
				kind = "configmap"
				name, items, mode, optional = v.ConfigMap.Name, v.ConfigMap.Items, v.ConfigMap.DefaultMode, v.ConfigMap.Optional
			}
			data, exists := p.penv.objectKeys(kind, name)
			if !exists && !isTrue(optional) {
				return cfgErr("MountVolume.SetUp failed for volume %q : %s %q not found", v.Name, kind, name)
			}
			files, err := projectKeys(data, items)
			if err != nil && !isTrue(optional) {
				return cfgErr("MountVolume.SetUp failed for volume %q : %v", v.Name, err)
			}
			if err := writeFiles(dir, files, fileMode(mode, 0o644), fsGroup); err != nil {
				return err
			}
			p.volumes[v.Name] = &volume{dir: dir, readOnly: true}
		case v.Projected != nil:
			files := map[string]string{}
			for _, src := range v.Projected.Sources {
				switch {
				case src.Secret != nil || src.ConfigMap != nil:
					kind, sp := "secret", src.Secret
					if sp == nil {
						kind, sp = "configmap", src.ConfigMap
					}
					data, exists := p.penv.objectKeys(kind, sp.Name)
					if kind == "configmap" && sp.Name == "kube-root-ca.crt" && p.c.Kube != nil {
						data, exists = map[string]string{"ca.crt": p.c.Kube.CAPEM}, true
					}
					if !exists && !isTrue(sp.Optional) {
						return cfgErr("MountVolume.SetUp failed for volume %q : %s %q not found", v.Name, kind, sp.Name)
					}
					sel, err := projectKeys(data, sp.Items)
					if err != nil && !isTrue(sp.Optional) {
						return cfgErr("MountVolume.SetUp failed for volume %q : %v", v.Name, err)
					}
					for k, val := range sel {
						files[k] = val
					}
				case src.DownwardAPI != nil:
					if err := p.downwardFiles(src.DownwardAPI, files); err != nil {
						return err
					}
				case src.ServiceAccountToken != nil:
					files[src.ServiceAccountToken.Path] = p.saToken()
				}
			}
			if err := writeFiles(dir, files, fileMode(v.Projected.DefaultMode, 0o644), fsGroup); err != nil {
				return err
			}
			p.volumes[v.Name] = &volume{dir: dir, readOnly: true}
		case v.DownwardAPI != nil:
			files := map[string]string{}
			if err := p.downwardFiles(v.DownwardAPI, files); err != nil {
				return err
			}
			if err := writeFiles(dir, files, fileMode(v.DownwardAPI.DefaultMode, 0o644), fsGroup); err != nil {
				return err
			}
			p.volumes[v.Name] = &volume{dir: dir, readOnly: true}
		default:
			// emptyDir, and any other kind (PVC, CSI, ...): an empty
			// directory that lives as long as the case.
			if err := os.MkdirAll(dir, 0o777); err != nil {
				return err
			}
			mode := os.FileMode(0o777)
			if fsGroup != nil {
				os.Chown(dir, 0, int(*fsGroup))
				mode |= os.ModeSetgid
			}
			if err := os.Chmod(dir, mode); err != nil {
				return err
			}
			p.volumes[v.Name] = &volume{dir: dir}
		}
	}
	return nil
}

// hostPathVolume maps a hostPath onto the emulated node: paths under /dev
// are the host's real device nodes (the TUN device), everything else is a
// per-case directory standing in for the node's filesystem, so state kept
// there survives container restarts within the case. The hostPath type is
// checked as the kubelet does; on the emulated node, directories and files
// are assumed to exist (created), sockets and devices outside /dev do not.
func (p *pod) hostPathVolume(name string, hp *HostPathSource) (*volume, error) {
	hpath := path.Clean("/" + hp.Path)
	fail := func(format string, a ...any) error {
		return cfgErr("MountVolume.SetUp failed for volume %q : %s", name, fmt.Sprintf(format, a...))
	}
	hostDev := hpath == "/dev" || strings.HasPrefix(hpath, "/dev/")
	dir := hpath
	if !hostDev {
		dir = filepath.Join(p.nodeDir, filepath.FromSlash(hpath))
	}
	fi, statErr := os.Stat(dir)
	if statErr != nil && !hostDev {
		// Create what the node is assumed to have (or the kubelet/runtime creates).
		switch hp.Type {
		case "File", "FileOrCreate":
			if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
				return nil, err
			}
			if err := os.WriteFile(dir, nil, 0o644); err != nil {
				return nil, err
			}
		case "", "Directory", "DirectoryOrCreate":
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return nil, err
			}
		}
		fi, statErr = os.Stat(dir)
	}
	mode := os.FileMode(0)
	if statErr == nil {
		mode = fi.Mode()
	}
	switch hp.Type {
	case "":
		if statErr != nil {
			return nil, fail("hostPath %s does not exist on the emulated node (only the host's /dev is real)", hpath)
		}
	case "Directory", "DirectoryOrCreate":
		if statErr != nil && hp.Type == "DirectoryOrCreate" {
			return nil, fail("hostPath %s cannot be created under the host's /dev", hpath)
		}
		if !mode.IsDir() {
			return nil, fail("hostPath type check failed: %s is not a directory", hpath)
		}
	case "File", "FileOrCreate":
		if statErr != nil && hp.Type == "FileOrCreate" {
			return nil, fail("hostPath %s cannot be created under the host's /dev", hpath)
		}
		if !mode.IsRegular() {
			return nil, fail("hostPath type check failed: %s is not a file", hpath)
		}
	case "Socket":
		if mode&os.ModeSocket == 0 {
			return nil, fail("hostPath type check failed: %s is not a socket file", hpath)
		}
	case "CharDevice":
		if mode&os.ModeCharDevice == 0 {
			return nil, fail("hostPath type check failed: %s is not a character device", hpath)
		}
	case "BlockDevice":
		if mode&os.ModeDevice == 0 || mode&os.ModeCharDevice != 0 {
			return nil, fail("hostPath type check failed: %s is not a block device", hpath)
		}
	default:
		return nil, fail("%s is an invalid volume type", hp.Type)
	}
	return &volume{dir: dir, hostDev: hostDev}, nil
}

func (p *pod) downwardFiles(d *DownwardAPIVolume, files map[string]string) error {
	for _, it := range d.Items {
		var v string
		var err error
		switch {
		case it.FieldRef != nil:
			v, err = p.penv.fieldValue(it.FieldRef.FieldPath)
		case it.ResourceFieldRef != nil:
			c := &Container{}
			if it.ResourceFieldRef.ContainerName != "" {
				if oc, _, ok := p.c.Pod.Spec.find(it.ResourceFieldRef.ContainerName); ok {
					c = oc
				}
			}
			v, err = p.penv.resourceValue(c, it.ResourceFieldRef)
		}
		if err != nil {
			return err
		}
		files[it.Path] = v
	}
	return nil
}

func (p *pod) saToken() string {
	if p.c.Kube != nil {
		return p.c.Kube.Token
	}
	return "tailguard-oracle-no-apiserver"
}

// serviceAccountDir writes the automounted service-account files (token,
// ca.crt, namespace) when the case has a kube-apiserver and the pod does
// not opt out.
func (p *pod) serviceAccountDir() (string, error) {
	if p.c.Kube == nil || (p.c.Pod.Spec.AutomountServiceAccountToken != nil && !*p.c.Pod.Spec.AutomountServiceAccountToken) {
		return "", nil
	}
	ns := p.c.Kube.Namespace
	if ns == "" {
		ns = p.c.Pod.Metadata.Namespace
	}
	dir := filepath.Join(p.dir, "volumes", "kube-api-access")
	err := writeFiles(dir, map[string]string{
		"token":     p.c.Kube.Token,
		"ca.crt":    p.c.Kube.CAPEM,
		"namespace": ns,
	}, 0o644, nil)
	return dir, err
}

// podFiles writes /etc/hosts, /etc/hostname and /etc/resolv.conf as the
// kubelet manages them.
func (p *pod) podFiles() error {
	dir := filepath.Join(p.dir, "podfiles")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var hosts string
	if p.hostNet {
		hosts = fmt.Sprintf("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n%s\t%s\n", p.nodeIP, p.c.NodeName)
	} else {
		hosts = "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n" +
			fmt.Sprintf("%s\t%s\n", p.podIP, p.hostname)
	}
	ns := p.c.Pod.Metadata.Namespace
	resolv := fmt.Sprintf("search %s.svc.cluster.local svc.cluster.local cluster.local\nnameserver %s\noptions ndots:5\n", ns, clusterDNSIP)
	if pol := p.c.Pod.Spec.DNSPolicy; pol == "Default" || (p.hostNet && pol != "ClusterFirstWithHostNet") {
		resolv = "nameserver " + nodeIP + "\n"
	}
	files := map[string]string{"hosts": hosts, "hostname": p.hostname + "\n", "resolv.conf": resolv}
	keys := make([]string, 0, len(files))
	for k := range files {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if err := os.WriteFile(filepath.Join(dir, k), []byte(files[k]), 0o644); err != nil {
			return err
		}
	}
	p.podFilesDir = dir
	return nil
}

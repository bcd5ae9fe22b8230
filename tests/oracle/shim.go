package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// shimSpec is what the pod emulation hands to one container start
// (`tailguard-oracle shim SPEC.json`), like an OCI runtime spec.
type shimSpec struct {
	NetNS, UTSNS, IPCNS string // namespace files to join ("" = inherit the node's)

	Rootfs       string // the image (read-only lower layer)
	RunDir       string // per-start dir for the writable layer
	ReadOnlyRoot bool
	Privileged   bool
	Devices      []string // host device nodes to expose at the same path
	Mounts       []mountSpec

	procSpec
}

// procSpec is the process part, shared by container starts and exec probes.
type procSpec struct {
	Argv       []string
	Env        []string
	Cwd        string
	UID, GID   uint32
	Groups     []uint32
	Caps       []string // bounding set (names without CAP_)
	NoNewPrivs bool
}

type mountSpec struct {
	Source   string
	Target   string // absolute path inside the container
	Kind     string // "bind" or "tmpfs"
	ReadOnly bool
}

// execSpec is what an exec probe / status query hands to `tailguard-oracle exec`.
type execSpec struct {
	PID       int // a process of the container (its pid 1)
	TimeoutMs int64
	procSpec
}

// startError is reported on fd 3 by the shim when the runtime could not
// start the process (the kubelet's StartError / CreateContainerError), as
// opposed to an oracle failure.
type shimReport struct {
	StartError string `json:"startError,omitempty"`
	Fatal      string `json:"fatal,omitempty"`
}

var capNames = []string{
	"CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
	"SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
	"IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
	"SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
	"LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
	"WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
}

func capNumber(name string) (int, bool) {
	for i, n := range capNames {
		if n == name {
			return i, true
		}
	}
	return 0, false
}

func lastCap() int {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			return n
		}
	}
	return len(capNames) - 1
}

// setBounding drops every capability not in keep from this thread's
// bounding set. Run as root, the exec'd program then gets exactly this set as
// permitted+effective; after a switch to a non-root uid it gets none.
func setBounding(keep []string) error {
	want := map[int]bool{}
	for _, n := range keep {
		if c, ok := capNumber(n); ok {
			want[c] = true
		}
	}
	last := lastCap()
	for c := 0; c <= last; c++ {
		if want[c] {
			continue
		}
		if r, _ := unix.PrctlRetInt(unix.PR_CAPBSET_READ, uintptr(c), 0, 0, 0); r != 1 {
			continue
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil {
			return fmt.Errorf("dropping capability %d: %w", c, err)
		}
	}
	return nil
}

func joinNS(p string, kind int) error {
	if p == "" {
		return nil
	}
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Setns(fd, kind); err != nil {
		return fmt.Errorf("setns %s: %w", p, err)
	}
	return nil
}

// resolveIn resolves the container path p against root, following symlinks
// as if root were "/", and returns the host path. Components that do not
// exist are kept as they are (to be created).
func resolveIn(root, p string) (string, error) {
	parts := strings.Split(strings.TrimPrefix(path.Clean("/"+p), "/"), "/")
	cur := "/"
	links := 0
	for i := 0; i < len(parts); i++ {
		if parts[i] == "" {
			continue
		}
		next := path.Join(cur, parts[i])
		fi, err := os.Lstat(filepath.Join(root, next))
		if err != nil {
			rest := append([]string{next}, parts[i+1:]...)
			return filepath.Join(root, path.Join(rest...)), nil
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			cur = next
			continue
		}
		if links++; links > 40 {
			return "", fmt.Errorf("too many symlinks in %s", p)
		}
		target, err := os.Readlink(filepath.Join(root, next))
		if err != nil {
			return "", err
		}
		if !path.IsAbs(target) {
			target = path.Join(cur, target)
		}
		parts = append(strings.Split(strings.TrimPrefix(path.Clean(target), "/"), "/"), parts[i+1:]...)
		cur = "/"
		i = -1
	}
	return filepath.Join(root, cur), nil
}

// mkTarget creates the mount point for a mount of source at target.
func mkTarget(target string, dir bool) error {
	if dir {
		return os.MkdirAll(target, 0o755)
	}
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return err
	}
	if _, err := os.Lstat(target); err == nil {
		return nil
	}
	f, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	return f.Close()
}

func bindMount(src, dst string, ro bool, rec bool) error {
	flags := uintptr(unix.MS_BIND)
	if rec {
		flags |= unix.MS_REC
	}
	if err := unix.Mount(src, dst, "", flags, ""); err != nil {
		return fmt.Errorf("bind %s on %s: %w", src, dst, err)
	}
	if ro {
		if err := unix.Mount("", dst, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("remount %s read-only: %w", dst, err)
		}
	}
	return nil
}

// cmdShim is a container's pid 1 until it execs the container's command. It
// runs in a new mount and PID namespace and joins the pod's network, UTS and
// IPC namespaces.
func cmdShim(args []string) error {
	report := os.NewFile(3, "report")
	fail := func(r shimReport) error {
		if report != nil {
			json.NewEncoder(report).Encode(r)
		}
		os.Exit(127)
		return nil
	}
	if len(args) != 1 {
		return fail(shimReport{Fatal: "want: shim SPEC"})
	}
	var s shimSpec
	b, err := os.ReadFile(args[0])
	if err == nil {
		err = json.Unmarshal(b, &s)
	}
	if err != nil {
		return fail(shimReport{Fatal: err.Error()})
	}
	if err := setupContainer(&s); err != nil {
		var se *startErr
		if errors.As(err, &se) {
			return fail(shimReport{StartError: se.msg})
		}
		return fail(shimReport{Fatal: err.Error()})
	}
	syscall.CloseOnExec(3)
	exe, err := lookupExe(s.Argv[0], s.Env)
	if err != nil {
		return fail(shimReport{StartError: err.Error()})
	}
	if err := dropPrivileges(&s.procSpec); err != nil {
		return fail(shimReport{Fatal: err.Error()})
	}
	err = syscall.Exec(exe, s.Argv, s.Env)
	return fail(shimReport{StartError: fmt.Sprintf("exec: %q: %v", s.Argv[0], err)})
}

type startErr struct{ msg string }

func (e *startErr) Error() string { return e.msg }

func setupContainer(s *shimSpec) error {
	if err := joinNS(s.NetNS, unix.CLONE_NEWNET); err != nil {
		return err
	}
	if err := joinNS(s.UTSNS, unix.CLONE_NEWUTS); err != nil {
		return err
	}
	if err := joinNS(s.IPCNS, unix.CLONE_NEWIPC); err != nil {
		return err
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making / private: %w", err)
	}
	upper, work, root := filepath.Join(s.RunDir, "upper"), filepath.Join(s.RunDir, "work"), filepath.Join(s.RunDir, "root")
	for _, d := range []string{upper, work, root} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", s.Rootfs, upper, work)
	if err := unix.Mount("overlay", root, "overlay", 0, opts); err != nil {
		return fmt.Errorf("overlay mount: %w", err)
	}
	in := func(p string) (string, error) { return resolveIn(root, p) }

	// /proc, as a runtime mounts it; /proc/sys and friends read-only unless privileged.
	procDir, err := in("/proc")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(procDir, 0o555); err != nil {
		return err
	}
	if err := unix.Mount("proc", procDir, "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mount proc: %w", err)
	}
	if !s.Privileged {
		for _, p := range []string{"bus", "fs", "irq", "sys", "sysrq-trigger"} {
			t := filepath.Join(procDir, p)
			if _, err := os.Stat(t); err == nil {
				if err := bindMount(t, t, true, true); err != nil {
					return err
				}
			}
		}
	}

	// /dev: a small tmpfs with the default devices; /dev/net exists but is
	// empty unless the TUN device is exposed.
	devDir, err := in("/dev")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(devDir, 0o755); err != nil {
		return err
	}
	if err := unix.Mount("tmpfs", devDir, "tmpfs", unix.MS_NOSUID|unix.MS_STRICTATIME, "mode=755,size=65536k"); err != nil {
		return fmt.Errorf("mount /dev: %w", err)
	}
	for _, d := range []string{"null", "zero", "full", "random", "urandom", "tty"} {
		t := filepath.Join(devDir, d)
		if err := mkTarget(t, false); err != nil {
			return err
		}
		if err := bindMount("/dev/"+d, t, false, false); err != nil {
			return err
		}
	}
	for name, target := range map[string]string{"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2", "ptmx": "pts/ptmx"} {
		os.Symlink(target, filepath.Join(devDir, name))
	}
	// No /dev/net: runc and crun create only the default devices, so
	// containerboot has to mkdir /dev/net and mknod the TUN device itself
	// (which needs a writable /dev, i.e. root, and CAP_MKNOD).
	if err := os.MkdirAll(filepath.Join(devDir, "pts"), 0o755); err != nil {
		return err
	}
	shm := filepath.Join(devDir, "shm")
	os.MkdirAll(shm, 0o1777)
	if err := unix.Mount("shm", shm, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=1777,size=65536k"); err != nil {
		return fmt.Errorf("mount /dev/shm: %w", err)
	}
	for _, d := range s.Devices {
		t := filepath.Join(devDir, strings.TrimPrefix(d, "/dev/"))
		if err := mkTarget(t, false); err != nil {
			return err
		}
		if err := bindMount(d, t, false, false); err != nil {
			return err
		}
	}

	// /sys, read-only unless privileged; it shows the pod's network devices.
	sysDir, err := in("/sys")
	if err != nil {
		return err
	}
	os.MkdirAll(sysDir, 0o555)
	sysFlags := uintptr(unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC)
	if !s.Privileged {
		sysFlags |= unix.MS_RDONLY
	}
	if err := unix.Mount("sysfs", sysDir, "sysfs", sysFlags, ""); err != nil {
		// Not fatal: some kernels refuse a sysfs for a foreign netns.
		fmt.Fprintf(os.Stderr, "tailguard-oracle shim: warning: mount sysfs: %v\n", err)
	}

	for _, m := range s.Mounts {
		t, err := in(m.Target)
		if err != nil {
			return &startErr{fmt.Sprintf("mount %s: %v", m.Target, err)}
		}
		switch m.Kind {
		case "tmpfs":
			if err := os.MkdirAll(t, 0o755); err != nil {
				return &startErr{fmt.Sprintf("mkdir %s: %v", m.Target, err)}
			}
			if err := unix.Mount("tmpfs", t, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777"); err != nil {
				return err
			}
		default:
			fi, err := os.Stat(m.Source)
			if err != nil {
				return &startErr{fmt.Sprintf("error mounting %q to rootfs at %q: %v", m.Source, m.Target, err)}
			}
			if err := mkTarget(t, fi.IsDir()); err != nil {
				return &startErr{fmt.Sprintf("error creating mount point %q: %v", m.Target, err)}
			}
			if err := bindMount(m.Source, t, m.ReadOnly, true); err != nil {
				return err
			}
		}
	}

	if s.ReadOnlyRoot {
		if err := unix.Mount("", root, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("read-only root: %w", err)
		}
	}
	if err := unix.Chroot(root); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	cwd := s.Cwd
	if cwd == "" {
		cwd = "/"
	}
	os.MkdirAll(cwd, 0o755)
	if err := unix.Chdir(cwd); err != nil {
		return &startErr{fmt.Sprintf("chdir to cwd (%q) set in config.json failed: %v", cwd, err)}
	}
	return nil
}

// lookupExe resolves argv[0] the way runc does: a name without a slash is
// searched in the container's PATH.
func lookupExe(name string, env []string) (string, error) {
	if strings.Contains(name, "/") {
		if _, err := os.Stat(name); err != nil {
			return "", fmt.Errorf("exec: %q: stat %s: %v", name, name, errors.Unwrap(err))
		}
		return name, nil
	}
	pathEnv := ""
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			pathEnv = v
		}
	}
	for _, dir := range filepath.SplitList(pathEnv) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, name)
		fi, err := os.Stat(p)
		if err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("exec: %q: executable file not found in $PATH", name)
}

// dropPrivileges applies the bounding set, no_new_privs, groups, gid and uid
// to this thread (the one that will exec).
func dropPrivileges(p *procSpec) error {
	if err := setBounding(p.Caps); err != nil {
		return err
	}
	if p.NoNewPrivs {
		if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
			return fmt.Errorf("no_new_privs: %w", err)
		}
	}
	groups := make([]int, len(p.Groups))
	for i, g := range p.Groups {
		groups[i] = int(g)
	}
	if err := syscall.Setgroups(groups); err != nil {
		return fmt.Errorf("setgroups: %w", err)
	}
	if err := syscall.Setresgid(int(p.GID), int(p.GID), int(p.GID)); err != nil {
		return fmt.Errorf("setgid: %w", err)
	}
	if err := syscall.Setresuid(int(p.UID), int(p.UID), int(p.UID)); err != nil {
		return fmt.Errorf("setuid: %w", err)
	}
	return nil
}

// cmdExec runs a command inside a running container, as `kubectl exec` / an
// exec probe would: same namespaces, root, user, capabilities and env.
func cmdExec(args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("want: exec SPEC")
	}
	var s execSpec
	b, err := os.ReadFile(args[0])
	if err == nil {
		err = json.Unmarshal(b, &s)
	}
	if err != nil {
		return err
	}
	for _, ns := range []struct {
		name string
		kind int
	}{{"ipc", unix.CLONE_NEWIPC}, {"uts", unix.CLONE_NEWUTS}, {"net", unix.CLONE_NEWNET}, {"pid", unix.CLONE_NEWPID}} {
		if err := joinNS(fmt.Sprintf("/proc/%d/ns/%s", s.PID, ns.name), ns.kind); err != nil {
			return err
		}
	}
	// The container's root, with all its mounts, seen through its pid 1.
	if err := unix.Chroot(fmt.Sprintf("/proc/%d/root", s.PID)); err != nil {
		return fmt.Errorf("chroot into container: %w", err)
	}
	cwd := s.Cwd
	if cwd == "" {
		cwd = "/"
	}
	if err := unix.Chdir(cwd); err != nil {
		unix.Chdir("/")
	}
	exe, err := lookupExe(s.Argv[0], s.Env)
	if err != nil {
		fmt.Fprintf(os.Stderr, "OCI runtime exec failed: exec failed: unable to start container process: %v\n", err)
		os.Exit(126)
	}
	if err := setBounding(s.Caps); err != nil {
		return err
	}
	if s.NoNewPrivs {
		if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
			return err
		}
	}
	// Fork from this (locked) thread: the child inherits its namespaces,
	// bounding set and no_new_privs, then switches user.
	// (No Pdeathsig: the child is in another PID namespace, where Go's
	// parent-pid check would kill it at once; the timeout is enforced here.)
	cmd := &exec.Cmd{Path: exe, Args: s.Argv, Env: s.Env, Stdout: os.Stdout, Stderr: os.Stdout}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: s.UID, Gid: s.GID, Groups: s.Groups},
	}
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "OCI runtime exec failed: exec failed: unable to start container process: %v\n", err)
		os.Exit(126)
	}
	if s.TimeoutMs > 0 {
		t := time.AfterFunc(time.Duration(s.TimeoutMs)*time.Millisecond, func() { cmd.Process.Kill() })
		defer t.Stop()
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			os.Exit(128 + int(ws.Signal()))
		}
		os.Exit(ee.ExitCode())
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "OCI runtime exec failed: exec failed: unable to start container process: %v\n", err)
		os.Exit(126)
	}
	return nil
}

package main

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
)

// Default capability sets of the container runtimes (their default OCI specs).
var runtimeCaps = map[string][]string{
	"containerd": {"CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
		"SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE"},
	"cri-o": {"CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "SETGID", "SETUID", "SETPCAP",
		"NET_BIND_SERVICE", "KILL"},
}

// ctrPlan is everything needed to start one container, resolved once.
type ctrPlan struct {
	c       *Container
	name    string
	init    bool // an init container
	sidecar bool // an init container with restartPolicy Always
	env     *envList
	proc    procSpec
	spec    shimSpec

	probes      map[string]*Probe // "startupProbe", "readinessProbe", "livenessProbe"
	boot        bool              // runs containerboot (prints "Startup complete")
	socket      string            // tailscaled LocalAPI socket inside the container
	exitNode    string            // --exit-node value asked for in TS_EXTRA_ARGS
	extraArgs   string
	longRunning bool
}

// tailscale reports whether the container runs Tailscale (containerboot, or
// a command that mentions tailscale): the ones whose status the oracle asks.
func (pl *ctrPlan) tailscale() bool {
	return pl.boot || pl.exitNode != "" || strings.Contains(strings.Join(pl.proc.Argv, " "), "tailscale")
}

func normCap(c string) string {
	c = strings.ToUpper(strings.TrimSpace(c))
	return strings.TrimPrefix(c, "CAP_")
}

// capabilitySet computes the bounding set the runtime would give the
// container: its default set, "ALL" in add/drop first, then single adds and
// drops (containerd's order of evaluation); privileged gets every capability.
func capabilitySet(runtime string, sc *SecurityContext) []string {
	all := capNames[:lastCap()+1]
	if sc != nil && isTrue(sc.Privileged) {
		return slices.Clone(all)
	}
	set := map[string]bool{}
	for _, c := range runtimeCaps[runtime] {
		set[c] = true
	}
	if sc != nil && sc.Capabilities != nil {
		add, drop := sc.Capabilities.Add, sc.Capabilities.Drop
		if slices.ContainsFunc(add, func(s string) bool { return normCap(s) == "ALL" }) {
			for _, c := range all {
				set[c] = true
			}
		}
		if slices.ContainsFunc(drop, func(s string) bool { return normCap(s) == "ALL" }) {
			set = map[string]bool{}
		}
		for _, c := range add {
			if n := normCap(c); n != "ALL" {
				set[n] = true
			}
		}
		for _, c := range drop {
			delete(set, normCap(c))
		}
	}
	var out []string
	for _, c := range all {
		if set[c] {
			out = append(out, c)
		}
	}
	return out
}

func (p *pod) plan(c *Container, isInit bool) (*ctrPlan, error) {
	pl := &ctrPlan{c: c, name: c.Name, init: isInit, sidecar: isInit && c.RestartPolicy == "Always"}
	pl.longRunning = !isInit || pl.sidecar
	env, err := p.penv.containerEnv(c)
	if err != nil {
		return nil, err
	}

	// Security context: the container's settings win over the pod's.
	psc := p.c.Pod.Spec.SecurityContext
	if psc == nil {
		psc = &PodSecurityContext{}
	}
	sc := c.SecurityContext
	if sc == nil {
		sc = &SecurityContext{}
	}
	uid, gid := int64(0), int64(0)
	uidSet := false
	if sc.RunAsUser != nil {
		uid, uidSet = *sc.RunAsUser, true
	} else if psc.RunAsUser != nil {
		uid, uidSet = *psc.RunAsUser, true
	}
	switch {
	case sc.RunAsGroup != nil:
		gid = *sc.RunAsGroup
	case psc.RunAsGroup != nil:
		gid = *psc.RunAsGroup
	case uid == 65534:
		gid = 65534 // nobody's primary group in the image's /etc/passwd
	}
	nonRoot := sc.RunAsNonRoot
	if nonRoot == nil {
		nonRoot = psc.RunAsNonRoot
	}
	if isTrue(nonRoot) && uid == 0 {
		if uidSet {
			return nil, cfgErr("container's runAsUser breaks non-root policy (pod: %q, container: %s)", p.c.Pod.Metadata.Name+"_"+p.c.Pod.Metadata.Namespace+"("+p.c.Pod.Metadata.UID+")", c.Name)
		}
		return nil, cfgErr("container has runAsNonRoot and image will run as root (pod: %q, container: %s)", p.c.Pod.Metadata.Name+"_"+p.c.Pod.Metadata.Namespace+"("+p.c.Pod.Metadata.UID+")", c.Name)
	}
	groups := []uint32{}
	for _, g := range psc.SupplementalGroups {
		groups = append(groups, uint32(g))
	}
	if psc.FSGroup != nil {
		groups = append(groups, uint32(*psc.FSGroup))
	}
	privileged := isTrue(sc.Privileged)

	// Command line: command replaces the image entrypoint; args follow.
	var argv []string
	if len(c.Command) > 0 {
		argv = append(expandArgs(c.Command, env), expandArgs(c.Args, env)...)
	} else {
		argv = append([]string{"/usr/local/bin/containerboot"}, expandArgs(c.Args, env)...)
	}

	// Peers: the manifest's tailnet IPs become the test nodes' IPs.
	for _, k := range env.names {
		env.vals[k] = p.rewritePeers(env.vals[k])
	}
	for i := range argv {
		argv[i] = p.rewritePeers(argv[i])
	}
	pl.boot = path.Base(argv[0]) == "containerboot" || strings.Contains(strings.Join(argv, " "), "containerboot")
	if _, cfgDir := env.get("TS_EXPERIMENTAL_VERSIONED_CONFIG_DIR"); !cfgDir {
		if v, ok := env.get("TS_EXTRA_ARGS"); ok || pl.boot {
			cp := p.cp
			if pl.boot && !p.hasAuthKey(env) {
				// No auth key: a real tailnet wants an interactive login.
				if cp, err = p.loginControl(); err != nil {
					return nil, err
				}
			}
			env.set("TS_EXTRA_ARGS", withLoginServer(v, cp.url))
		}
	}
	pl.extraArgs, _ = env.get("TS_EXTRA_ARGS")
	pl.exitNode = exitNodeArg(pl.extraArgs)
	pl.env = env

	// The process environment: the image's, the runtime's HOSTNAME, then the
	// kubelet's variables; plus the harness's log target.
	penv := newEnvList()
	penv.set("PATH", imagePath)
	penv.set("HOSTNAME", p.hostname)
	for _, k := range env.names {
		penv.set(k, env.vals[k])
	}
	penv.set("TS_LOG_TARGET", p.cp.logURL)
	if sock, ok := penv.get("TS_SOCKET"); ok && sock != "" {
		pl.socket = sock
	} else if pl.boot {
		pl.socket = "/tmp/tailscaled.sock"
	} else {
		pl.socket = "/var/run/tailscale/tailscaled.sock"
	}

	pl.proc = procSpec{
		Argv:       argv,
		Env:        penv.environ(),
		Cwd:        c.WorkingDir,
		UID:        uint32(uid),
		GID:        uint32(gid),
		Groups:     groups,
		Caps:       capabilitySet(p.c.Runtime, sc),
		NoNewPrivs: sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation,
	}

	// Mounts, in the kubelet's order: volumes, /etc/hosts & co, service account, termination log.
	var mounts []mountSpec
	var devices []string
	saCovered := false
	for _, vm := range c.VolumeMounts {
		vol, ok := p.volumes[vm.Name]
		if !ok {
			return nil, cfgErr("cannot find volume %q to mount into container %q", vm.Name, c.Name)
		}
		src := vol.dir
		sub := vm.SubPath
		if vm.SubPathExpr != "" {
			sub = expandRefs(vm.SubPathExpr, env.get)
		}
		if sub != "" {
			clean := path.Clean("/" + sub)
			src = filepath.Join(src, filepath.FromSlash(clean))
			if _, err := os.Stat(src); err != nil && !vol.hostDev {
				if err := os.MkdirAll(src, 0o777); err != nil {
					return nil, err
				}
			}
		}
		target := path.Clean("/" + vm.MountPath)
		if target == saMountPath || strings.HasPrefix(saMountPath, target+"/") {
			saCovered = true
		}
		mounts = append(mounts, mountSpec{Source: src, Target: target, Kind: "bind", ReadOnly: vm.ReadOnly || vol.readOnly})
	}
	mounts = append(mounts, p.appToolMounts(c.Name)...)
	for _, f := range []string{"hosts", "hostname", "resolv.conf"} {
		mounts = append(mounts, mountSpec{Source: filepath.Join(p.podFilesDir, f), Target: "/etc/" + f, Kind: "bind"})
	}
	if p.caBundle != "" {
		mounts = append(mounts, mountSpec{Source: p.caBundle, Target: "/etc/ssl/certs/ca-certificates.crt", Kind: "bind", ReadOnly: true})
	}
	if p.saDir != "" && !saCovered {
		mounts = append(mounts, mountSpec{Source: p.saDir, Target: saMountPath, Kind: "bind", ReadOnly: true})
	}
	termLog := filepath.Join(p.dir, "termination-log", c.Name)
	if err := os.MkdirAll(filepath.Dir(termLog), 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(termLog, nil, 0o666); err != nil {
		return nil, err
	}
	mounts = append(mounts, mountSpec{Source: termLog, Target: "/dev/termination-log", Kind: "bind"})
	if privileged {
		if _, err := os.Stat("/dev/net/tun"); err == nil {
			devices = append(devices, "/dev/net/tun")
		}
	}

	pl.spec = shimSpec{
		Rootfs:       p.rootfs,
		ReadOnlyRoot: sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem,
		Privileged:   privileged,
		Devices:      devices,
		Mounts:       mounts,
		procSpec:     pl.proc,
	}
	if ns := p.netSandbox(); ns != nil {
		pl.spec.NetNS, pl.spec.UTSNS, pl.spec.IPCNS = ns.nsPath("net"), ns.nsPath("uts"), ns.nsPath("ipc")
	}

	// Probes: exec commands get the kubelet's expansion over the container's
	// static env values, and the peers' IP rewrite.
	static := newEnvList()
	for _, ev := range c.Env {
		if ev.ValueFrom == nil {
			static.set(ev.Name, ev.Value)
		}
	}
	pl.probes = map[string]*Probe{}
	for kind, pr := range map[string]*Probe{"startupProbe": c.StartupProbe, "readinessProbe": c.ReadinessProbe, "livenessProbe": c.LivenessProbe} {
		if pr == nil {
			continue
		}
		cp := *pr
		if pr.Exec != nil {
			cmd := expandArgs(pr.Exec.Command, static)
			for i := range cmd {
				cmd[i] = p.rewritePeers(cmd[i])
			}
			cp.Exec = &ExecAction{Command: cmd}
		}
		pl.probes[kind] = &cp
	}
	if isInit && !pl.sidecar {
		// Plain init containers have no probes (the API rejects them).
		pl.probes = map[string]*Probe{}
	}
	p.logf("plan %s%s: argv=%q uid=%d gid=%d caps=%v nnp=%v privileged=%v TS_EXTRA_ARGS=%q", p.filePrefix(), c.Name, argv, uid, gid, pl.proc.Caps, pl.proc.NoNewPrivs, privileged, pl.extraArgs)
	return pl, nil
}

// rewritePeers maps every peer's manifest IP in s to its real test IP, all at
// once (so a manifest IP equal to another peer's test IP is not rewritten twice).
func (p *pod) rewritePeers(s string) string {
	for i, pn := range p.peers {
		s = rewriteIP(s, pn.IP, fmt.Sprintf("\x00peer%d\x00", i))
	}
	for i, pn := range p.peers {
		s = strings.ReplaceAll(s, fmt.Sprintf("\x00peer%d\x00", i), pn.realIP)
	}
	return s
}

// hasAuthKey reports whether containerboot may have a way to log in without
// a human: an auth key (env, file:, TS_EXTRA_ARGS), OAuth/WIF settings, a
// tailscaled config file, or (with an apiserver) an authkey in its state Secret.
func (p *pod) hasAuthKey(env *envList) bool {
	for _, k := range []string{"TS_AUTHKEY", "TS_AUTH_KEY", "TS_CLIENT_ID", "TS_CLIENT_SECRET", "TS_ID_TOKEN", "TS_EXPERIMENTAL_VERSIONED_CONFIG_DIR"} {
		if v, ok := env.get(k); ok && v != "" {
			return true
		}
	}
	extra, _ := env.get("TS_EXTRA_ARGS")
	for _, f := range strings.Fields(extra) {
		bare := strings.TrimLeft(f, "-")
		for _, flag := range []string{"authkey", "auth-key", "client-secret", "client-id", "id-token"} {
			if bare == flag || strings.HasPrefix(bare, flag+"=") {
				return true
			}
		}
	}
	if p.c.Kube != nil {
		if v, ok := env.get("TS_KUBE_SECRET"); !ok || v != "" {
			return true // the state Secret may hold an authkey
		}
	}
	return false
}

// loginServer is the control server that requires an interactive login,
// started on first use and shared by the case's replicas.
type loginServer struct {
	mu sync.Mutex
	cp *controlPlane
}

// loginControl returns the interactive-login control server, started on first use.
func (p *pod) loginControl() (*controlPlane, error) {
	p.login.mu.Lock()
	defer p.login.mu.Unlock()
	if p.login.cp == nil {
		cp, err := startControl(nodeIP, "0", true, "", p.quiet)
		if err != nil {
			return nil, fmt.Errorf("interactive control server: %w", err)
		}
		p.login.cp = cp
	}
	return p.login.cp, nil
}

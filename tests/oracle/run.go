package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"tailscale.com/types/logger"
)

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
	max int
}

func (t *tailBuffer) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, b...)
	if len(t.buf) > t.max {
		t.buf = t.buf[len(t.buf)-t.max:]
	}
	return len(b), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

func defaultRootfs() string {
	if v := os.Getenv("TAILGUARD_ORACLE_ROOTFS"); v != "" {
		return v
	}
	if exe, err := os.Executable(); err == nil {
		return filepath.Join(filepath.Dir(exe), "rootfs")
	}
	return ""
}

// cmdRun is `tailguard-oracle run`: it reads a case, runs it in fresh
// namespaces and prints the outcome. Exit code 0 whenever the oracle worked.
func cmdRun(args []string) int {
	t0 := time.Now()
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	rootfs := fs.String("rootfs", defaultRootfs(), "image-like root filesystem (env TAILGUARD_ORACLE_ROOTFS)")
	verbose := fs.Bool("v", os.Getenv("TAILGUARD_ORACLE_VERBOSE") != "", "log the case to stderr (env TAILGUARD_ORACLE_VERBOSE)")
	keep := fs.Bool("keep", os.Getenv("TAILGUARD_ORACLE_KEEP") != "", "keep the case directory (env TAILGUARD_ORACLE_KEEP)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(os.Stderr, "tailguard-oracle: "+format+"\n", a...)
		return 1
	}
	raw, err := io.ReadAll(os.Stdin)
	if err != nil {
		return fail("reading case: %v", err)
	}
	var c Case
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&c); err != nil {
		// A pod the API server could not decode (e.g. a YAML boolean where
		// a string belongs) never reaches a kubelet: report it as such.
		var probe struct {
			Pod        json.RawMessage `json:"pod"`
			Containers []string        `json:"containers"`
		}
		var ute *json.UnmarshalTypeError
		if errors.As(err, &ute) && strings.HasPrefix(ute.Field, "pod.") && json.Unmarshal(raw, &probe) == nil && len(probe.Containers) > 0 {
			out := Outcome{Outcome: OutConfigError, Container: probe.Containers[0], LastLines: []string{}, Containers: []CtrOutcome{},
				Detail:  fmt.Sprintf("the API server would reject this pod: cannot decode %s: %v", strings.TrimPrefix(ute.Field, "pod."), err),
				Seconds: roundSec(time.Since(t0))}
			json.NewEncoder(os.Stdout).Encode(&out)
			return 0
		}
		return fail("parsing case: %v", err)
	}
	if err := c.validate(); err != nil {
		return fail("invalid case: %v", err)
	}
	c.defaults()
	if os.Geteuid() != 0 {
		return fail("must run as root (it creates namespaces, mounts and veth pairs)")
	}
	if *rootfs == "" {
		return fail("no rootfs: pass --rootfs or set TAILGUARD_ORACLE_ROOTFS (scripts/build-oracle.sh prints it)")
	}
	abs, err := filepath.Abs(*rootfs)
	if err != nil {
		return fail("rootfs: %v", err)
	}
	for _, b := range []string{"containerboot", "tailscaled", "tailscale"} {
		if _, err := os.Stat(filepath.Join(abs, "usr/local/bin", b)); err != nil {
			return fail("rootfs %s is incomplete: %v (run scripts/build-oracle.sh)", abs, err)
		}
	}
	// A broken stdout must not kill us before the clean-up (Notify, unlike
	// Ignore, is not inherited by the processes we start).
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
	removeStaleCaseDirs()
	casedir, err := os.MkdirTemp("", "tailguard-oracle-")
	if err != nil {
		return fail("%v", err)
	}
	os.WriteFile(filepath.Join(casedir, "pid"), []byte(strconv.Itoa(os.Getpid())), 0o600)
	if *keep {
		fmt.Fprintf(os.Stderr, "tailguard-oracle: case directory %s\n", casedir)
	} else {
		defer os.RemoveAll(casedir)
	}
	cb, _ := json.Marshal(&c)
	if err := os.WriteFile(filepath.Join(casedir, "case.json"), cb, 0o600); err != nil {
		return fail("%v", err)
	}

	// The apiserver relay: a unix socket the namespaces can reach, relayed
	// here (in the host network namespace) to the loopback apiserver.
	if c.Kube != nil {
		u, err := url.Parse(c.Kube.Server)
		if err != nil || u.Host == "" {
			return fail("kube.server %q: not a URL", c.Kube.Server)
		}
		host, port := u.Hostname(), u.Port()
		if port == "" {
			port = "443"
		}
		if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return fail("kube.server %q: only an apiserver on the host's loopback is allowed", c.Kube.Server)
		}
		ln, err := net.Listen("unix", filepath.Join(casedir, "kube.sock"))
		if err != nil {
			return fail("kube relay: %v", err)
		}
		defer ln.Close()
		target := net.JoinHostPort(host, port)
		go relayAll(ln, func() (net.Conn, error) { return net.DialTimeout("tcp", target, 5*time.Second) })
	}

	resR, resW, err := os.Pipe()
	if err != nil {
		return fail("%v", err)
	}
	stderrTail := &tailBuffer{max: 64 << 10}
	cmd := exec.Command("/proc/self/exe", "inner", casedir, abs)
	cmd.ExtraFiles = []*os.File{resW}
	cmd.Stdout = stderrTail
	cmd.Stderr = stderrTail
	if *verbose {
		cmd.Stdout = io.MultiWriter(os.Stderr, stderrTail)
		cmd.Stderr = cmd.Stdout
		cmd.Env = append(os.Environ(), "TAILGUARD_ORACLE_VERBOSE=1")
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWNET | syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC,
		Pdeathsig:  syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		resW.Close()
		return fail("starting the case namespaces: %v", err)
	}
	resW.Close()
	var result []byte
	readDone := make(chan struct{})
	go func() {
		result, _ = io.ReadAll(resR)
		close(readDone)
	}()
	replicas := c.Replicas
	hard := time.Duration(c.TimeoutSeconds*float64((c.Restarts+1)*replicas)*float64(time.Second)) + 45*time.Second + time.Duration(replicas-1)*2*replicaWindow
	waitErr := make(chan error, 1)
	go func() { waitErr <- cmd.Wait() }()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	var werr error
	select {
	case werr = <-waitErr:
	case sig := <-sigs:
		// Everything of the case dies with the inner process (its PID namespace).
		cmd.Process.Kill()
		<-waitErr
		return fail("interrupted by %v", sig)
	case <-time.After(hard):
		cmd.Process.Kill()
		<-waitErr
		return fail("case did not finish within %s (oracle bug); inner log tail:\n%s", hard, stderrTail)
	}
	<-readDone
	var out Outcome
	if err := json.Unmarshal(result, &out); err != nil || out.Outcome == "" {
		return fail("inner process failed (%v) without an outcome; log tail:\n%s", werr, stderrTail)
	}
	out.Seconds = roundSec(time.Since(t0))
	if out.Traffic == nil {
		out.Traffic = []TrafficResult{}
	}
	enc := json.NewEncoder(os.Stdout)
	if err := enc.Encode(&out); err != nil {
		return fail("writing outcome: %v", err)
	}
	return 0
}

// cmdInner runs as pid 1 of the case's namespaces: it is the node (network
// namespace with the control server and peers) and the kubelet.
func cmdInner(args []string) (err error) {
	t0 := time.Now()
	if len(args) != 2 {
		return fmt.Errorf("want: inner CASEDIR ROOTFS")
	}
	casedir, rootfs := args[0], args[1]
	result := os.NewFile(3, "result")
	verbose := os.Getenv("TAILGUARD_ORACLE_VERBOSE") != ""
	logf := func(format string, a ...any) {
		fmt.Fprintf(os.Stderr, "[%6.3fs] %s\n", time.Since(t0).Seconds(), fmt.Sprintf(format, a...))
	}
	quiet := logger.Discard
	if verbose {
		quiet = logf
	}
	defer func() {
		if r := recover(); r != nil {
			if f, ok := r.(oracleFailure); ok {
				err = f.err
				return
			}
			panic(r)
		}
	}()

	var c Case
	b, err := os.ReadFile(filepath.Join(casedir, "case.json"))
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return err
	}

	// Private mounts, a /proc for this PID namespace, a tmpfs for the
	// containers' writable layers.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make / private: %w", err)
	}
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mount /proc: %w", err)
	}
	rt := filepath.Join(casedir, "rt")
	for _, d := range []string{rt, filepath.Join(casedir, "logs")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if err := unix.Mount("tmpfs", rt, "tmpfs", 0, "mode=755"); err != nil {
		return fmt.Errorf("mount tmpfs: %w", err)
	}
	if err := unix.Sethostname([]byte(c.NodeName)); err != nil {
		return err
	}
	noDAD()
	if _, err := linkUp("lo"); err != nil {
		return err
	}

	base := &pod{c: &c, casedir: casedir, rootfs: rootfs, self: "/proc/self/exe", rt: rt, logf: logf, quiet: quiet, t0: t0, login: &loginServer{}}
	kubeSock := "-"
	if c.Kube != nil {
		kubeSock = filepath.Join(casedir, "kube.sock")
	}
	// (Keep the holders referenced: a collected stdin pipe would end them.)
	if base.router, err = startSandbox(base.self, "router", "upstream", "-", "", "", "uplink0", uplinkNode+netBits); err != nil {
		return err
	}
	if err := nodeDefaultRoute(); err != nil {
		return fmt.Errorf("node default route: %w", err)
	}
	sysctls, sysctlErr := podSysctls(&c.Pod.Spec)
	if c.Pod.Spec.HostNetwork {
		sysctls = "" // namespaced sysctls of a hostNetwork pod are rejected above
	}
	// The pods' sandboxes (the first one's veth carries the node address the
	// control server listens on), and the nodes of further hostNetwork replicas.
	pods := make([]*pod, c.Replicas)
	for i := range pods {
		if pods[i], err = base.newReplica(i, kubeSock, sysctls); err != nil {
			return err
		}
	}
	kubeHost, kubeP := "10.96.0.1", "443"
	if c.Kube != nil {
		kubeHost, kubeP = "127.0.0.1", kubePort
		if err := serveUnixRelay("127.0.0.1:"+kubePort, kubeSock); err != nil {
			return err
		}
	}
	if err := serveClusterDNS(kubeHost); err != nil {
		return fmt.Errorf("cluster DNS: %w", err)
	}
	logf("namespaces ready")
	// Port 80, as a real control server's plain-HTTP port: tailscaled's
	// fallback dials assume the standard ports. The namespace is private.
	cp, err := startControl(nodeIP, "80", false, c.AuthKey, quiet)
	if err != nil {
		return fmt.Errorf("control server: %w", err)
	}
	logf("control server %s", cp.url)
	ca, err := newCaseCA()
	if err != nil {
		return err
	}
	if err := ca.serveTLS(cp.srv); err != nil {
		return fmt.Errorf("control server TLS: %w", err)
	}
	caBundle, err := ca.writeBundle(rootfs, casedir)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	peers, err := startPeers(ctx, base.self, cp, filepath.Join(rootfs, "usr/local/bin"), filepath.Join(casedir, "peers"), c.Peers, logf)
	if err != nil {
		return err
	}
	var traffic *trafficServers
	if c.Traffic != nil {
		if traffic, err = startTrafficServers(base.router, ca); err != nil {
			return err
		}
		for _, pn := range peers {
			if err := traffic.servePeerPage(pn); err != nil {
				return err
			}
		}
	}
	for _, p := range pods {
		p.cp, p.caBundle, p.peers = cp, caBundle, peers
		p.traffic, p.appTools = traffic, defaultAppTools(rootfs)
		p.penv = &podEnv{c: p.c, podIP: p.podIP, hostIP: p.nodeIP, kubeHost: kubeHost, kubePort: kubeP}
	}

	var o *Outcome
	switch {
	case sysctlErr != nil:
		o = &Outcome{Outcome: OutConfigError, Container: c.Containers[0], Detail: sysctlErr.Error(), LastLines: []string{}, Containers: []CtrOutcome{}}
	case len(pods) == 1:
		p := pods[0]
		if o, err = p.prepare(); err != nil {
			return err
		}
		if o == nil {
			o = p.lifecycle()
		}
	default:
		o = runReplicas(pods)
	}
	logf("outcome %s %s %s", o.Outcome, o.Container, o.Detail)
	return json.NewEncoder(result).Encode(o)
}

// removeStaleCaseDirs removes case directories left behind by oracle runs
// that were killed (SIGKILL leaves no chance to clean up): their pid is gone
// and they are more than two minutes old.
func removeStaleCaseDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "tailguard-oracle-*"))
	for _, d := range dirs {
		suffix := strings.TrimPrefix(filepath.Base(d), "tailguard-oracle-")
		if strings.Trim(suffix, "0123456789") != "" {
			continue // not a name os.MkdirTemp gave us
		}
		fi, err := os.Stat(d)
		if err != nil || !fi.IsDir() || time.Since(fi.ModTime()) < 2*time.Minute {
			continue
		}
		if _, err := os.Stat(filepath.Join(d, "case.json")); err != nil {
			continue // not a case directory
		}
		if b, err := os.ReadFile(filepath.Join(d, "pid")); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && syscall.Kill(pid, 0) == nil {
				continue // still running
			}
		}
		os.RemoveAll(d)
	}
}

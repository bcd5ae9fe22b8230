package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"

	"github.com/tailscale/netlink"
	"golang.org/x/sys/unix"
)

// Addresses of the emulated node and pod. 198.18.0.0/15 is reserved for
// benchmarking and never routed; everything stays inside the case's private
// network namespaces anyway.
const (
	nodeIP     = "198.18.0.1"
	podIP      = "198.18.0.2"
	netBits    = "/24"
	uplinkNode = "198.18.1.1"   // the node's side of its "uplink"
	uplinkGW   = "198.18.1.254" // the upstream router: answers everything with ICMP unreachable
	kubePort   = "443"          // the in-namespace port of the apiserver forwarder
)

// podIPFor is the pod IP of replica i (198.18.0.2, .3, .4).
func podIPFor(i int) string { return fmt.Sprintf("198.18.0.%d", 2+i) }

// nodeIPFor is the node IP of replica i of a hostNetwork workload, each on a
// node of its own: replica 0 is on the case's node (198.18.0.1), the others on
// emulated nodes 198.18.0.11, .12.
func nodeIPFor(i int) string {
	if i == 0 {
		return nodeIP
	}
	return fmt.Sprintf("198.18.0.%d", 10+i)
}

// noDAD makes IPv6 link-local addresses of new interfaces in the current
// network namespace valid at once: otherwise duplicate address detection
// finishes a second or two after the containers started, and tailscaled
// treats that as a link change (it drops its control connection), which a
// real pod, whose network is set up long before, does not see.
func noDAD() {
	for _, f := range []string{"all", "default"} {
		os.WriteFile("/proc/sys/net/ipv6/conf/"+f+"/accept_dad", []byte("0"), 0o644)
	}
}

func linkUp(name string) (netlink.Link, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("link %s: %w", name, err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return nil, fmt.Errorf("link %s up: %w", name, err)
	}
	return l, nil
}

func addAddr(l netlink.Link, cidr string) error {
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(l, a); err != nil {
		return fmt.Errorf("addr %s on %s: %w", cidr, l.Attrs().Name, err)
	}
	return nil
}

// sandbox is a process holding network (and UTS, IPC) namespaces: the
// pod's "pause" process, or the node's upstream router.
type sandbox struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
	pid   int
}

func (s *sandbox) nsPath(kind string) string { return fmt.Sprintf("/proc/%d/ns/%s", s.pid, kind) }

// startSandbox starts a namespace holder (role "pod" or "router") and wires
// it to the node namespace (this process's) with a veth pair: nodeName here
// with nodeCIDR, eth0 in the new namespace (a "pod" gets ip/24 there). With
// an empty nodeCIDR, the node side gets no address but a host route to ip
// and proxy ARP: the way a further pod (or an emulated node of its own) is
// attached next to the first one, whose veth carries the node's /24.
func startSandbox(self, role, hostname, kubeSock, sysctls, ip, nodeName, nodeCIDR string) (*sandbox, error) {
	if sysctls == "" {
		sysctls = "-"
	}
	if ip == "" {
		ip = "-"
	}
	cmd := exec.Command(self, "sandbox", role, hostname, kubeSock, sysctls, ip)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWNET | syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC,
		Pdeathsig:  syscall.SIGKILL,
	}
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	outp, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s sandbox: %w", role, err)
	}
	s := &sandbox{cmd: cmd, stdin: in, out: bufio.NewReader(outp), pid: cmd.Process.Pid}
	if err := s.expect("lo"); err != nil {
		return nil, err
	}
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: nodeName},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsPid(s.pid),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("creating veth pair: %w", err)
	}
	l, err := linkUp(nodeName)
	if err != nil {
		return nil, err
	}
	if nodeCIDR != "" {
		if err := addAddr(l, nodeCIDR); err != nil {
			return nil, err
		}
	} else {
		if err := netlink.RouteAdd(&netlink.Route{Dst: &net.IPNet{IP: net.ParseIP(ip).To4(), Mask: net.CIDRMask(32, 32)}, LinkIndex: l.Attrs().Index}); err != nil {
			return nil, fmt.Errorf("route to %s: %w", ip, err)
		}
		if err := proxyARP(nodeName); err != nil {
			return nil, err
		}
	}
	if _, err := io.WriteString(in, "eth0\n"); err != nil {
		return nil, err
	}
	if err := s.expect("ready"); err != nil {
		return nil, err
	}
	return s, nil
}

// nodeDefaultRoute makes the node namespace route like a node: forwarding on,
// default route through the upstream router (which rejects everything, so
// nothing can leave and failures are immediate).
func nodeDefaultRoute() error {
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
		return err
	}
	return netlink.RouteAdd(&netlink.Route{Dst: defaultDst(), Gw: net.ParseIP(uplinkGW)})
}

// proxyARP makes the node answer ARP on link for addresses it routes
// elsewhere (the other pods of the /24, which sit behind veths of their
// own), at once (proxy answers are otherwise delayed by up to 0.8 s).
func proxyARP(link string) error {
	for f, v := range map[string]string{"conf/" + link + "/proxy_arp": "1", "neigh/" + link + "/proxy_delay": "0"} {
		if err := os.WriteFile("/proc/sys/net/ipv4/"+f, []byte(v), 0o644); err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
	}
	return nil
}

func defaultDst() *net.IPNet { return &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)} }

func (s *sandbox) expect(word string) error {
	line, err := s.out.ReadString('\n')
	if err != nil {
		return fmt.Errorf("sandbox: waiting for %q: %v", word, err)
	}
	if got := strings.TrimSpace(line); got != word {
		return fmt.Errorf("sandbox: got %q, want %q", got, word)
	}
	return nil
}

// cmdNetExec is `netexec NSPATH PROG ARGS...`: it joins the network
// namespace at NSPATH and executes PROG (a peer's tailscaled).
func cmdNetExec(args []string) error {
	if len(args) < 2 {
		return fmt.Errorf("want: netexec NSPATH PROG [ARGS...]")
	}
	f, err := os.Open(args[0])
	if err != nil {
		return err
	}
	if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("setns %s: %w", args[0], err)
	}
	return syscall.Exec(args[1], args[1:], os.Environ())
}

// cmdSandbox runs inside fresh network, UTS and IPC namespaces: role "pod"
// is a pod's network (eth0 IP/24, e.g. 198.18.0.2, default route via the
// node), also used for the node of a further hostNetwork replica;
// role "peer" is a tailnet node's machine (like "pod", without a route to
// the service CIDR);
// role "router" is the node's upstream (eth0 198.18.1.254/24, forwarding, and
// an unreachable default route: whatever tries to leave gets an ICMP error).
func cmdSandbox(args []string) error {
	if len(args) != 5 {
		return fmt.Errorf("want: sandbox ROLE HOSTNAME KUBESOCK SYSCTLS IP")
	}
	role, hostname, kubeSock, sysctls, ip := args[0], args[1], args[2], args[3], args[4]
	if err := unix.Sethostname([]byte(hostname)); err != nil {
		return fmt.Errorf("sethostname: %w", err)
	}
	noDAD()
	if _, err := linkUp("lo"); err != nil {
		return err
	}
	fmt.Println("lo")
	in := bufio.NewReader(os.Stdin)
	if _, err := in.ReadString('\n'); err != nil {
		return err
	}
	l, err := linkUp("eth0")
	if err != nil {
		return err
	}
	switch role {
	case "pod", "peer":
		if net.ParseIP(ip).To4() == nil {
			return fmt.Errorf("pod sandbox: bad IP %q", ip)
		}
		if err := addAddr(l, ip+netBits); err != nil {
			return err
		}
		if err := netlink.RouteAdd(&netlink.Route{Dst: defaultDst(), Gw: net.ParseIP(nodeIP), LinkIndex: l.Attrs().Index}); err != nil {
			return fmt.Errorf("pod default route: %w", err)
		}
		// A new network namespace copies IPv4 forwarding from the node's
		// initial namespace (net.core.devconf_inherit_init_net=0, the
		// default), and Kubernetes nodes forward; IPv6 starts off.
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
			return fmt.Errorf("pod ip_forward: %w", err)
		}
		// The pod's (safe) sysctls, set by the runtime in the pod's namespaces.
		if sysctls != "-" {
			for _, kv := range strings.Split(sysctls, "\n") {
				name, val, _ := strings.Cut(kv, "=")
				if err := os.WriteFile(sysctlPath(name), []byte(val), 0o644); err != nil {
					return fmt.Errorf("sysctl %s: %w", name, err)
				}
			}
		}
		if role == "peer" {
			// A tailnet node elsewhere: the cluster's service addresses
			// mean nothing there.
			_, svc, _ := net.ParseCIDR(serviceCIDR)
			if err := netlink.RouteAdd(&netlink.Route{Dst: svc, Type: unix.RTN_UNREACHABLE}); err != nil {
				return fmt.Errorf("peer service route: %w", err)
			}
		}
		if kubeSock != "" && kubeSock != "-" {
			if err := serveUnixRelay("127.0.0.1:"+kubePort, kubeSock); err != nil {
				return err
			}
		}
	case "router":
		if err := addAddr(l, uplinkGW+netBits); err != nil {
			return err
		}
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
			return err
		}
		_, podNet, _ := net.ParseCIDR(nodeIP + netBits)
		if err := netlink.RouteAdd(&netlink.Route{Dst: podNet, Gw: net.ParseIP(uplinkNode), LinkIndex: l.Attrs().Index}); err != nil {
			return fmt.Errorf("router route: %w", err)
		}
		if err := netlink.RouteAdd(&netlink.Route{Dst: defaultDst(), Type: unix.RTN_UNREACHABLE}); err != nil {
			return fmt.Errorf("router unreachable route: %w", err)
		}
	default:
		return fmt.Errorf("unknown sandbox role %q", role)
	}
	fmt.Println("ready")
	// Hold the namespaces until the case ends (stdin closes or we are killed).
	io.Copy(io.Discard, in)
	return nil
}

// serveUnixRelay listens on TCP addr and relays every connection to the unix
// socket at sock (which the outer process relays to the host's apiserver).
func serveUnixRelay(addr, sock string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("kube relay listen %s: %w", addr, err)
	}
	go relayAll(ln, func() (net.Conn, error) { return net.Dial("unix", sock) })
	return nil
}

// relayAll accepts connections on ln until it closes and pipes each to a
// connection from dial (closing it when dial fails).
func relayAll(ln net.Listener, dial func() (net.Conn, error)) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			up, err := dial()
			if err != nil {
				c.Close()
				return
			}
			pipeConns(c, up)
		}()
	}
}

// pipeConns copies both ways until both directions are done.
func pipeConns(a, b net.Conn) {
	var wg sync.WaitGroup
	cp := func(dst, src net.Conn) {
		defer wg.Done()
		io.Copy(dst, src)
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		} else {
			dst.Close()
		}
	}
	wg.Add(2)
	go cp(a, b)
	go cp(b, a)
	wg.Wait()
	a.Close()
	b.Close()
}

// sysctlPath maps a sysctl name (dots or slashes) to its /proc/sys file.
func sysctlPath(name string) string {
	if !strings.Contains(name, "/") {
		name = strings.ReplaceAll(name, ".", "/")
	}
	return "/proc/sys/" + strings.TrimPrefix(name, "/")
}

// safeSysctls are the sysctls a default kubelet (1.34) allows; anything else
// needs --allowed-unsafe-sysctls on the node, which the emulated node lacks.
var safeSysctls = map[string]bool{
	"kernel.shm_rmid_forced":              true,
	"net.ipv4.ip_local_port_range":        true,
	"net.ipv4.tcp_syncookies":             true,
	"net.ipv4.ping_group_range":           true,
	"net.ipv4.ip_unprivileged_port_start": true,
	"net.ipv4.ip_local_reserved_ports":    true,
	"net.ipv4.tcp_keepalive_time":         true,
	"net.ipv4.tcp_fin_timeout":            true,
	"net.ipv4.tcp_keepalive_intvl":        true,
	"net.ipv4.tcp_keepalive_probes":       true,
	"net.ipv4.tcp_rmem":                   true,
	"net.ipv4.tcp_wmem":                   true,
}

// podSysctls checks the pod's sysctls as the kubelet's admission does and
// returns them for the sandbox ("name=value" lines), or a config error.
func podSysctls(spec *PodSpec) (string, error) {
	if spec.SecurityContext == nil || len(spec.SecurityContext.Sysctls) == 0 {
		return "", nil
	}
	var lines []string
	for _, sc := range spec.SecurityContext.Sysctls {
		name := strings.ReplaceAll(strings.Trim(sc.Name, "/"), "/", ".")
		if !safeSysctls[name] {
			return "", cfgErr("SysctlForbidden: pod was rejected: forbidden sysctl: %q not allowlisted", sc.Name)
		}
		if spec.HostNetwork && strings.HasPrefix(name, "net.") {
			return "", cfgErr("SysctlForbidden: pod was rejected: forbidden sysctl: %q not allowed with host net enabled", sc.Name)
		}
		if strings.ContainsAny(sc.Value, "\n") {
			return "", cfgErr("invalid sysctl value %q", sc.Value)
		}
		lines = append(lines, name+"="+sc.Value)
	}
	return strings.Join(lines, "\n"), nil
}

package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/tailscale/netlink"
	"golang.org/x/sys/unix"
)

// Traffic targets. Every server records who reached it (the source address
// it saw, and the proxy headers), so a path is observed, never assumed.
const (
	// internetIP is "the internet": an address in the upstream router's
	// namespace, beyond the node. Pods reach it through the node (source =
	// pod IP); an exit node reaches it from its own address.
	internetIP = "203.0.113.80"
	// serviceIP is a ClusterIP Service (serviceName), served on the node as
	// kube-proxy makes it reachable from the node's pods; not routable from
	// anywhere else (the peers have no route to the service CIDR).
	serviceIP   = "10.96.0.80"
	serviceCIDR = "10.96.0.0/12"
	serviceName = "echo.default.svc.cluster.local"
	// appTools is where the traffic container finds the clients (curl with
	// its libraries, and this binary as a Go net/http client).
	appTools = "/opt/tailguard-app"
	// trafficTimeout bounds one client request.
	trafficTimeout = 8 * time.Second
)

// peerIPFor is the address of peer i's own network namespace.
func peerIPFor(i int) string { return fmt.Sprintf("198.18.0.%d", 21+i) }

// Traffic asks the oracle to send requests from inside a running container
// once the pod is up (round 0), and again after restarting one container
// (round 1), and to report which server saw each request and from where.
type Traffic struct {
	Container string    `json:"container"` // default container for requests
	Requests  []Request `json:"requests"`
	// RestartContainer, if set, is stopped and started again (alone, with
	// fresh writable layer) after round 0; then the requests run again.
	RestartContainer string `json:"restartContainer"`
}

// Request is one client request. Client "curl" and "go" (Go's net/http
// client, proxies from the environment) fetch URL, whose path the oracle
// sets to /tailguard/<round>/<name>; client "tailscale" runs the container's
// own `tailscale` CLI with Args, as `kubectl exec` would (no extra flags).
type Request struct {
	Name      string   `json:"name"`
	Container string   `json:"container"`
	Client    string   `json:"client"`
	URL       string   `json:"url"`
	Args      []string `json:"args"`
}

// TrafficResult is what one request did.
type TrafficResult struct {
	Name     string `json:"name"`
	Round    int    `json:"round"`
	Client   string `json:"client"`
	URL      string `json:"url"`
	ExitCode int    `json:"exitCode"`
	Output   string `json:"output"` // the client's output (last 2000 bytes)
	// SeenBy names the server that answered it: "peer:<name>", "internet",
	// "service" ("" = none did). From is who that server saw: "pod" (a pod
	// IP), "peer:<name>" (that peer's own address: it left through that
	// exit node), "node", "tailnet" (delivered by the peer's tailscaled), or
	// the raw address. Proxied: the request carried a forwarding proxy's
	// header (X-Forwarded-For / Via).
	SeenBy  string `json:"seenBy"`
	From    string `json:"from"`
	Source  string `json:"source"`
	Proxied bool   `json:"proxied"`
}

// sighting is one request as a traffic server saw it.
type sighting struct {
	server, source, path string
	proxied              bool
}

// trafficServers records the requests every traffic server received.
type trafficServers struct {
	mu   sync.Mutex
	seen []sighting
}

func (t *trafficServers) handler(server string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, err := net.SplitHostPort(r.RemoteAddr)
		if err != nil {
			host = r.RemoteAddr
		}
		s := sighting{server: server, source: host, path: r.URL.Path,
			proxied: r.Header.Get("X-Forwarded-For") != "" || r.Header.Get("Via") != ""}
		t.mu.Lock()
		t.seen = append(t.seen, s)
		t.mu.Unlock()
		fmt.Fprintf(w, "tailguard-oracle %s: request %s from %s\n", server, r.URL.Path, host)
	})
}

func (t *trafficServers) find(path string) (sighting, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, s := range t.seen {
		if s.path == path {
			return s, true
		}
	}
	return sighting{}, false
}

// inNetNS runs f on a thread that has joined the network namespace at
// nsPath ("" = this one). Sockets keep the namespace they were created in.
func inNetNS(nsPath string, f func() error) error {
	if nsPath == "" {
		return f()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		target, err := os.Open(nsPath)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("setns %s: %w", nsPath, err)
			return
		}
		ferr := f()
		// A thread that cannot return stays locked: Go ends it with the goroutine.
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err == nil {
			runtime.UnlockOSThread()
		}
		errc <- ferr
	}()
	return <-errc
}

// serveHTTP serves h on addr in the namespace nsPath, over TLS if cert is set.
func serveHTTP(nsPath, addr string, h http.Handler, cert *tls.Certificate) error {
	var ln net.Listener
	err := inNetNS(nsPath, func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		return fmt.Errorf("traffic server %s: %w", addr, err)
	}
	srv := &http.Server{Handler: h, ErrorLog: log.New(io.Discard, "", 0), ReadHeaderTimeout: 10 * time.Second}
	if cert != nil {
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{*cert}})
	}
	go srv.Serve(ln)
	return nil
}

// startTrafficServers starts "the internet" (HTTP and HTTPS in the router's
// namespace) and the echo Service (on the node). The peers' pages are
// started with the peers.
func startTrafficServers(router *sandbox, ca *caseCA) (*trafficServers, error) {
	t := &trafficServers{}
	err := inNetNS(router.nsPath("net"), func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return addAddr(lo, internetIP+"/32")
	})
	if err != nil {
		return nil, fmt.Errorf("internet address: %w", err)
	}
	h := t.handler("internet")
	if err := serveHTTP(router.nsPath("net"), net.JoinHostPort(internetIP, "80"), h, nil); err != nil {
		return nil, err
	}
	if err := serveHTTP(router.nsPath("net"), net.JoinHostPort(internetIP, "443"), h, &ca.leaf); err != nil {
		return nil, err
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return nil, err
	}
	if err := addAddr(lo, serviceIP+"/32"); err != nil {
		return nil, err
	}
	if err := serveHTTP("", net.JoinHostPort(serviceIP, "80"), t.handler("service"), nil); err != nil {
		return nil, err
	}
	return t, nil
}

// servePeerPage serves peer n's page where its userspace tailscaled delivers
// connections to its own tailnet IP: its namespace's loopback.
func (t *trafficServers) servePeerPage(n *peerNode) error {
	return serveHTTP(n.sb.nsPath("net"), "127.0.0.1:80", t.handler("peer:"+n.Name), nil)
}

// who names the sender of a sighting by its source address.
func (p *pod) who(s sighting) string {
	switch {
	case strings.HasPrefix(s.server, "peer:") && (s.source == "127.0.0.1" || s.source == "::1"):
		return "tailnet"
	case s.source == nodeIP || s.source == uplinkNode:
		return "node"
	}
	for i := 0; i < maxReplicas; i++ {
		if s.source == podIPFor(i) {
			return "pod"
		}
	}
	for i, pn := range p.peers {
		if s.source == peerIPFor(i) {
			return "peer:" + pn.Name
		}
	}
	return s.source
}

// runTraffic sends the case's requests (round n) from the running containers.
func (l *podLife) runTraffic(round int) {
	p := l.p
	tr := p.c.Traffic
	if tr == nil {
		return
	}
	for _, rq := range tr.Requests {
		res := TrafficResult{Name: rq.Name, Round: round, Client: rq.Client}
		name := rq.Container
		if name == "" {
			name = tr.Container
		}
		r := l.run(name)
		if r == nil || r.exited() {
			res.ExitCode = -1
			res.Output = fmt.Sprintf("container %q is not running", name)
			l.traffic = append(l.traffic, res)
			continue
		}
		var argv []string
		path := fmt.Sprintf("/tailguard/%d/%s", round, rq.Name)
		if rq.Client != "tailscale" {
			res.URL = strings.TrimRight(p.rewritePeers(rq.URL), "/") + path
		}
		switch rq.Client {
		case "curl":
			argv = append([]string{appTools + "/bin/curl", "-sS", "--max-time", "6", "-w", "\nHTTP %{http_code}\n"}, rq.Args...)
			argv = append(argv, res.URL)
		case "go":
			argv = []string{appTools + "/bin/tailguard-oracle", "http-get", res.URL}
		case "tailscale":
			argv = append([]string{"tailscale"}, rq.Args...)
		}
		code, out, err := p.execIn(r, argv, trafficTimeout)
		if err != nil {
			code = -1
			out += "\n" + err.Error()
		}
		if len(out) > 2000 {
			out = out[len(out)-2000:]
		}
		res.ExitCode, res.Output = code, out
		if s, ok := p.traffic.find(path); ok {
			res.SeenBy, res.Source, res.Proxied = s.server, s.source, s.proxied
			res.From = p.who(s)
		}
		p.logf("traffic %d %s (%s %s): exit %d, seen by %q from %q proxied=%v", round, rq.Name, rq.Client, res.URL, code, res.SeenBy, res.From, res.Proxied)
		l.traffic = append(l.traffic, res)
	}
}

// run returns the current run of the long-running container name.
func (l *podLife) run(name string) *ctrRun {
	for _, r := range l.runs {
		if r.plan.name == name {
			return r
		}
	}
	return nil
}

// restartOne stops one long-running container and starts it again (as the
// kubelet restarts a crashed container: the others keep running), then
// judges the pod again.
func (l *podLife) restartOne(name string) *Outcome {
	p := l.p
	deadline := time.Now().Add(l.budget)
	for i, r := range l.runs {
		if r.plan.name != name {
			continue
		}
		p.stop(r)
		nr, err := p.startContainer(r.plan, 1)
		if err != nil {
			return p.fail(err)
		}
		l.runs[i] = nr
		if v := l.judge(l.runs, deadline, 1); v != nil {
			return l.finish(v, v.outcome)
		}
		return nil
	}
	return p.fail(fmt.Errorf("traffic.restartContainer %q is not a running container", name))
}

// appToolMounts makes the clients available in the traffic containers.
func (p *pod) appToolMounts(name string) []mountSpec {
	tr := p.c.Traffic
	if tr == nil {
		return nil
	}
	used := tr.Container == name
	for _, rq := range tr.Requests {
		used = used || (rq.Container == name && rq.Client != "tailscale")
	}
	if !used {
		return nil
	}
	exe, _ := os.Executable()
	return []mountSpec{
		{Source: p.appTools, Target: appTools, Kind: "bind", ReadOnly: true},
		{Source: exe, Target: appTools + "/bin/tailguard-oracle", Kind: "bind", ReadOnly: true},
	}
}

// defaultAppTools is where scripts/build-oracle.sh puts the clients.
func defaultAppTools(rootfs string) string {
	if v := os.Getenv("TAILGUARD_ORACLE_APPTOOLS"); v != "" {
		return v
	}
	return filepath.Join(filepath.Dir(rootfs), "apptools")
}

// cmdHTTPGet is `tailguard-oracle http-get URL`: an ordinary Go program's
// HTTP request (net/http, proxies from HTTP_PROXY/HTTPS_PROXY/NO_PROXY).
func cmdHTTPGet(args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("want: http-get URL")
	}
	c := &http.Client{Timeout: 6 * time.Second, Transport: &http.Transport{Proxy: http.ProxyFromEnvironment}}
	resp, err := c.Get(args[0])
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	fmt.Printf("%s\nHTTP %d\n", strings.TrimRight(string(body), "\n"), resp.StatusCode)
	if resp.StatusCode >= 400 {
		os.Exit(1)
	}
	return nil
}

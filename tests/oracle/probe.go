package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// probeTimeout is the probe's timeoutSeconds (default 1 s).
func probeTimeout(pr *Probe) time.Duration {
	if pr.TimeoutSeconds > 0 {
		return time.Duration(pr.TimeoutSeconds) * time.Second
	}
	return time.Second
}

// resolvePort resolves a probe port: a number, or the name of a containerPort.
func resolvePort(c *Container, port IntOrString) (int, error) {
	if port.IsInt {
		return int(port.Int), nil
	}
	if n, err := strconv.Atoi(port.Str); err == nil {
		return n, nil
	}
	for _, cp := range c.Ports {
		if cp.Name == port.Str {
			return cp.ContainerPort, nil
		}
	}
	return 0, fmt.Errorf("couldn't find port %q in container ports", port.Str)
}

// describe renders a probe for details, e.g. "readinessProbe httpGet 198.18.0.2:9002/healthz".
func (p *pod) describeProbe(kind string, pl *ctrPlan, pr *Probe) string {
	switch {
	case pr.HTTPGet != nil:
		host := pr.HTTPGet.Host
		if host == "" {
			host = p.podIP
		}
		port, err := resolvePort(pl.c, pr.HTTPGet.Port)
		ps := strconv.Itoa(port)
		if err != nil {
			ps = pr.HTTPGet.Port.String()
		}
		pth := pr.HTTPGet.Path
		if pth == "" {
			pth = "/"
		} else if !strings.HasPrefix(pth, "/") {
			pth = "/" + pth
		}
		scheme := ""
		if strings.EqualFold(pr.HTTPGet.Scheme, "HTTPS") {
			scheme = "https://"
		}
		return fmt.Sprintf("%s httpGet %s%s%s", kind, scheme, net.JoinHostPort(host, ps), pth)
	case pr.TCPSocket != nil:
		host := pr.TCPSocket.Host
		if host == "" {
			host = p.podIP
		}
		return fmt.Sprintf("%s tcpSocket %s", kind, net.JoinHostPort(host, pr.TCPSocket.Port.String()))
	case pr.Exec != nil:
		b, _ := json.Marshal(pr.Exec.Command)
		return fmt.Sprintf("%s exec %s", kind, b)
	case pr.GRPC != nil:
		return kind + " grpc"
	}
	return kind + " (no handler)"
}

// runProbe runs one probe attempt from the node network namespace (where the
// kubelet runs), or inside the container for exec. It returns nil on success.
func (p *pod) runProbe(r *ctrRun, pr *Probe) error {
	timeout := probeTimeout(pr)
	switch {
	case pr.HTTPGet != nil:
		h := pr.HTTPGet
		host := h.Host
		if host == "" {
			host = p.podIP
		}
		port, err := resolvePort(r.plan.c, h.Port)
		if err != nil {
			return err
		}
		scheme := "http"
		if strings.EqualFold(h.Scheme, "HTTPS") {
			scheme = "https"
		}
		pth := h.Path
		if !strings.HasPrefix(pth, "/") {
			pth = "/" + pth
		}
		req, err := http.NewRequest("GET", scheme+"://"+net.JoinHostPort(host, strconv.Itoa(port))+pth, nil)
		if err != nil {
			return err
		}
		req.Header.Set("User-Agent", "kube-probe/1.34")
		req.Header.Set("Accept", "*/*")
		for _, hh := range h.HTTPHeaders {
			if strings.EqualFold(hh.Name, "Host") {
				req.Host = hh.Value
			} else {
				req.Header.Add(hh.Name, hh.Value)
			}
		}
		client := &http.Client{
			Timeout: timeout,
			Transport: &http.Transport{
				Proxy:             nil,
				DisableKeepAlives: true,
				TLSClientConfig:   &tls.Config{InsecureSkipVerify: true},
			},
		}
		resp, err := client.Do(req)
		if err != nil {
			return simplifyNetErr(err, timeout)
		}
		io.Copy(io.Discard, io.LimitReader(resp.Body, 10<<10))
		resp.Body.Close()
		if resp.StatusCode >= 200 && resp.StatusCode < 400 {
			return nil
		}
		return fmt.Errorf("HTTP probe failed with statuscode: %d", resp.StatusCode)
	case pr.TCPSocket != nil:
		host := pr.TCPSocket.Host
		if host == "" {
			host = p.podIP
		}
		port, err := resolvePort(r.plan.c, pr.TCPSocket.Port)
		if err != nil {
			return err
		}
		c, err := net.DialTimeout("tcp", net.JoinHostPort(host, strconv.Itoa(port)), timeout)
		if err != nil {
			return simplifyNetErr(err, timeout)
		}
		c.Close()
		return nil
	case pr.Exec != nil:
		if len(pr.Exec.Command) == 0 {
			return errors.New("exec probe with an empty command")
		}
		code, out, err := p.execIn(r, pr.Exec.Command, timeout)
		if err != nil {
			return err
		}
		if code != 0 {
			return fmt.Errorf("exit code %d: %s", code, oneLine(out, 300))
		}
		return nil
	case pr.GRPC != nil:
		return errors.New("grpc probes are not supported by the oracle (counted as failing)")
	}
	return errors.New("probe has no handler")
}

func simplifyNetErr(err error, timeout time.Duration) error {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return errors.New("connection refused")
	case errors.Is(err, syscall.ENETUNREACH):
		return errors.New("network is unreachable")
	case errors.Is(err, syscall.EHOSTUNREACH):
		return errors.New("no route to host")
	case errors.Is(err, syscall.ECONNRESET):
		return errors.New("connection reset by peer")
	case errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "Timeout exceeded"):
		return fmt.Errorf("timeout after %s", timeout)
	}
	return err
}

func oneLine(s string, max int) string {
	s = strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", " | ")), " ")
	if len(s) > max {
		s = s[:max] + "..."
	}
	if s == "" {
		s = "(no output)"
	}
	return s
}

var execSeq atomic.Int64

// execIn runs argv inside the running container r (namespaces, root, user,
// capabilities, env), like an exec probe, and returns its exit code and
// combined output. A timeout is reported as an error.
func (p *pod) execIn(r *ctrRun, argv []string, timeout time.Duration) (int, string, error) {
	spec := execSpec{PID: r.pid, TimeoutMs: timeout.Milliseconds(), procSpec: r.plan.proc}
	spec.Argv = argv
	b, err := json.Marshal(spec)
	if err != nil {
		return -1, "", err
	}
	f := filepath.Join(p.rt, fmt.Sprintf("exec-%d.json", execSeq.Add(1)))
	if err := os.WriteFile(f, b, 0o600); err != nil {
		return -1, "", err
	}
	defer os.Remove(f)
	ctx, cancel := context.WithTimeout(context.Background(), timeout+time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, p.self, "exec", f)
	cmd.WaitDelay = 200 * time.Millisecond
	t0 := time.Now()
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil || (err != nil && time.Since(t0) >= timeout) {
		return -1, string(out), fmt.Errorf("command timed out after %s", timeout)
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), string(out), nil
	}
	if err != nil {
		return -1, string(out), err
	}
	return 0, string(out), nil
}

// tsStatus is the part of `tailscale status --json` the oracle reads.
type tsStatus struct {
	BackendState string
	Self         *struct {
		ID           string // stable node ID
		PublicKey    string // node key ("nodekey:...")
		HostName     string
		TailscaleIPs []string
	}
	ExitNodeStatus *struct {
		ID           string
		TailscaleIPs []string
	}
	Peer map[string]*struct {
		ID             string
		HostName       string
		TailscaleIPs   []string
		ExitNode       bool
		ExitNodeOption bool
	}
}

// exitNodeInUse returns the IP of the exit node actually carrying egress:
// selected (ExitNodeStatus) and offering exit routes (ExitNodeOption). The
// second value describes a selected node that offers none.
func (st *tsStatus) exitNodeInUse() (string, string) {
	if st.ExitNodeStatus == nil {
		return "", ""
	}
	ip := firstIPv4(st.ExitNodeStatus.TailscaleIPs)
	if ip == "" {
		ip = st.ExitNodeStatus.ID
	}
	for _, p := range st.Peer {
		if p != nil && p.ID == st.ExitNodeStatus.ID {
			if !p.ExitNodeOption {
				return "", fmt.Sprintf("exit node %s (%s) is selected but does not offer exit routes", ip, p.HostName)
			}
			return ip, ""
		}
	}
	return ip, ""
}

// status asks the container's tailscaled (through its own CLI and socket).
func (p *pod) status(r *ctrRun) (*tsStatus, error) {
	code, out, err := p.execIn(r, []string{"tailscale", "--socket=" + r.plan.socket, "status", "--json"}, 5*time.Second)
	if err != nil {
		return nil, err
	}
	if code != 0 {
		return nil, fmt.Errorf("tailscale status: exit %d: %s", code, oneLine(out, 200))
	}
	// The CLI may print warnings before the JSON.
	if i := strings.IndexByte(out, '{'); i > 0 {
		out = out[i:]
	}
	var st tsStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return nil, fmt.Errorf("tailscale status: %v", err)
	}
	return &st, nil
}

func firstIPv4(ips []string) string {
	for _, ip := range ips {
		ip, _, _ = strings.Cut(ip, "/")
		if a := net.ParseIP(ip); a != nil && a.To4() != nil {
			return ip
		}
	}
	if len(ips) > 0 {
		ip, _, _ := strings.Cut(ips[0], "/")
		return ip
	}
	return ""
}

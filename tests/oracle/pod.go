package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"tailscale.com/types/logger"
)

// Judging thresholds (probe timing is compressed; what matters is whether a
// probe can pass at all).
const (
	pollEvery     = 300 * time.Millisecond
	hungAfter     = 10 * time.Second // containerboot without "Startup complete"
	plainUpAfter  = 2 * time.Second  // a non-containerboot command still running
	probeGrace    = 5 * time.Second  // probes failing this long after the container is up
	stopGrace     = 3 * time.Second  // SIGTERM -> SIGKILL on restart
	exitNodeWait  = 3 * time.Second
	keepLines     = 400
	lastLinesSent = 1000
	maxLineLen    = 1000
	bootLine      = "Startup complete, waiting for shutdown signal"
)

type pod struct {
	c       *Case
	casedir string
	rootfs  string
	self    string
	rt      string // tmpfs for writable layers and specs
	logf    logger.Logf

	sb       *sandbox // the pod's network namespace
	nodeSB   *sandbox // the node of a hostNetwork replica > 0 (nil: the case's node, this process's namespace)
	router   *sandbox // the node's upstream
	cp       *controlPlane
	login    *loginServer // requires interactive login (nodes without an auth key); shared by replicas
	quiet    logger.Logf
	peers    []*peerNode
	traffic  *trafficServers // the traffic targets (nil without a "traffic" request)
	appTools string          // the traffic clients (curl + libraries) on the host
	penv     *podEnv
	hostNet  bool
	podIP    string
	nodeIP   string // the IP of the node the pod runs on (status.hostIP)
	hostname string

	replica int    // index of this pod among the case's replicas
	label   string // "" for a single pod, else "r<i>" (log files, containers' entries)
	dir     string // the pod's own files (volumes, pod files): casedir, or casedir/r<i>
	nodeDir string // the emulated node's filesystem (hostPath volumes)

	volumes     map[string]*volume
	podFilesDir string
	caBundle    string // image CA bundle + the case CA (trusted by the containers)
	saDir       string

	t0 time.Time
}

// ctrRun is one start of one container.
type ctrRun struct {
	plan  *ctrPlan
	n     int // 0 = first start, then restarts
	cmd   *exec.Cmd
	pid   int
	start time.Time

	done     chan struct{}
	exitCode int
	exitAt   time.Time
	startErr string

	mu       sync.Mutex
	lines    []string
	bootAt   time.Time
	lastBoot string // last "boot: " line

	startupPassed bool
	ready         bool
	readyAt       time.Time
	probeErr      map[string]string
}

func (r *ctrRun) exited() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

func (r *ctrRun) lastLines(n int) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	l := r.lines
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return append([]string{}, l...)
}

// upAt is when the container counts as "up" (containerboot's success line,
// or a plain command still running after a while); zero if not yet.
func (r *ctrRun) upAt(now time.Time) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.bootAt.IsZero() {
		return r.bootAt
	}
	if !r.plan.boot && now.Sub(r.start) >= plainUpAfter {
		return r.start.Add(plainUpAfter)
	}
	return time.Time{}
}

func (r *ctrRun) addLine(l string) {
	if len(l) > maxLineLen {
		l = l[:maxLineLen] + "..."
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lines = append(r.lines, l)
	if len(r.lines) > keepLines {
		r.lines = r.lines[len(r.lines)-keepLines:]
	}
	if strings.Contains(l, bootLine) && r.bootAt.IsZero() {
		r.bootAt = time.Now()
	}
	if i := strings.Index(l, "boot: "); i >= 0 {
		r.lastBoot = l[i:]
	}
}

// startContainer starts one container (a new writable layer each time) and
// returns once the runtime has exec'd its command or failed to.
func (p *pod) startContainer(pl *ctrPlan, n int) (*ctrRun, error) {
	r := &ctrRun{plan: pl, n: n, done: make(chan struct{}), probeErr: map[string]string{}}
	spec := pl.spec
	spec.RunDir = filepath.Join(p.rt, fmt.Sprintf("%s%s.%d", p.filePrefix(), pl.name, n))
	b, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	specFile := spec.RunDir + ".json"
	if err := os.WriteFile(specFile, b, 0o600); err != nil {
		return nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	repR, repW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	logFile, err := os.Create(filepath.Join(p.casedir, "logs", fmt.Sprintf("%s%s.%d.log", p.filePrefix(), pl.name, n)))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(p.self, "shim", specFile)
	cmd.Stdout, cmd.Stderr = outW, outW
	cmd.ExtraFiles = []*os.File{repW}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWPID,
		Pdeathsig:  syscall.SIGKILL,
	}
	r.start = time.Now()
	if err := cmd.Start(); err != nil {
		outW.Close()
		repW.Close()
		return nil, fmt.Errorf("starting shim: %w", err)
	}
	outW.Close()
	repW.Close()
	r.cmd, r.pid = cmd, cmd.Process.Pid

	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		defer logFile.Close()
		br := bufio.NewReaderSize(outR, 64<<10)
		for {
			line, err := br.ReadString('\n')
			if line != "" {
				logFile.WriteString(line)
				r.addLine(strings.TrimRight(line, "\r\n"))
			}
			if err != nil {
				return
			}
		}
	}()
	waited := make(chan struct{})
	go func() {
		err := cmd.Wait()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				code = 128 + int(ws.Signal())
			} else {
				code = ee.ExitCode()
			}
		}
		r.exitCode = code
		r.exitAt = time.Now()
		close(waited)
		select {
		case <-readerDone:
		case <-time.After(2 * time.Second):
		}
		outR.Close()
		close(r.done)
	}()

	// The report pipe closes at exec (close-on-exec) or carries the failure.
	rep, _ := io.ReadAll(repR)
	repR.Close()
	if len(strings.TrimSpace(string(rep))) > 0 {
		var sr shimReport
		if err := json.Unmarshal(rep, &sr); err != nil {
			return nil, fmt.Errorf("shim report %q: %v", rep, err)
		}
		<-waited
		if sr.Fatal != "" {
			return nil, fmt.Errorf("container %s: runtime setup failed: %s", pl.name, sr.Fatal)
		}
		// The runtime could not start the process: kubelet reports StartError, exit code 128.
		<-r.done
		r.exitCode = 128
		r.startErr = sr.StartError
		r.addLine("runc create failed: unable to start container process: " + sr.StartError)
	}
	p.logf("started %s%s (run %d, pid %d)", p.filePrefix(), pl.name, n, r.pid)
	return r, nil
}

// stop stops a running container as the kubelet does: SIGTERM, then SIGKILL
// after a grace period.
func (p *pod) stop(r *ctrRun) {
	if r.exited() {
		return
	}
	r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.done:
	case <-time.After(stopGrace):
		r.cmd.Process.Kill()
		<-r.done
	}
}

// verdict is a non-ready judgement.
type verdict struct {
	outcome string
	run     *ctrRun
	detail  string
}

func (p *pod) exitedVerdict(r *ctrRun, what string) *verdict {
	d := fmt.Sprintf("container %q exited with code %d %s", r.plan.name, r.exitCode, what)
	if r.startErr != "" {
		d = fmt.Sprintf("container %q could not be started (StartError): %s", r.plan.name, r.startErr)
	}
	return &verdict{outcome: OutExited, run: r, detail: d}
}

func (p *pod) probeSummary(r *ctrRun) string {
	var parts []string
	for _, k := range []string{"startupProbe", "readinessProbe", "livenessProbe"} {
		if e, ok := r.probeErr[k]; ok {
			parts = append(parts, p.describeProbe(k, r.plan, r.plan.probes[k])+": "+e)
		}
	}
	return strings.Join(parts, "; ")
}

func (p *pod) hungVerdict(r *ctrRun, now time.Time) *verdict {
	r.mu.Lock()
	last := r.lastBoot
	r.mu.Unlock()
	d := fmt.Sprintf("container %q still running but not started after %.0fs", r.plan.name, now.Sub(r.start).Seconds())
	if r.plan.boot {
		d = fmt.Sprintf("containerboot in %q printed no %q within %.0fs", r.plan.name, bootLine, now.Sub(r.start).Seconds())
	}
	if last != "" {
		d += "; last boot line: " + last
	}
	if s := p.probeSummary(r); s != "" {
		d += "; " + s
	}
	return &verdict{outcome: OutHung, run: r, detail: d}
}

func (p *pod) probeVerdict(r *ctrRun, kind string) *verdict {
	pr := r.plan.probes[kind]
	return &verdict{outcome: OutProbeFailing, run: r,
		detail: p.describeProbe(kind, r.plan, pr) + ": " + r.probeErr[kind] + " (never passed)"}
}

// step runs the probes of a not-yet-ready container once.
func (p *pod) step(r *ctrRun, now time.Time) {
	if sp := r.plan.probes["startupProbe"]; sp != nil && !r.startupPassed {
		if err := p.runProbe(r, sp); err != nil {
			r.probeErr["startupProbe"] = err.Error()
			return
		}
		r.startupPassed = true
		delete(r.probeErr, "startupProbe")
	}
	if rp := r.plan.probes["readinessProbe"]; rp != nil {
		if err := p.runProbe(r, rp); err != nil {
			r.probeErr["readinessProbe"] = err.Error()
			return
		}
		delete(r.probeErr, "readinessProbe")
		r.ready = true
		return
	}
	if !r.upAt(now).IsZero() {
		r.ready = true
	}
}

// waitReady waits until every run is ready (startup + readiness), or decides
// why not: exited, hung or probe-failing.
func (p *pod) waitReady(runs []*ctrRun, deadline time.Time) *verdict {
	for {
		now := time.Now()
		for _, r := range runs {
			if r.exited() {
				return p.exitedVerdict(r, "before it was ready")
			}
		}
		all := true
		for _, r := range runs {
			if r.ready {
				continue
			}
			p.step(r, now)
			if r.exited() {
				return p.exitedVerdict(r, "before it was ready")
			}
			if r.ready {
				r.readyAt = time.Now()
				p.logf("%s ready after %.2fs", r.plan.name, r.readyAt.Sub(r.start).Seconds())
				continue
			}
			all = false
			up := r.upAt(now)
			if up.IsZero() && r.plan.boot && now.Sub(r.start) >= hungAfter {
				return p.hungVerdict(r, now)
			}
			if !up.IsZero() && now.Sub(up) >= probeGrace {
				return p.probeVerdict(r, failingProbe(r))
			}
		}
		if all {
			return nil
		}
		if now.After(deadline) {
			for _, r := range runs {
				if !r.ready {
					if r.upAt(now).IsZero() {
						return p.hungVerdict(r, now)
					}
					return p.probeVerdict(r, failingProbe(r))
				}
			}
		}
		p.sleepOrExit(runs, pollEvery)
	}
}

func failingProbe(r *ctrRun) string {
	if r.plan.probes["startupProbe"] != nil && !r.startupPassed {
		return "startupProbe"
	}
	return "readinessProbe"
}

// sleepOrExit sleeps d or until one of runs exits.
func (p *pod) sleepOrExit(runs []*ctrRun, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	cases := make(chan struct{}, 1)
	stop := make(chan struct{})
	defer close(stop)
	for _, r := range runs {
		go func(r *ctrRun) {
			select {
			case <-r.done:
				select {
				case cases <- struct{}{}:
				default:
				}
			case <-stop:
			}
		}(r)
	}
	select {
	case <-t.C:
	case <-cases:
	}
}

// waitStarted gates the next init container on a native sidecar: running
// and, if it has one, its startupProbe passed.
func (p *pod) waitStarted(r *ctrRun, deadline time.Time) *verdict {
	sp := r.plan.probes["startupProbe"]
	for {
		now := time.Now()
		if r.exited() {
			return p.exitedVerdict(r, "before it was started")
		}
		if sp == nil {
			return nil
		}
		if err := p.runProbe(r, sp); err == nil {
			r.startupPassed = true
			return nil
		} else {
			r.probeErr["startupProbe"] = err.Error()
		}
		up := r.upAt(now)
		if up.IsZero() && r.plan.boot && now.Sub(r.start) >= hungAfter {
			return p.hungVerdict(r, now)
		}
		if (!up.IsZero() && now.Sub(up) >= probeGrace) || now.After(deadline) {
			if up.IsZero() {
				return p.hungVerdict(r, now)
			}
			return p.probeVerdict(r, "startupProbe")
		}
		p.sleepOrExit([]*ctrRun{r}, pollEvery)
	}
}

// checkLiveness requires every livenessProbe to pass at least once.
func (p *pod) checkLiveness(runs []*ctrRun, deadline time.Time) *verdict {
	for _, r := range runs {
		lp := r.plan.probes["livenessProbe"]
		if lp == nil {
			continue
		}
		until := time.Now().Add(probeGrace)
		if until.After(deadline) {
			until = deadline
		}
		for {
			if r.exited() {
				return p.exitedVerdict(r, "after it was ready")
			}
			err := p.runProbe(r, lp)
			if err == nil {
				delete(r.probeErr, "livenessProbe")
				break
			}
			r.probeErr["livenessProbe"] = err.Error()
			if time.Now().After(until) {
				return p.probeVerdict(r, "livenessProbe")
			}
			p.sleepOrExit([]*ctrRun{r}, pollEvery)
		}
	}
	return nil
}

// observe records the tailnet IP and exit node of each ready container and
// reports a silent misbehaviour: an exit node asked for but none in use.
func (p *pod) observe(runs []*ctrRun, res map[string]*CtrOutcome) *verdict {
	var bad *verdict
	for _, r := range runs {
		co := res[r.plan.name]
		if !r.plan.tailscale() {
			continue // not a Tailscale container (its CLI would just wait for a socket)
		}
		until := time.Now().Add(exitNodeWait)
		why := ""
		for {
			st, err := p.status(r)
			if err != nil {
				p.logf("%s: status: %v", r.plan.name, err)
			}
			if st != nil {
				if st.Self != nil {
					co.TailnetIP = firstIPv4(st.Self.TailscaleIPs)
					co.NodeKey = st.Self.PublicKey
				}
				co.ExitNodeInUse, why = st.exitNodeInUse()
			}
			if r.plan.exitNode == "" || co.ExitNodeInUse != "" || why != "" || time.Now().After(until) || r.exited() {
				break
			}
			p.sleepOrExit([]*ctrRun{r}, pollEvery)
		}
		if r.plan.exitNode != "" && co.ExitNodeInUse == "" && !r.exited() && bad == nil {
			if why == "" {
				why = "tailscale status: no ExitNodeStatus"
			}
			bad = &verdict{outcome: OutMisbehaving, run: r, detail: fmt.Sprintf(
				"container %q asked for --exit-node=%s (TS_EXTRA_ARGS %q) but no exit node is in use after start (%s): egress bypasses the exit node",
				r.plan.name, r.plan.exitNode, r.plan.extraArgs, why)}
		}
	}
	return bad
}

// podLife is the kubelet's view of one pod while it runs: the containers
// started so far, their recorded outcomes and a misbehaviour seen on the way.
type podLife struct {
	p           *pod
	res         map[string]*CtrOutcome
	order       []string
	plans       []*ctrPlan // long-running, in start order
	runs        []*ctrRun  // their current runs
	misbehaving *verdict
	budget      time.Duration
	traffic     []TrafficResult
}

func (p *pod) newLife() *podLife {
	return &podLife{p: p, res: map[string]*CtrOutcome{}, budget: time.Duration(p.c.TimeoutSeconds * float64(time.Second))}
}

func (l *podLife) record(r *ctrRun, outcome string) {
	co, ok := l.res[r.plan.name]
	if !ok {
		co = &CtrOutcome{Name: r.plan.name, Pod: l.p.c.Pod.Metadata.Name}
		l.res[r.plan.name] = co
		l.order = append(l.order, r.plan.name)
	}
	co.Outcome = outcome
	co.ExitCode = 0
	if r.exited() {
		co.ExitCode = r.exitCode
	}
	end := time.Now()
	switch {
	case !r.readyAt.IsZero():
		end = r.readyAt
	case r.exited():
		end = r.exitAt
	}
	co.Seconds = roundSec(end.Sub(r.start))
}

// containers lists the recorded containers in start order.
func (l *podLife) containers() []CtrOutcome {
	out := []CtrOutcome{}
	for _, n := range l.order {
		out = append(out, *l.res[n])
	}
	return out
}

func (l *podLife) finish(v *verdict, outcome string) *Outcome {
	out := &Outcome{Outcome: outcome, LastLines: []string{}, Containers: l.containers(), Traffic: l.trafficResults()}
	if v == nil {
		return out
	}
	out.Container = v.run.plan.name
	out.Detail = v.detail
	if v.run.exited() {
		out.ExitCode = v.run.exitCode
	}
	out.LastLines = v.run.lastLines(lastLinesSent)
	return out
}

func (l *podLife) cfgOutcome(name string, err error) *Outcome {
	out := &Outcome{Outcome: OutConfigError, Container: name, Detail: err.Error(), LastLines: []string{}, Containers: l.containers(), Traffic: []TrafficResult{}}
	out.Containers = append(out.Containers, CtrOutcome{Name: name, Outcome: OutConfigError, Pod: l.p.c.Pod.Metadata.Name})
	return out
}

// judge waits until runs are ready, checks liveness and observes them.
func (l *podLife) judge(runs []*ctrRun, deadline time.Time, restart int) *verdict {
	p := l.p
	v := p.waitReady(runs, deadline)
	if v == nil {
		v = p.checkLiveness(runs, deadline)
	}
	for _, r := range runs {
		switch {
		case r.exited():
			l.record(r, OutExited)
		case r.ready:
			l.record(r, OutReady)
		default:
			l.record(r, "not-ready")
		}
	}
	if v == nil {
		if m := p.observe(runs, l.res); m != nil && l.misbehaving == nil {
			l.misbehaving = m
		}
		for _, r := range runs {
			if r.exited() {
				v = p.exitedVerdict(r, "after it was ready")
				break
			}
		}
	}
	if v != nil {
		if restart > 0 {
			if v.outcome == OutExited {
				v.outcome = OutRestartExited
			}
			v.detail = fmt.Sprintf("restart %d: %s", restart, v.detail)
		}
		l.record(v.run, v.outcome)
	}
	return v
}

// start runs the init containers in order, then starts the main containers
// and judges them. It returns the pod's outcome when that is decided
// (a failure, or `completed` without long-running containers), nil when
// the long-running containers are up.
// planAndStart plans container c as the kubelet would and starts it; a
// configuration the kubelet refuses, or a harness error, is the outcome.
func (l *podLife) planAndStart(c *Container, init bool) (*ctrPlan, *ctrRun, *Outcome) {
	pl, err := l.p.plan(c, init)
	if err != nil {
		var ce *configError
		if errors.As(err, &ce) {
			return nil, nil, l.cfgOutcome(c.Name, err)
		}
		return nil, nil, l.p.fail(err)
	}
	r, err := l.p.startContainer(pl, 0)
	if err != nil {
		return nil, nil, l.p.fail(err)
	}
	return pl, r, nil
}

func (l *podLife) start() *Outcome {
	p := l.p
	requested := map[string]bool{}
	for _, n := range p.c.Containers {
		requested[n] = true
	}
	deadline := p.t0.Add(l.budget)
	spec := &p.c.Pod.Spec
	for i := range spec.InitContainers {
		c := &spec.InitContainers[i]
		if !requested[c.Name] {
			continue
		}
		pl, r, o := l.planAndStart(c, true)
		if o != nil {
			return o
		}
		if pl.sidecar {
			l.plans = append(l.plans, pl)
			l.runs = append(l.runs, r)
			if v := p.waitStarted(r, deadline); v != nil {
				l.record(r, v.outcome)
				return l.finish(v, v.outcome)
			}
			l.record(r, "running")
			continue
		}
		select {
		case <-r.done:
		case <-time.After(time.Until(deadline)):
		}
		if !r.exited() {
			v := &verdict{outcome: OutHung, run: r, detail: fmt.Sprintf("init container %q did not finish within %.0fs", c.Name, time.Since(r.start).Seconds())}
			l.record(r, OutHung)
			return l.finish(v, OutHung)
		}
		if r.exitCode != 0 {
			v := p.exitedVerdict(r, "(init container failed)")
			l.record(r, OutExited)
			return l.finish(v, OutExited)
		}
		l.record(r, OutCompleted)
	}
	for i := range spec.Containers {
		c := &spec.Containers[i]
		if !requested[c.Name] {
			continue
		}
		pl, r, o := l.planAndStart(c, false)
		if o != nil {
			return o
		}
		l.plans = append(l.plans, pl)
		l.runs = append(l.runs, r)
	}
	if len(l.runs) == 0 {
		return l.finish(nil, OutCompleted)
	}
	if v := l.judge(l.runs, deadline, 0); v != nil {
		return l.finish(v, v.outcome)
	}
	return nil
}

// restart stops the long-running containers and starts them again (restart
// n, same volumes), then judges them; it returns the pod's outcome when a
// restart failed, else nil.
func (l *podLife) restart(n int) *Outcome {
	p := l.p
	for i := len(l.runs) - 1; i >= 0; i-- {
		p.stop(l.runs[i])
	}
	deadline := time.Now().Add(l.budget)
	l.runs = l.runs[:0]
	for _, pl := range l.plans {
		r, err := p.startContainer(pl, n)
		if err != nil {
			return p.fail(err)
		}
		l.runs = append(l.runs, r)
		if pl.sidecar {
			if v := p.waitStarted(r, deadline); v != nil {
				if v.outcome == OutExited {
					v.outcome = OutRestartExited
				}
				v.detail = fmt.Sprintf("restart %d: %s", n, v.detail)
				l.record(r, v.outcome)
				return l.finish(v, v.outcome)
			}
		}
	}
	if v := l.judge(l.runs, deadline, n); v != nil {
		return l.finish(v, v.outcome)
	}
	return nil
}

// end is the outcome of a pod whose containers all came up (every time).
func (l *podLife) end() *Outcome {
	if l.misbehaving != nil {
		l.record(l.misbehaving.run, OutMisbehaving)
		return l.finish(l.misbehaving, OutMisbehaving)
	}
	return l.finish(nil, OutReady)
}

// lifecycle runs the pod as the kubelet would and judges it.
func (p *pod) lifecycle() *Outcome {
	l := p.newLife()
	if o := l.start(); o != nil {
		return o
	}
	l.runTraffic(0)
	if tr := p.c.Traffic; tr != nil && tr.RestartContainer != "" {
		if o := l.restartOne(tr.RestartContainer); o != nil {
			return o
		}
		l.runTraffic(1)
	}
	for n := 1; n <= p.c.Restarts; n++ {
		if o := l.restart(n); o != nil {
			return o
		}
	}
	return l.end()
}

// filePrefix distinguishes the files (logs, run directories) of replicas.
func (p *pod) filePrefix() string {
	if p.label == "" {
		return ""
	}
	return p.label + "."
}

// netSandbox is the network namespace the pod's containers join: the pod's
// sandbox, or for hostNetwork the node's (nil: the case's node, this process's).
func (p *pod) netSandbox() *sandbox {
	if !p.hostNet {
		return p.sb
	}
	return p.nodeSB
}

// fail turns an oracle failure into a panic caught by cmdInner.
func (p *pod) fail(err error) *Outcome {
	panic(oracleFailure{err})
}

type oracleFailure struct{ err error }

func roundSec(d time.Duration) float64 {
	return float64(d.Milliseconds()) / 1000
}

// trafficResults is the traffic seen so far ([] when none).
func (l *podLife) trafficResults() []TrafficResult {
	return append([]TrafficResult{}, l.traffic...)
}

package main

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Several pods of one workload ("replicas": a Deployment's replicas, a
// StatefulSet's ordinals, a DaemonSet's pods): same spec, one control server,
// the same peers and apiserver, started one after the other and then running
// side by side, so that state they share (one state Secret, one hostPath
// directory) is really shared.
const (
	replicaWindow = 3 * time.Second // all replicas running: how long they are watched
	replicaSample = time.Second     // how often their tailnet identity is asked for in that window
)

// replicaName is the name of replica i: a StatefulSet-style name ending in
// -0 counts on (ts-0, ts-1, ts-2), any other name gets -r<i>.
func replicaName(name string, i int) string {
	if base, ok := strings.CutSuffix(name, "-0"); ok {
		return fmt.Sprintf("%s-%d", base, i)
	}
	return fmt.Sprintf("%s-r%d", name, i)
}

// replicaUID is a distinct, stable UID for replica i (replica 0 keeps the
// case's).
func replicaUID(uid string, i int) string {
	if i == 0 {
		return uid
	}
	h := sha256.Sum256(fmt.Appendf(nil, "%s/replica/%d", uid, i))
	h[6] = h[6]&0x0f | 0x40 // version 4
	h[8] = h[8]&0x3f | 0x80 // variant
	return fmt.Sprintf("%x-%x-%x-%x-%x", h[0:4], h[4:6], h[6:8], h[8:10], h[10:16])
}

// newReplica makes the pod of replica i (of c.Replicas) out of the case's
// pod b and starts its sandbox: its own pod network namespace (pod IP
// 198.18.0.2+i, same node); for hostNetwork, replica 0 runs on the case's
// node and each further replica on an emulated node of its own (a network
// namespace with node IP 198.18.0.11, .12, nodeName <nodeName>-<i>, its own
// hostPath directories), as a DaemonSet's pods do.
func (b *pod) newReplica(i int, kubeSock, sysctls string) (*pod, error) {
	p := *b
	c := *b.c
	p.c = &c
	p.replica = i
	p.dir, p.nodeDir = b.casedir, filepath.Join(b.casedir, "node")
	if c.Replicas > 1 {
		p.label = fmt.Sprintf("r%d", i)
		p.dir = filepath.Join(b.casedir, p.label)
		c.Pod.Metadata.Name = replicaName(b.c.Pod.Metadata.Name, i)
		c.Pod.Metadata.UID = replicaUID(b.c.Pod.Metadata.UID, i)
	}
	p.hostNet = c.Pod.Spec.HostNetwork
	p.nodeIP = nodeIP
	if p.hostNet && i > 0 {
		c.NodeName = fmt.Sprintf("%s-%d", b.c.NodeName, i)
		p.nodeIP = nodeIPFor(i)
		p.nodeDir = filepath.Join(b.casedir, fmt.Sprintf("node-%d", i))
	}
	p.podIP = podIPFor(i)
	p.hostname = c.Pod.Spec.Hostname
	if p.hostname == "" {
		p.hostname = c.Pod.Metadata.Name
	}
	if len(p.hostname) > 63 {
		p.hostname = strings.TrimRight(p.hostname[:63], "-.")
	}
	if p.hostNet {
		p.podIP = p.nodeIP
		p.hostname = c.NodeName
	}
	var err error
	if !p.hostNet || i == 0 {
		// The pod sandbox exists even for hostNetwork pods: the veth pair is
		// what makes tailscaled see a usable network in the node namespace.
		// The first pod's node-side veth carries the node's address and /24;
		// the others are routed (with proxy ARP) next to it.
		cidr := ""
		if i == 0 {
			cidr = nodeIP + netBits
		}
		if p.sb, err = startSandbox(p.self, "pod", p.hostname, kubeSock, sysctls, podIPFor(i), fmt.Sprintf("veth%d", i), cidr); err != nil {
			return nil, err
		}
		if i == 0 && c.Replicas > 1 {
			if err := proxyARP("veth0"); err != nil {
				return nil, err
			}
		}
	} else {
		if p.nodeSB, err = startSandbox(p.self, "pod", c.NodeName, kubeSock, "", p.nodeIP, fmt.Sprintf("node%d", i), ""); err != nil {
			return nil, err
		}
	}
	return &p, nil
}

// prepare materialises the pod's volumes and files; a volume the kubelet
// could not mount is the pod's outcome (config-error).
func (p *pod) prepare() (*Outcome, error) {
	if err := p.prepareVolumes(); err != nil {
		var ce *configError
		if !errors.As(err, &ce) {
			return nil, err
		}
		name := ""
		if len(p.c.Containers) > 0 {
			name = p.c.Containers[0]
		}
		return &Outcome{Outcome: OutConfigError, Container: name, Detail: err.Error(), LastLines: []string{}, Containers: []CtrOutcome{}}, nil
	}
	if err := p.podFiles(); err != nil {
		return nil, err
	}
	var err error
	if p.saDir, err = p.serviceAccountDir(); err != nil {
		return nil, err
	}
	p.t0 = time.Now() // the timeout covers the pod, not the harness set-up
	return nil, nil
}

// nodeSighting is one answer of `tailscale status --json` (Self).
type nodeSighting struct {
	key, id, ip, host, state string
}

// replicaSet runs the replicas and keeps what was seen of them.
type replicaSet struct {
	pods  []*pod
	lives []*podLife
	// seen[i][container]: the tailnet identities replica i's container
	// presented, in order.
	seen []map[string][]nodeSighting
	// hosts[node key]: the host names the control server had for the
	// node, at each sample (consecutive repeats left out).
	hosts map[string][]string
}

// runReplicas runs every replica as lifecycle runs one pod: replica 0 up and
// judged, then replica 1 while 0 keeps running, and so on; then all of them
// are watched for replicaWindow and their tailnet identities compared;
// restarts restart each replica in turn (then they are watched again).
func runReplicas(pods []*pod) *Outcome {
	s := &replicaSet{pods: pods, hosts: map[string][]string{}}
	completed := 0
	for i, p := range pods {
		l := p.newLife()
		s.lives = append(s.lives, l)
		s.seen = append(s.seen, map[string][]nodeSighting{})
		o, err := p.prepare()
		if err != nil {
			return p.fail(err)
		}
		if o == nil {
			o = l.start()
		}
		if o != nil {
			if o.Outcome == OutCompleted {
				completed++
				continue
			}
			return s.merge(i, o)
		}
		if o := s.checkRunning(i, fmt.Sprintf("after it was ready (seen once pod %s was up)", p.c.Pod.Metadata.Name)); o != nil {
			return o
		}
	}
	if completed == len(pods) {
		return s.merge(-1, &Outcome{Outcome: OutCompleted, LastLines: []string{}})
	}
	if o := s.watch(); o != nil {
		return o
	}
	restarts := pods[0].c.Restarts
	for n := 1; n <= restarts; n++ {
		for i, l := range s.lives {
			if o := l.restart(n); o != nil {
				return s.merge(i, o)
			}
			if o := s.checkRunning(-1, fmt.Sprintf("after it was ready (seen once pod %s was restarted, restart %d)", pods[i].c.Pod.Metadata.Name, n)); o != nil {
				return o
			}
		}
	}
	if restarts > 0 {
		if o := s.watch(); o != nil {
			return o
		}
	}
	if o := s.sharedNode(); o != nil {
		return o
	}
	for i, l := range s.lives {
		if l.misbehaving != nil {
			return s.merge(i, l.end())
		}
	}
	out := s.merge(-1, &Outcome{Outcome: OutReady, LastLines: []string{}})
	out.Detail = s.summary()
	return out
}

// merge turns replica i's outcome o (i < 0: the workload's) into the case's:
// every replica's containers, named <container>/r<i>, and o's detail
// prefixed with the replica and its pod.
func (s *replicaSet) merge(i int, o *Outcome) *Outcome {
	out := *o
	out.Containers = []CtrOutcome{}
	for j, l := range s.lives {
		cs := l.containers()
		if j == i {
			cs = o.Containers
		}
		for _, co := range cs {
			co.Name += "/" + l.p.label
			out.Containers = append(out.Containers, co)
		}
	}
	if i >= 0 && out.Detail != "" {
		out.Detail = fmt.Sprintf("replica %d (pod %s): %s", i, s.pods[i].c.Pod.Metadata.Name, out.Detail)
	}
	if out.LastLines == nil {
		out.LastLines = []string{}
	}
	return &out
}

// checkRunning reports a long-running container of a replica other than
// skip that has exited meanwhile (e.g. when another replica took its node
// over).
func (s *replicaSet) checkRunning(skip int, why string) *Outcome {
	for j, l := range s.lives {
		if j == skip {
			continue
		}
		for _, r := range l.runs {
			if r.exited() {
				v := l.p.exitedVerdict(r, why)
				l.record(r, OutExited)
				return s.merge(j, l.finish(v, OutExited))
			}
		}
	}
	return nil
}

// watch keeps every replica running for replicaWindow and asks each one's
// Tailscale containers for their tailnet identity every replicaSample.
func (s *replicaSet) watch() *Outcome {
	end := time.Now().Add(replicaWindow)
	for {
		for j, l := range s.lives {
			for _, r := range l.runs {
				if !r.plan.tailscale() || r.exited() {
					continue
				}
				st, err := l.p.status(r)
				if err != nil {
					l.p.logf("%s%s: status: %v", l.p.filePrefix(), r.plan.name, err)
				}
				if st == nil || st.Self == nil {
					continue
				}
				sg := nodeSighting{key: st.Self.PublicKey, id: st.Self.ID, ip: firstIPv4(st.Self.TailscaleIPs), host: st.Self.HostName, state: st.BackendState}
				l.p.logf("%s%s: tailnet node %s %s %s host %q %s", l.p.filePrefix(), r.plan.name, sg.ip, sg.key, sg.id, sg.host, sg.state)
				s.seen[j][r.plan.name] = append(s.seen[j][r.plan.name], sg)
				if co := l.res[r.plan.name]; co != nil {
					co.TailnetIP, co.NodeKey = sg.ip, sg.key
				}
			}
		}
		s.sampleControl()
		if o := s.checkRunning(-1, fmt.Sprintf("after it was ready (seen while all %d replicas ran)", len(s.pods))); o != nil {
			return o
		}
		if !time.Now().Before(end) {
			return nil
		}
		time.Sleep(min(replicaSample, time.Until(end)))
	}
}

// sampleControl records the host name the control server has for each node
// (a node shared by replicas changes it whenever another one reconnects).
func (s *replicaSet) sampleControl() {
	for _, n := range s.pods[0].cp.srv.AllNodes() {
		k := n.Key.String()
		h := n.Hostinfo.Hostname()
		if l := s.hosts[k]; len(l) == 0 || l[len(l)-1] != h {
			s.hosts[k] = append(s.hosts[k], h)
		}
	}
}

// sharedNode compares the identities the replicas presented: two replicas
// whose container showed the same node key, stable node ID or tailnet IP are
// one tailnet node.
func (s *replicaSet) sharedNode() *Outcome {
	names := map[string]bool{}
	for _, seen := range s.seen {
		for n := range seen {
			names[n] = true
		}
	}
	var ctrs []string
	for n := range names {
		ctrs = append(ctrs, n)
	}
	sort.Strings(ctrs)
	for _, name := range ctrs {
		for b := 1; b < len(s.seen); b++ {
			for a := 0; a < b; a++ {
				same, how, key := sameNode(s.seen[a][name], s.seen[b][name])
				if !same {
					continue
				}
				// Every replica on that node: a, b and later ones like b.
				group := []int{a, b}
				for c := b + 1; c < len(s.seen); c++ {
					if ok, _, _ := sameNode(s.seen[a][name], s.seen[c][name]); ok {
						group = append(group, c)
					}
				}
				var names []string
				for _, j := range group {
					names = append(names, s.pods[j].c.Pod.Metadata.Name)
					if co := s.lives[j].res[name]; co != nil {
						co.Outcome = OutMisbehaving
					}
				}
				list := strings.Join(names[:len(names)-1], ", ") + " and " + names[len(names)-1]
				detail := fmt.Sprintf("replicas %s share one tailnet node (%s)", list, how)
				if where := s.lives[a].stateWhere(name); where != "" {
					detail += ": " + where
				}
				detail += "; " + s.controlView()
				if h := s.hosts[key]; len(h) > 1 {
					detail += fmt.Sprintf("; the node's host name there changed while they ran (%s)", strings.Join(h, " -> "))
				}
				out := s.merge(-1, &Outcome{Outcome: OutMisbehaving, Container: name, Detail: detail, LastLines: []string{}})
				for _, r := range s.lives[b].runs {
					if r.plan.name == name {
						out.LastLines = r.lastLines(lastLinesSent)
					}
				}
				return out
			}
		}
	}
	return nil
}

// sameNode reports whether two series of sightings show one node, how, and
// its node key.
func sameNode(x, y []nodeSighting) (bool, string, string) {
	for _, a := range x {
		for _, b := range y {
			switch {
			case a.key != "" && a.key == b.key:
				return true, fmt.Sprintf("%s, %s", orDash(a.ip), a.key), a.key
			case a.id != "" && a.id == b.id:
				return true, fmt.Sprintf("%s, node ID %s", orDash(a.ip), a.id), a.key
			case a.ip != "" && a.ip == b.ip:
				return true, fmt.Sprintf("%s; node keys %s and %s", a.ip, orDash(a.key), orDash(b.key)), a.key
			}
		}
	}
	return false, "", ""
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// controlView says how many nodes the control server registered besides
// the peers: what the tailnet's admin would see for these replicas.
func (s *replicaSet) controlView() string {
	p := s.pods[0]
	peerKeys := map[string]bool{}
	for _, pn := range p.peers {
		peerKeys[pn.nodeKey] = true
	}
	var ips []string
	for _, n := range p.cp.srv.AllNodes() {
		if peerKeys[n.Key.String()] {
			continue
		}
		ip := "-"
		for _, a := range n.Addresses {
			if a.Addr().Is4() {
				ip = a.Addr().String()
			}
		}
		ips = append(ips, ip)
	}
	noun := "nodes"
	if len(ips) == 1 {
		noun = "node"
	}
	return fmt.Sprintf("the control server registered %d %s (%s) for %d replicas", len(ips), noun, strings.Join(ips, ", "), len(s.pods))
}

// summary describes the distinct tailnet nodes of a ready workload.
func (s *replicaSet) summary() string {
	var parts []string
	for j, seen := range s.seen {
		var names []string
		for n := range seen {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			sg := seen[n]
			if len(sg) == 0 {
				continue
			}
			last := sg[len(sg)-1]
			parts = append(parts, fmt.Sprintf("%s/%s %s", s.pods[j].c.Pod.Metadata.Name, n, orDash(last.ip)))
		}
	}
	if len(parts) == 0 {
		return fmt.Sprintf("%d replicas ready (no tailnet identity to compare)", len(s.pods))
	}
	return fmt.Sprintf("%d replicas, distinct tailnet nodes: %s; %s", len(s.pods), strings.Join(parts, ", "), s.controlView())
}

// stateWhere says where container name keeps its state, as containerboot
// decides it: the state Secret (TS_KUBE_SECRET, default "tailscale" in a
// pod), else TS_STATE_DIR and the volume under it.
func (l *podLife) stateWhere(name string) string {
	var pl *ctrPlan
	for _, x := range l.plans {
		if x.name == name {
			pl = x
		}
	}
	if pl == nil || !pl.boot {
		return "their state is shared"
	}
	env := pl.env
	ks, ok := env.get("TS_KUBE_SECRET")
	if host, _ := env.get("KUBERNETES_SERVICE_HOST"); !ok && host != "" {
		ks = "tailscale"
	}
	if ks != "" {
		ns := l.p.c.Pod.Metadata.Namespace
		if l.p.c.Kube != nil && l.p.c.Kube.Namespace != "" {
			ns = l.p.c.Kube.Namespace
		}
		return fmt.Sprintf("their state lives in one Secret %q (namespace %s)", ks, ns)
	}
	dir, _ := env.get("TS_STATE_DIR")
	if dir == "" {
		return "their state is shared"
	}
	dir = path.Clean("/" + dir)
	var best *VolumeMount
	for i := range pl.c.VolumeMounts {
		vm := &pl.c.VolumeMounts[i]
		mp := path.Clean("/" + vm.MountPath)
		if (dir == mp || strings.HasPrefix(dir, strings.TrimSuffix(mp, "/")+"/")) && (best == nil || len(mp) > len(path.Clean("/"+best.MountPath))) {
			best = vm
		}
	}
	if best == nil {
		return fmt.Sprintf("their state lives in one directory (TS_STATE_DIR %s)", dir)
	}
	for _, v := range l.p.c.Pod.Spec.Volumes {
		if v.Name != best.Name {
			continue
		}
		if v.HostPath != nil {
			return fmt.Sprintf("their state lives in one directory (TS_STATE_DIR %s: hostPath %s of node %s)", dir, v.HostPath.Path, l.p.c.NodeName)
		}
		return fmt.Sprintf("their state lives in one directory (TS_STATE_DIR %s: volume %q)", dir, v.Name)
	}
	return fmt.Sprintf("their state lives in one directory (TS_STATE_DIR %s)", dir)
}

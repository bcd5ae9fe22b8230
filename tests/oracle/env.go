package main

import (
	"bufio"
	"fmt"
	"math/big"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
)

// imagePath is the PATH of the tailscale/tailscale image (Alpine).
const imagePath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// expandRefs applies the Kubernetes $(VAR) reference syntax to s, as the
// kubelet does for env values, command and args:
//   - $(NAME) becomes the value of NAME when lookup knows it, and is kept
//     verbatim otherwise;
//   - $$ becomes a single $ (so $$(NAME) yields the literal text $(NAME));
//   - a $( without a closing parenthesis, a $ before any other character and
//     a trailing $ are copied unchanged.
func expandRefs(s string, lookup func(string) (string, bool)) string {
	if !strings.Contains(s, "$") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 == len(s) {
			b.WriteByte(s[i])
			continue
		}
		next := s[i+1]
		switch next {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			closeAt := strings.IndexByte(s[i+2:], ')')
			if closeAt < 0 {
				// Incomplete reference: copy "$(" and go on after it.
				b.WriteString("$(")
				i++
				continue
			}
			name := s[i+2 : i+2+closeAt]
			if v, ok := lookup(name); ok {
				b.WriteString(v)
			} else {
				b.WriteString("$(" + name + ")")
			}
			i += 2 + closeAt
		default:
			b.WriteByte('$')
		}
	}
	return b.String()
}

// envList is an ordered environment with last-write-wins semantics.
type envList struct {
	names []string
	vals  map[string]string
}

func newEnvList() *envList { return &envList{vals: map[string]string{}} }

func (e *envList) set(k, v string) {
	if _, ok := e.vals[k]; !ok {
		e.names = append(e.names, k)
	}
	e.vals[k] = v
}

func (e *envList) get(k string) (string, bool) {
	v, ok := e.vals[k]
	return v, ok
}

func (e *envList) environ() []string {
	out := make([]string, 0, len(e.names))
	for _, k := range e.names {
		out = append(out, k+"="+e.vals[k])
	}
	return out
}

// configError is the kubelet's CreateContainerConfigError.
type configError struct{ msg string }

func (e *configError) Error() string { return e.msg }

func cfgErr(format string, a ...any) error { return &configError{fmt.Sprintf(format, a...)} }

// podEnv holds the pod-level facts the kubelet uses to build container environments.
type podEnv struct {
	c        *Case
	podIP    string
	hostIP   string
	kubeHost string
	kubePort string
}

func isTrue(b *bool) bool { return b != nil && *b }

// objectKeys returns the data of a Secret or ConfigMap ("secret/NAME" or
// "configmap/NAME") known to the case, and whether the object exists.
func (p *podEnv) objectKeys(kind, name string) (map[string]string, bool) {
	ref := kind + "/" + name
	data := map[string]string{}
	exists := false
	if m, ok := p.c.EnvFrom[ref]; ok {
		exists = true
		for k, v := range m {
			data[k] = v
		}
	}
	prefix := ref + "/"
	for k, v := range p.c.Values {
		if strings.HasPrefix(k, prefix) {
			exists = true
			data[strings.TrimPrefix(k, prefix)] = v
		}
	}
	return data, exists
}

func kindTitle(kind string) string {
	if kind == "secret" {
		return "Secret"
	}
	return "ConfigMap"
}

// keyRef resolves a secretKeyRef/configMapKeyRef. ok=false with a nil error
// means: optional and absent, do not set the variable.
func (p *podEnv) keyRef(kind string, sel *KeySelector) (string, bool, error) {
	data, exists := p.objectKeys(kind, sel.Name)
	if !exists {
		if isTrue(sel.Optional) {
			return "", false, nil
		}
		return "", false, cfgErr("%s %q not found", kind, sel.Name)
	}
	v, ok := data[sel.Key]
	if !ok {
		if isTrue(sel.Optional) {
			return "", false, nil
		}
		return "", false, cfgErr("couldn't find key %s in %s %s/%s", sel.Key, kindTitle(kind), p.c.Pod.Metadata.Namespace, sel.Name)
	}
	return v, true, nil
}

// serviceEnv is what the kubelet adds for the "kubernetes" master service.
func (p *podEnv) serviceEnv() *envList {
	e := newEnvList()
	h, port := p.kubeHost, p.kubePort
	e.set("KUBERNETES_SERVICE_HOST", h)
	e.set("KUBERNETES_SERVICE_PORT", port)
	e.set("KUBERNETES_SERVICE_PORT_HTTPS", port)
	e.set("KUBERNETES_PORT", "tcp://"+h+":"+port)
	e.set("KUBERNETES_PORT_"+port+"_TCP", "tcp://"+h+":"+port)
	e.set("KUBERNETES_PORT_"+port+"_TCP_PROTO", "tcp")
	e.set("KUBERNETES_PORT_"+port+"_TCP_PORT", port)
	e.set("KUBERNETES_PORT_"+port+"_TCP_ADDR", h)
	return e
}

// fieldValue resolves a downward-API fieldPath.
func (p *podEnv) fieldValue(path string) (string, error) {
	m := &p.c.Pod.Metadata
	switch path {
	case "metadata.name":
		return m.Name, nil
	case "metadata.namespace":
		return m.Namespace, nil
	case "metadata.uid":
		return m.UID, nil
	case "spec.nodeName":
		return p.c.NodeName, nil
	case "spec.serviceAccountName":
		return p.c.Pod.Spec.ServiceAccountName, nil
	case "status.hostIP", "status.hostIPs":
		return p.hostIP, nil
	case "status.podIP", "status.podIPs":
		return p.podIP, nil
	case "metadata.labels":
		return formatMap(m.Labels), nil
	case "metadata.annotations":
		return formatMap(m.Annotations), nil
	}
	for _, f := range []struct {
		prefix string
		m      map[string]string
	}{{"metadata.labels", m.Labels}, {"metadata.annotations", m.Annotations}} {
		if strings.HasPrefix(path, f.prefix+"['") && strings.HasSuffix(path, "']") {
			key := path[len(f.prefix)+2 : len(path)-2]
			return f.m[key], nil
		}
	}
	return "", cfgErr("unsupported fieldRef fieldPath %q", path)
}

// formatMap renders labels/annotations the way a downwardAPI volume file does.
func formatMap(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte('\n')
		}
		fmt.Fprintf(&b, "%s=%q", k, m[k])
	}
	return b.String()
}

// resourceValue resolves a resourceFieldRef for container c.
func (p *podEnv) resourceValue(c *Container, ref *ResourceFieldRef) (string, error) {
	if ref.ContainerName != "" && ref.ContainerName != c.Name {
		if oc, _, ok := p.c.Pod.Spec.find(ref.ContainerName); ok {
			c = oc
		} else {
			return "", cfgErr("resourceFieldRef: container %q not found", ref.ContainerName)
		}
	}
	kind, res, ok := strings.Cut(ref.Resource, ".")
	if !ok || (kind != "limits" && kind != "requests") {
		return "", cfgErr("unsupported resourceFieldRef resource %q", ref.Resource)
	}
	divisor := big.NewRat(1, 1)
	if ref.Divisor != nil && ref.Divisor.String() != "" && ref.Divisor.String() != "0" {
		d, err := parseQuantity(ref.Divisor.String())
		if err != nil || d.Sign() <= 0 {
			return "", cfgErr("bad divisor %q", ref.Divisor.String())
		}
		divisor = d
	}
	var q *big.Rat
	lookup := func(m map[string]IntOrString) *big.Rat {
		if v, ok := m[res]; ok {
			if r, err := parseQuantity(v.String()); err == nil {
				return r
			}
		}
		return nil
	}
	if kind == "limits" {
		q = lookup(c.Resources.Limits)
		if q == nil {
			q = nodeAllocatable(res) // the kubelet's default for an unset limit
		}
	} else {
		q = lookup(c.Resources.Requests)
		if q == nil {
			q = lookup(c.Resources.Limits) // requests default to limits
		}
		if q == nil {
			q = new(big.Rat)
		}
	}
	v := new(big.Rat).Quo(q, divisor)
	// ceil
	n := new(big.Int).Quo(v.Num(), v.Denom())
	if new(big.Rat).SetInt(n).Cmp(v) < 0 {
		n.Add(n, big.NewInt(1))
	}
	return n.String(), nil
}

func nodeAllocatable(res string) *big.Rat {
	switch res {
	case "cpu":
		return big.NewRat(int64(runtime.NumCPU()), 1)
	case "memory":
		if f, err := os.Open("/proc/meminfo"); err == nil {
			defer f.Close()
			s := bufio.NewScanner(f)
			for s.Scan() {
				fields := strings.Fields(s.Text())
				if len(fields) >= 2 && fields[0] == "MemTotal:" {
					if kb, err := strconv.ParseInt(fields[1], 10, 64); err == nil {
						return big.NewRat(kb*1024, 1)
					}
				}
			}
		}
		return big.NewRat(8<<30, 1)
	case "ephemeral-storage":
		return big.NewRat(100<<30, 1)
	}
	return new(big.Rat)
}

// parseQuantity parses a Kubernetes resource quantity ("500m", "1Gi", "2", "1e3").
func parseQuantity(s string) (*big.Rat, error) {
	s = strings.TrimSpace(s)
	i := 0
	if i < len(s) && (s[i] == '+' || s[i] == '-') {
		i++
	}
	for i < len(s) && (s[i] >= '0' && s[i] <= '9' || s[i] == '.') {
		i++
	}
	num, suffix := s[:i], s[i:]
	r, ok := new(big.Rat).SetString(num)
	if !ok {
		return nil, fmt.Errorf("bad quantity %q", s)
	}
	mul := func(base, exp int64) *big.Rat {
		return new(big.Rat).SetInt(new(big.Int).Exp(big.NewInt(base), big.NewInt(exp), nil))
	}
	var f *big.Rat
	switch suffix {
	case "":
		f = big.NewRat(1, 1)
	case "n":
		f = new(big.Rat).Inv(mul(10, 9))
	case "u":
		f = new(big.Rat).Inv(mul(10, 6))
	case "m":
		f = new(big.Rat).Inv(mul(10, 3))
	case "k":
		f = mul(10, 3)
	case "M":
		f = mul(10, 6)
	case "G":
		f = mul(10, 9)
	case "T":
		f = mul(10, 12)
	case "P":
		f = mul(10, 15)
	case "E":
		f = mul(10, 18)
	case "Ki":
		f = mul(2, 10)
	case "Mi":
		f = mul(2, 20)
	case "Gi":
		f = mul(2, 30)
	case "Ti":
		f = mul(2, 40)
	case "Pi":
		f = mul(2, 50)
	case "Ei":
		f = mul(2, 60)
	default:
		if suffix[0] == 'e' || suffix[0] == 'E' {
			e, err := strconv.ParseInt(suffix[1:], 10, 32)
			if err != nil {
				return nil, fmt.Errorf("bad quantity %q", s)
			}
			if e >= 0 {
				f = mul(10, e)
			} else {
				f = new(big.Rat).Inv(mul(10, -e))
			}
		} else {
			return nil, fmt.Errorf("bad quantity %q", s)
		}
	}
	return r.Mul(r, f), nil
}

// containerEnv builds the environment the kubelet would give container c:
// the "kubernetes" service variables, envFrom, then env in order with $(VAR)
// expansion over what is defined so far. It returns the container's variables
// (what command/args may reference).
func (p *podEnv) containerEnv(c *Container) (*envList, error) {
	svc := p.serviceEnv()
	tmp := newEnvList() // envFrom + env, in definition order
	for _, src := range c.EnvFrom {
		var kind string
		var ref *LocalObjRef
		switch {
		case src.ConfigMapRef != nil:
			kind, ref = "configmap", src.ConfigMapRef
		case src.SecretRef != nil:
			kind, ref = "secret", src.SecretRef
		default:
			continue
		}
		data, exists := p.objectKeys(kind, ref.Name)
		if !exists {
			if isTrue(ref.Optional) {
				continue
			}
			return nil, cfgErr("%s %q not found", kind, ref.Name)
		}
		keys := make([]string, 0, len(data))
		for k := range data {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			name := src.Prefix + k
			if name == "" || strings.Contains(name, "=") {
				continue // the kubelet skips keys that are not valid variable names
			}
			tmp.set(name, data[k])
		}
	}
	lookup := func(name string) (string, bool) {
		if v, ok := tmp.get(name); ok {
			return v, true
		}
		return svc.get(name)
	}
	for _, ev := range c.Env {
		if ev.ValueFrom == nil {
			tmp.set(ev.Name, expandRefs(ev.Value, lookup))
			continue
		}
		vf := ev.ValueFrom
		var v string
		var err error
		set := true
		switch {
		case vf.FieldRef != nil:
			v, err = p.fieldValue(vf.FieldRef.FieldPath)
		case vf.ResourceFieldRef != nil:
			v, err = p.resourceValue(c, vf.ResourceFieldRef)
		case vf.SecretKeyRef != nil:
			v, set, err = p.keyRef("secret", vf.SecretKeyRef)
		case vf.ConfigMapKeyRef != nil:
			v, set, err = p.keyRef("configmap", vf.ConfigMapKeyRef)
		default:
			v = ""
		}
		if err != nil {
			return nil, err
		}
		if set {
			tmp.set(ev.Name, v)
		}
	}
	out := newEnvList()
	for _, k := range svc.names {
		if _, ok := tmp.get(k); !ok {
			out.set(k, svc.vals[k])
		}
	}
	for _, k := range tmp.names {
		out.set(k, tmp.vals[k])
	}
	return out, nil
}

// expandArgs applies $(VAR) expansion to command/args over the container env.
func expandArgs(args []string, env *envList) []string {
	if args == nil {
		return nil
	}
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = expandRefs(a, env.get)
	}
	return out
}

// rewriteIP replaces every occurrence of the address from in s by to, where
// the occurrence is not part of a longer dotted number.
func rewriteIP(s, from, to string) string {
	if from == "" || !strings.Contains(s, from) {
		return s
	}
	isDigit := func(b byte) bool { return b >= '0' && b <= '9' }
	var b strings.Builder
	for i := 0; i < len(s); {
		j := strings.Index(s[i:], from)
		if j < 0 {
			b.WriteString(s[i:])
			break
		}
		j += i
		end := j + len(from)
		ok := true
		if j > 0 && (isDigit(s[j-1]) || s[j-1] == '.' && j > 1 && isDigit(s[j-2])) {
			ok = false
		}
		if end < len(s) && (isDigit(s[end]) || s[end] == '.' && end+1 < len(s) && isDigit(s[end+1])) {
			ok = false
		}
		b.WriteString(s[i:j])
		if ok {
			b.WriteString(to)
		} else {
			b.WriteString(from)
		}
		i = end
	}
	return b.String()
}

// withLoginServer returns TS_EXTRA_ARGS with any --login-server removed and
// --login-server=url appended.
func withLoginServer(extra, url string) string {
	f := strings.Fields(extra)
	out := make([]string, 0, len(f)+1)
	for i := 0; i < len(f); i++ {
		a := f[i]
		bare := strings.TrimLeft(a, "-")
		if len(a)-len(bare) >= 1 && len(a)-len(bare) <= 2 {
			if bare == "login-server" {
				i++ // "--login-server URL": drop the value too
				continue
			}
			if strings.HasPrefix(bare, "login-server=") {
				continue
			}
		}
		out = append(out, a)
	}
	out = append(out, "--login-server="+url)
	return strings.Join(out, " ")
}

// exitNodeArg returns the value of --exit-node in TS_EXTRA_ARGS, if any.
func exitNodeArg(extra string) string {
	f := strings.Fields(extra)
	val := ""
	for i := 0; i < len(f); i++ {
		bare := strings.TrimLeft(f[i], "-")
		if n := len(f[i]) - len(bare); n < 1 || n > 2 {
			continue
		}
		if bare == "exit-node" && i+1 < len(f) {
			val = f[i+1]
			i++
		} else if v, ok := strings.CutPrefix(bare, "exit-node="); ok {
			val = v
		}
	}
	return val
}

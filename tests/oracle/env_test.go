package main

import (
	"slices"
	"testing"
)

func TestExpandRefs(t *testing.T) {
	vars := map[string]string{"A": "alpha", "B": "$(A)", "EMPTY": ""}
	lookup := func(n string) (string, bool) { v, ok := vars[n]; return v, ok }
	for _, tc := range []struct{ in, want string }{
		{"plain", "plain"},
		{"$(A)", "alpha"},
		{"x$(A)y$(A)", "xalphayalpha"},
		{"$(MISSING)", "$(MISSING)"},
		{"--hostname=$(NODE_NAME)", "--hostname=$(NODE_NAME)"},
		{"$$(A)", "$(A)"},
		{"$$$(A)", "$alpha"},
		{"$$", "$"},
		{"$", "$"},
		{"a$", "a$"},
		{"$A", "$A"},
		{"${A}", "${A}"},
		{"$(A", "$(A"},
		{"$(", "$("},
		{"$()", "$()"},
		{"$(B)", "$(A)"}, // values are not expanded again
		{"$(EMPTY)x", "x"},
		{"é$(A)é", "éalphaé"},
	} {
		if got := expandRefs(tc.in, lookup); got != tc.want {
			t.Errorf("expandRefs(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestContainerEnvOrder(t *testing.T) {
	c := &Case{Values: map[string]string{"secret/s/k": "key"}, EnvFrom: map[string]map[string]string{"configmap/cm": {"X": "fromcm"}}}
	c.defaults()
	p := &podEnv{c: c, podIP: "198.18.0.2", hostIP: "198.18.0.1", kubeHost: "10.96.0.1", kubePort: "443"}
	ctr := &Container{
		Name:    "t",
		EnvFrom: []EnvFromSource{{Prefix: "P_", ConfigMapRef: &LocalObjRef{Name: "cm"}}},
		Env: []EnvVar{
			{Name: "EARLY", Value: "$(LATE)-$(P_X)-$(KUBERNETES_SERVICE_HOST)"},
			{Name: "LATE", Value: "late"},
			{Name: "IP", ValueFrom: &EnvVarSource{FieldRef: &FieldRef{FieldPath: "status.podIP"}}},
			{Name: "USE", Value: "$(IP):9002 $(LATE)"},
			{Name: "KEY", ValueFrom: &EnvVarSource{SecretKeyRef: &KeySelector{Name: "s", Key: "k"}}},
			{Name: "OPT", ValueFrom: &EnvVarSource{SecretKeyRef: &KeySelector{Name: "s", Key: "nope", Optional: ptrTo(true)}}},
		},
	}
	env, err := p.containerEnv(ctr)
	if err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]string{
		"EARLY": "$(LATE)-fromcm-10.96.0.1",
		"USE":   "198.18.0.2:9002 late",
		"KEY":   "key",
		"P_X":   "fromcm",
	} {
		if got, _ := env.get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if _, ok := env.get("OPT"); ok {
		t.Errorf("optional missing key was set")
	}
	ctr.Env = append(ctr.Env, EnvVar{Name: "BAD", ValueFrom: &EnvVarSource{SecretKeyRef: &KeySelector{Name: "gone", Key: "k"}}})
	if _, err := p.containerEnv(ctr); err == nil || err.Error() != `secret "gone" not found` {
		t.Errorf("missing secret: err = %v", err)
	}
}

func ptrTo[T any](v T) *T { return &v }

func TestArgsHelpers(t *testing.T) {
	if got := withLoginServer("--hostname=a --login-server https://x --accept-routes", "http://c"); got != "--hostname=a --accept-routes --login-server=http://c" {
		t.Errorf("withLoginServer = %q", got)
	}
	if got := withLoginServer("", "http://c"); got != "--login-server=http://c" {
		t.Errorf("withLoginServer empty = %q", got)
	}
	if got := exitNodeArg("--foo --exit-node=100.1.2.3 --bar"); got != "100.1.2.3" {
		t.Errorf("exitNodeArg = %q", got)
	}
	if got := exitNodeArg("--exit-node tethys"); got != "tethys" {
		t.Errorf("exitNodeArg = %q", got)
	}
	if got := exitNodeArg("--exit-node-allow-lan-access"); got != "" {
		t.Errorf("exitNodeArg = %q", got)
	}
	if got := rewriteIP("--exit-node=100.121.150.65 x100.121.150.650 1100.121.150.65", "100.121.150.65", "100.64.0.1"); got != "--exit-node=100.64.0.1 x100.121.150.650 1100.121.150.65" {
		t.Errorf("rewriteIP = %q", got)
	}
}

func TestQuantity(t *testing.T) {
	c := &Case{}
	c.defaults()
	p := &podEnv{c: c}
	ctr := &Container{Name: "t", Resources: ResourceRequirements{
		Limits:   map[string]IntOrString{"cpu": {Str: "500m"}, "memory": {Str: "1Gi"}},
		Requests: map[string]IntOrString{"cpu": {Str: "250m"}},
	}}
	for _, tc := range []struct {
		res, div, want string
	}{
		{"limits.cpu", "", "1"},
		{"limits.cpu", "1m", "500"},
		{"requests.cpu", "1m", "250"},
		{"limits.memory", "", "1073741824"},
		{"limits.memory", "1Mi", "1024"},
		{"requests.memory", "1Mi", "1024"},
	} {
		ref := &ResourceFieldRef{Resource: tc.res}
		if tc.div != "" {
			ref.Divisor = &IntOrString{Str: tc.div}
		}
		got, err := p.resourceValue(ctr, ref)
		if err != nil || got != tc.want {
			t.Errorf("%s/%s = %q, %v; want %q", tc.res, tc.div, got, err, tc.want)
		}
	}
}

func TestCapabilitySet(t *testing.T) {
	got := capabilitySet("cri-o", &SecurityContext{Capabilities: &Capabilities{Drop: []string{"ALL"}, Add: []string{"net_admin", "CAP_NET_RAW"}}})
	if !slices.Equal(got, []string{"NET_ADMIN", "NET_RAW"}) {
		t.Errorf("drop ALL + add = %v", got)
	}
	got = capabilitySet("containerd", &SecurityContext{Capabilities: &Capabilities{Drop: []string{"MKNOD"}}})
	if slices.Contains(got, "MKNOD") || !slices.Contains(got, "NET_RAW") {
		t.Errorf("containerd - MKNOD = %v", got)
	}
}

package main

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// Case is the JSON document read from stdin by `tailguard-oracle run`.
type Case struct {
	Pod            Pod                          `json:"pod"`
	Containers     []string                     `json:"containers"`
	NodeName       string                       `json:"nodeName"`
	Values         map[string]string            `json:"values"`
	EnvFrom        map[string]map[string]string `json:"envFrom"`
	Runtime        string                       `json:"runtime"`
	Restarts       int                          `json:"restarts"`
	Replicas       int                          `json:"replicas"`
	Peers          []Peer                       `json:"peers"`
	Kube           *Kube                        `json:"kube"`
	TimeoutSeconds float64                      `json:"timeoutSeconds"`
	Traffic        *Traffic                     `json:"traffic"`
	// AuthKey, if set, is the only auth key the control server accepts.
	AuthKey string `json:"authKey"`
}

// Peer is a tailnet node the manifest refers to.
type Peer struct {
	IP                string `json:"ip"`
	Name              string `json:"name"`
	AdvertiseExitNode bool   `json:"advertiseExitNode"`
	Approved          bool   `json:"approved"`
}

// Kube describes a real kube-apiserver listening on the host's loopback.
type Kube struct {
	Server    string `json:"server"`
	Token     string `json:"token"`
	CAPEM     string `json:"caPEM"`
	Namespace string `json:"namespace"`
}

// Outcome is the JSON document written to stdout.
type Outcome struct {
	Outcome    string       `json:"outcome"`
	Container  string       `json:"container"`
	ExitCode   int          `json:"exitCode"`
	LastLines  []string     `json:"lastLines"`
	Detail     string       `json:"detail"`
	Containers []CtrOutcome `json:"containers"`
	Seconds    float64      `json:"seconds"`
	// Traffic: the requests of the case's "traffic", when the pod came up.
	Traffic []TrafficResult `json:"traffic"`
}

// CtrOutcome is the per-container part of an Outcome.
type CtrOutcome struct {
	Name          string  `json:"name"`
	Outcome       string  `json:"outcome"`
	ExitCode      int     `json:"exitCode"`
	TailnetIP     string  `json:"tailnetIP"`
	ExitNodeInUse string  `json:"exitNodeInUse"`
	Seconds       float64 `json:"seconds"`
	Pod           string  `json:"pod"`     // the pod (replica) it ran in
	NodeKey       string  `json:"nodeKey"` // tailscale status Self.PublicKey, when queried
}

// maxReplicas caps "replicas" (larger values run this many).
const maxReplicas = 3

// Outcome values.
const (
	OutReady         = "ready"
	OutCompleted     = "completed"
	OutExited        = "exited"
	OutProbeFailing  = "probe-failing"
	OutHung          = "hung"
	OutConfigError   = "config-error"
	OutRestartExited = "restart-exited"
	OutMisbehaving   = "misbehaving"
)

// The subset of the Kubernetes core/v1 Pod this oracle reads. Unknown fields
// are ignored.

type Pod struct {
	Metadata ObjectMeta `json:"metadata"`
	Spec     PodSpec    `json:"spec"`
}

type ObjectMeta struct {
	Name        string            `json:"name"`
	Namespace   string            `json:"namespace"`
	UID         string            `json:"uid"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
}

type PodSpec struct {
	InitContainers               []Container         `json:"initContainers"`
	Containers                   []Container         `json:"containers"`
	Volumes                      []Volume            `json:"volumes"`
	HostNetwork                  bool                `json:"hostNetwork"`
	Hostname                     string              `json:"hostname"`
	Subdomain                    string              `json:"subdomain"`
	NodeName                     string              `json:"nodeName"`
	ServiceAccountName           string              `json:"serviceAccountName"`
	DeprecatedServiceAccount     string              `json:"serviceAccount"`
	AutomountServiceAccountToken *bool               `json:"automountServiceAccountToken"`
	SecurityContext              *PodSecurityContext `json:"securityContext"`
	DNSPolicy                    string              `json:"dnsPolicy"`
	EnableServiceLinks           *bool               `json:"enableServiceLinks"`
	ShareProcessNamespace        *bool               `json:"shareProcessNamespace"`
}

type PodSecurityContext struct {
	RunAsUser          *int64   `json:"runAsUser"`
	RunAsGroup         *int64   `json:"runAsGroup"`
	RunAsNonRoot       *bool    `json:"runAsNonRoot"`
	SupplementalGroups []int64  `json:"supplementalGroups"`
	FSGroup            *int64   `json:"fsGroup"`
	Sysctls            []Sysctl `json:"sysctls"`
}

type Sysctl struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

type Container struct {
	Name            string               `json:"name"`
	Image           string               `json:"image"`
	Command         []string             `json:"command"`
	Args            []string             `json:"args"`
	WorkingDir      string               `json:"workingDir"`
	Ports           []ContainerPort      `json:"ports"`
	EnvFrom         []EnvFromSource      `json:"envFrom"`
	Env             []EnvVar             `json:"env"`
	Resources       ResourceRequirements `json:"resources"`
	VolumeMounts    []VolumeMount        `json:"volumeMounts"`
	StartupProbe    *Probe               `json:"startupProbe"`
	ReadinessProbe  *Probe               `json:"readinessProbe"`
	LivenessProbe   *Probe               `json:"livenessProbe"`
	SecurityContext *SecurityContext     `json:"securityContext"`
	RestartPolicy   string               `json:"restartPolicy"`
}

type ContainerPort struct {
	Name          string `json:"name"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol"`
}

type EnvFromSource struct {
	Prefix       string       `json:"prefix"`
	ConfigMapRef *LocalObjRef `json:"configMapRef"`
	SecretRef    *LocalObjRef `json:"secretRef"`
}

type LocalObjRef struct {
	Name     string `json:"name"`
	Optional *bool  `json:"optional"`
}

type EnvVar struct {
	Name      string        `json:"name"`
	Value     string        `json:"value"`
	ValueFrom *EnvVarSource `json:"valueFrom"`
}

type EnvVarSource struct {
	FieldRef         *FieldRef         `json:"fieldRef"`
	ResourceFieldRef *ResourceFieldRef `json:"resourceFieldRef"`
	ConfigMapKeyRef  *KeySelector      `json:"configMapKeyRef"`
	SecretKeyRef     *KeySelector      `json:"secretKeyRef"`
}

type FieldRef struct {
	FieldPath string `json:"fieldPath"`
}

type ResourceFieldRef struct {
	ContainerName string       `json:"containerName"`
	Resource      string       `json:"resource"`
	Divisor       *IntOrString `json:"divisor"`
}

type KeySelector struct {
	Name     string `json:"name"`
	Key      string `json:"key"`
	Optional *bool  `json:"optional"`
}

type ResourceRequirements struct {
	Limits   map[string]IntOrString `json:"limits"`
	Requests map[string]IntOrString `json:"requests"`
}

type VolumeMount struct {
	Name        string `json:"name"`
	MountPath   string `json:"mountPath"`
	SubPath     string `json:"subPath"`
	SubPathExpr string `json:"subPathExpr"`
	ReadOnly    bool   `json:"readOnly"`
}

type Volume struct {
	Name        string             `json:"name"`
	EmptyDir    *json.RawMessage   `json:"emptyDir"`
	HostPath    *HostPathSource    `json:"hostPath"`
	Secret      *SecretVolume      `json:"secret"`
	ConfigMap   *ConfigMapVolume   `json:"configMap"`
	Projected   *ProjectedVolume   `json:"projected"`
	DownwardAPI *DownwardAPIVolume `json:"downwardAPI"`
}

type HostPathSource struct {
	Path string `json:"path"`
	Type string `json:"type"`
}

type KeyToPath struct {
	Key  string `json:"key"`
	Path string `json:"path"`
	Mode *int32 `json:"mode"`
}

type SecretVolume struct {
	SecretName  string      `json:"secretName"`
	Items       []KeyToPath `json:"items"`
	DefaultMode *int32      `json:"defaultMode"`
	Optional    *bool       `json:"optional"`
}

type ConfigMapVolume struct {
	Name        string      `json:"name"`
	Items       []KeyToPath `json:"items"`
	DefaultMode *int32      `json:"defaultMode"`
	Optional    *bool       `json:"optional"`
}

type ProjectedVolume struct {
	Sources     []ProjectedSource `json:"sources"`
	DefaultMode *int32            `json:"defaultMode"`
}

type ProjectedSource struct {
	Secret              *SecretProjection    `json:"secret"`
	ConfigMap           *SecretProjection    `json:"configMap"`
	DownwardAPI         *DownwardAPIVolume   `json:"downwardAPI"`
	ServiceAccountToken *ServiceAccountToken `json:"serviceAccountToken"`
}

type SecretProjection struct {
	Name     string      `json:"name"`
	Items    []KeyToPath `json:"items"`
	Optional *bool       `json:"optional"`
}

type ServiceAccountToken struct {
	Path string `json:"path"`
}

type DownwardAPIVolume struct {
	Items       []DownwardAPIFile `json:"items"`
	DefaultMode *int32            `json:"defaultMode"`
}

type DownwardAPIFile struct {
	Path             string            `json:"path"`
	FieldRef         *FieldRef         `json:"fieldRef"`
	ResourceFieldRef *ResourceFieldRef `json:"resourceFieldRef"`
	Mode             *int32            `json:"mode"`
}

type Probe struct {
	Exec                *ExecAction      `json:"exec"`
	HTTPGet             *HTTPGetAction   `json:"httpGet"`
	TCPSocket           *TCPSocketAct    `json:"tcpSocket"`
	GRPC                *json.RawMessage `json:"grpc"`
	InitialDelaySeconds int              `json:"initialDelaySeconds"`
	TimeoutSeconds      int              `json:"timeoutSeconds"`
	PeriodSeconds       int              `json:"periodSeconds"`
	SuccessThreshold    int              `json:"successThreshold"`
	FailureThreshold    int              `json:"failureThreshold"`
}

type ExecAction struct {
	Command []string `json:"command"`
}

type HTTPGetAction struct {
	Path        string       `json:"path"`
	Port        IntOrString  `json:"port"`
	Host        string       `json:"host"`
	Scheme      string       `json:"scheme"`
	HTTPHeaders []HTTPHeader `json:"httpHeaders"`
}

type HTTPHeader struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

type TCPSocketAct struct {
	Port IntOrString `json:"port"`
	Host string      `json:"host"`
}

type SecurityContext struct {
	Privileged               *bool         `json:"privileged"`
	RunAsUser                *int64        `json:"runAsUser"`
	RunAsGroup               *int64        `json:"runAsGroup"`
	RunAsNonRoot             *bool         `json:"runAsNonRoot"`
	ReadOnlyRootFilesystem   *bool         `json:"readOnlyRootFilesystem"`
	AllowPrivilegeEscalation *bool         `json:"allowPrivilegeEscalation"`
	Capabilities             *Capabilities `json:"capabilities"`
}

type Capabilities struct {
	Add  []string `json:"add"`
	Drop []string `json:"drop"`
}

// IntOrString holds a JSON number or string (ports, quantities).
type IntOrString struct {
	IsInt bool
	Int   int64
	Str   string
}

func (v *IntOrString) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		v.IsInt = false
		return json.Unmarshal(b, &v.Str)
	}
	var f json.Number
	if err := json.Unmarshal(b, &f); err != nil {
		return err
	}
	if i, err := f.Int64(); err == nil {
		v.IsInt, v.Int = true, i
		return nil
	}
	// A non-integer number (e.g. a quantity written as 0.5): keep it as text.
	v.IsInt, v.Str = false, f.String()
	return nil
}

func (v IntOrString) MarshalJSON() ([]byte, error) {
	if v.IsInt {
		return []byte(strconv.FormatInt(v.Int, 10)), nil
	}
	return json.Marshal(v.Str)
}

func (v IntOrString) String() string {
	if v.IsInt {
		return strconv.FormatInt(v.Int, 10)
	}
	return v.Str
}

// find returns the named container and whether it is an init container.
func (s *PodSpec) find(name string) (*Container, bool, bool) {
	for i := range s.InitContainers {
		if s.InitContainers[i].Name == name {
			return &s.InitContainers[i], true, true
		}
	}
	for i := range s.Containers {
		if s.Containers[i].Name == name {
			return &s.Containers[i], false, true
		}
	}
	return nil, false, false
}

func (c *Case) validate() error {
	if len(c.Pod.Spec.Containers) == 0 && len(c.Pod.Spec.InitContainers) == 0 {
		return fmt.Errorf("pod.spec has no containers")
	}
	if len(c.Containers) == 0 {
		return fmt.Errorf("\"containers\" is empty: name the containers to run")
	}
	for _, n := range c.Containers {
		if _, _, ok := c.Pod.Spec.find(n); !ok {
			return fmt.Errorf("requested container %q is not in the pod spec", n)
		}
	}
	switch c.Runtime {
	case "", "containerd", "cri-o":
	default:
		return fmt.Errorf("runtime %q: want containerd or cri-o", c.Runtime)
	}
	if c.Restarts < 0 || c.Restarts > 10 {
		return fmt.Errorf("restarts %d out of range 0..10", c.Restarts)
	}
	if c.Replicas < 0 {
		return fmt.Errorf("replicas %d: want 1..%d", c.Replicas, maxReplicas)
	}
	if err := c.Traffic.validate(c); err != nil {
		return fmt.Errorf("traffic: %w", err)
	}
	if c.TimeoutSeconds < 0 || c.TimeoutSeconds > 600 {
		return fmt.Errorf("timeoutSeconds %v out of range", c.TimeoutSeconds)
	}
	return nil
}

func (c *Case) defaults() {
	if c.Runtime == "" {
		c.Runtime = "containerd"
	}
	if c.TimeoutSeconds == 0 {
		c.TimeoutSeconds = 25
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.Replicas > maxReplicas {
		c.Replicas = maxReplicas
	}
	if c.NodeName == "" {
		c.NodeName = c.Pod.Spec.NodeName
	}
	if c.NodeName == "" {
		c.NodeName = "node-a"
	}
	if c.Pod.Metadata.Namespace == "" {
		c.Pod.Metadata.Namespace = "default"
	}
	if c.Pod.Metadata.Name == "" {
		c.Pod.Metadata.Name = "pod"
	}
	if c.Pod.Metadata.UID == "" {
		c.Pod.Metadata.UID = "00000000-0000-4000-8000-000000000001"
	}
	if c.Pod.Spec.ServiceAccountName == "" {
		c.Pod.Spec.ServiceAccountName = c.Pod.Spec.DeprecatedServiceAccount
	}
	if c.Pod.Spec.ServiceAccountName == "" {
		c.Pod.Spec.ServiceAccountName = "default"
	}
	if c.Values == nil {
		c.Values = map[string]string{}
	}
	if c.EnvFrom == nil {
		c.EnvFrom = map[string]map[string]string{}
	}
}

func (t *Traffic) validate(c *Case) error {
	if t == nil {
		return nil
	}
	if c.Replicas > 1 {
		return fmt.Errorf("not supported with replicas")
	}
	requested := map[string]bool{}
	for _, n := range c.Containers {
		requested[n] = true
	}
	running := func(name string) error {
		ctr, init, ok := c.Pod.Spec.find(name)
		if !ok || !requested[name] || (init && ctr.RestartPolicy != "Always") {
			return fmt.Errorf("container %q is not a requested long-running container", name)
		}
		return nil
	}
	if t.RestartContainer != "" {
		if err := running(t.RestartContainer); err != nil {
			return err
		}
	}
	names := map[string]bool{}
	for _, r := range t.Requests {
		if r.Name == "" || strings.Trim(r.Name, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" || names[r.Name] {
			return fmt.Errorf("request name %q: want a unique [a-z0-9-]+", r.Name)
		}
		names[r.Name] = true
		ctr := r.Container
		if ctr == "" {
			ctr = t.Container
		}
		if err := running(ctr); err != nil {
			return fmt.Errorf("request %s: %w", r.Name, err)
		}
		switch r.Client {
		case "curl", "go":
			if !strings.HasPrefix(r.URL, "http://") && !strings.HasPrefix(r.URL, "https://") {
				return fmt.Errorf("request %s: url %q: want http:// or https://", r.Name, r.URL)
			}
			if r.Client == "go" && len(r.Args) > 0 {
				return fmt.Errorf("request %s: the go client takes no args", r.Name)
			}
		case "tailscale":
		default:
			return fmt.Errorf("request %s: client %q: want curl, go or tailscale", r.Name, r.Client)
		}
	}
	return nil
}

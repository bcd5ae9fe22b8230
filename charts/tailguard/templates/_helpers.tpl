{{/* Names, labels and the pieces several templates share. */}}

{{- define "tailguard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: the release name, prefixed with the chart name unless it already contains it.
Also the name of the Service, the webhook configurations and the RBAC objects.
*/}}
{{- define "tailguard.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tailguard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tailguard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tailguard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tailguard.labels" -}}
helm.sh/chart: {{ include "tailguard.chart" . }}
{{ include "tailguard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/component: admission-webhook
app.kubernetes.io/part-of: tailguard
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "tailguard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tailguard.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tailguard.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* Whether the server runs in the cluster (no webhook.url): Deployment, Service, PDB. */}}
{{- define "tailguard.inCluster" -}}
{{- if not .Values.webhook.url }}true{{ end }}
{{- end }}

{{/* self mode: the Secret the server keeps its CA and serving certificate in. */}}
{{- define "tailguard.certSecretName" -}}
{{- printf "%s-certs" (include "tailguard.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* cert-manager mode: the serving Certificate and the Secret it writes. */}}
{{- define "tailguard.servingCertName" -}}
{{- printf "%s-serving" (include "tailguard.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- define "tailguard.servingSecretName" -}}
{{- printf "%s-tls" (include "tailguard.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The serving certificate's DNS names: <svc>, <svc>.<ns>, <svc>.<ns>.svc, <svc>.<ns>.svc.cluster.local. */}}
{{- define "tailguard.dnsNames" -}}
{{- $svc := include "tailguard.fullname" . }}
{{- $ns := .Release.Namespace }}
{{- list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) | toJson }}
{{- end }}

{{/* Namespaces neither webhook sees: the release namespace, kube-system and webhook.excludeNamespaces. */}}
{{- define "tailguard.excludedNamespaces" -}}
{{- concat (list .Release.Namespace "kube-system") .Values.webhook.excludeNamespaces | uniq | toJson }}
{{- end }}

{{/*
The policy file: .Values.config with the release namespace added to injection.excludedNamespaces
(kube-system stays excluded when the list is not given, as in the server's default).
*/}}
{{- define "tailguard.config" -}}
{{- $config := deepCopy (.Values.config | default dict) }}
{{- $injection := deepCopy (get $config "injection" | default dict) }}
{{- $excluded := list "kube-system" }}
{{- if hasKey $injection "excludedNamespaces" }}
{{- $excluded = get $injection "excludedNamespaces" | default list }}
{{- end }}
{{- $_ := set $injection "excludedNamespaces" (append $excluded .Release.Namespace | uniq) }}
{{- $_ = set $config "injection" $injection }}
{{- /* An unquoted `off` in values is YAML 1.1 for false; the server wants the word. */}}
{{- if hasKey $config "rules" }}
{{- $rules := dict }}
{{- range $rule, $level := get $config "rules" }}
{{- $_ = set $rules $rule (kindIs "bool" $level | ternary "off" $level) }}
{{- end }}
{{- $_ = set $config "rules" $rules }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/*
Substrings that mark an image as possibly Tailscale, for the validating webhook's matchConditions:
"tailscale", plus every configured image pattern (without its trailing *) that does not contain it.
A superset of what the server treats as Tailscale, so no object that matters is left unsent.
*/}}
{{- define "tailguard.imageSubstrings" -}}
{{- $subs := list "tailscale" }}
{{- range (get (.Values.config | default dict) "images" | default list) }}
{{- $pattern := trimSuffix "*" . }}
{{- if and $pattern (not (contains "tailscale" $pattern)) }}
{{- $subs = append $subs $pattern }}
{{- end }}
{{- end }}
{{- $subs | uniq | toJson }}
{{- end }}

{{/*
CEL: does the pod spec at `path` (e.g. "object.spec.template.spec") have a container or init
container whose image contains one of the substrings? Every step is guarded with has(), so a
missing field is false, never an evaluation error.
Called with (dict "path" "object.spec" "subs" <json list>).
*/}}
{{- define "tailguard.celHasTailscaleImage" -}}
{{- $guards := list }}
{{- $prefix := "object" }}
{{- range (rest (splitList "." .path)) }}
{{- $prefix = printf "%s.%s" $prefix . }}
{{- $guards = append $guards (printf "has(%s)" $prefix) }}
{{- end }}
{{- $containers := list }}
{{- range list "containers" "initContainers" }}
{{- $containers = append $containers (printf "(has(%s.%s) && %s.%s.exists(c, has(c.image) && %s.exists(s, c.image.contains(s))))" $.path . $.path . $.subs) }}
{{- end }}
{{- printf "%s && (%s)" (join " && " $guards) (join " || " $containers) }}
{{- end }}

{{/* clientConfig of a webhook: the external URL or the Service, with the caBundle in secret mode. */}}
{{- define "tailguard.clientConfig" -}}
{{- $root := .root }}
{{- if $root.Values.webhook.url }}
url: {{ printf "%s%s" (trimSuffix "/" $root.Values.webhook.url) .path | quote }}
{{- else }}
service:
  name: {{ include "tailguard.fullname" $root }}
  namespace: {{ $root.Release.Namespace }}
  path: {{ .path }}
  port: {{ $root.Values.service.port }}
{{- end }}
{{- if eq $root.Values.certificates.mode "secret" }}
caBundle: {{ $root.Values.certificates.caBundle | trim }}
{{- end }}
{{- end }}

{{/* Annotations shared by both webhook configurations. */}}
{{- define "tailguard.webhookAnnotations" -}}
{{- if eq .Values.certificates.mode "cert-manager" }}
annotations:
  cert-manager.io/inject-ca-from: {{ printf "%s/%s" .Release.Namespace (include "tailguard.servingCertName" .) }}
{{- end }}
{{- end }}

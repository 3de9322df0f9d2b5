{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "macp-auth-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: the release name when it already contains the chart name, otherwise
release-chart. Truncated to 63 characters (DNS label).
*/}}
{{- define "macp-auth-operator.fullname" -}}
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

{{- define "macp-auth-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object the chart renders. */}}
{{- define "macp-auth-operator.labels" -}}
helm.sh/chart: {{ include "macp-auth-operator.chart" . }}
{{ include "macp-auth-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: macp-auth
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels selecting the operator pods: Deployment, Service, PDB and NetworkPolicy agree on these. */}}
{{- define "macp-auth-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "macp-auth-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "macp-auth-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "macp-auth-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository@digest when a digest pins the image (the tag is then ignored), else repository:tag. */}}
{{- define "macp-auth-operator.imageRef" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .appVersion .image.tag) }}
{{- end }}
{{- end }}

{{- define "macp-auth-operator.image" -}}
{{- include "macp-auth-operator.imageRef" (dict "image" .Values.image "appVersion" .Chart.AppVersion) }}
{{- end }}

{{- define "macp-auth-operator.serviceImage" -}}
{{- include "macp-auth-operator.imageRef" (dict "image" .Values.serviceImage "appVersion" .Chart.AppVersion) }}
{{- end }}

{{- define "macp-auth-operator.leaseName" -}}
{{- default (include "macp-auth-operator.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/*
The rules of operator/src/rbac.rs `required_rules(false)`: what the operator
needs in every namespace it watches. A test compares the rendered rules with
that list, so change both together.
*/}}
{{- define "macp-auth-operator.rules" -}}
- apiGroups: ["macp.io"]
  resources: ["macpauths"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["macp.io"]
  resources: ["macpauths/status"]
  verbs: ["get", "patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch", "update"]
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/* The leader-election rules of `required_rules(true)`, granted in the release namespace only. */}}
{{- define "macp-auth-operator.leaderElectionRules" -}}
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "update"]
{{- end }}

{{/* Namespaces that get a token-service NetworkPolicy. */}}
{{- define "macp-auth-operator.networkPolicyNamespaces" -}}
{{- $ns := .Values.networkPolicy.namespaces }}
{{- if not $ns }}{{ $ns = .Values.watchNamespaces }}{{ end }}
{{- toJson (uniq $ns) }}
{{- end }}

{{/* The client pod selector of the NetworkPolicy; an empty one falls back to a fixed label, never to "every pod". */}}
{{- define "macp-auth-operator.mintClientSelector" -}}
{{- $sel := .Values.networkPolicy.mintClients.podSelector }}
{{- if or $sel.matchLabels $sel.matchExpressions }}
{{- toYaml $sel }}
{{- else -}}
matchLabels:
  macp.io/auth-client: "true"
{{- end }}
{{- end }}

{{/* The verifier pod selector of the NetworkPolicy's JWKS rule (with mintPorts); an empty one falls back to a fixed label, never to "every pod". */}}
{{- define "macp-auth-operator.verifierSelector" -}}
{{- $sel := .Values.networkPolicy.verifiers.podSelector }}
{{- if or $sel.matchLabels $sel.matchExpressions }}
{{- toYaml $sel }}
{{- else -}}
matchLabels:
  macp.io/auth-verifier: "true"
{{- end }}
{{- end }}

{{/*
Names and labels shared by every template.
*/}}

{{- define "consul-sd-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's full name: the release name alone when it already contains the chart name
(`helm install consul-sd-operator ...` gives consul-sd-operator), else release-chart.
*/}}
{{- define "consul-sd-operator.fullname" -}}
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

{{/*
The full name with a suffix ("metrics", "cleanup", ...), the full name cut so that the whole
stays within 63 characters: Service names are DNS labels and a Job's name goes into its pods'
job-name label, both limited to 63 (a 63-character fullnameOverride or a 53-character release
name would otherwise give invalid objects). Call with (list $ "suffix").
*/}}
{{- define "consul-sd-operator.suffixedName" -}}
{{- $root := index . 0 }}
{{- $suffix := index . 1 }}
{{- $base := include "consul-sd-operator.fullname" $root | trunc (int (sub 62 (len $suffix))) | trimSuffix "-" }}
{{- printf "%s-%s" $base $suffix }}
{{- end }}

{{/*
The metrics Service's name, also the job label its ServiceMonitor gives the operator's metrics.
*/}}
{{- define "consul-sd-operator.metricsServiceName" -}}
{{- include "consul-sd-operator.suffixedName" (list . "metrics") }}
{{- end }}

{{- define "consul-sd-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "consul-sd-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "consul-sd-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "consul-sd-operator.labels" -}}
helm.sh/chart: {{ include "consul-sd-operator.chart" . }}
{{ include "consul-sd-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "consul-sd-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "consul-sd-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
registry/repository, then @digest when one is given, else :tag (default: appVersion).
*/}}
{{- define "consul-sd-operator.image" -}}
{{- $repository := .Values.image.repository }}
{{- with .Values.image.registry }}{{ $repository = printf "%s/%s" (trimSuffix "/" .) $repository }}{{ end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The rules the operator needs in each namespace it watches: the same in a ClusterRole (all
namespaces) and in each Role (watchNamespaces). Verified by tests/e2e/test_rbac.py, which runs
the operator with exactly these rules and finds no 403.
*/}}
{{- define "consul-sd-operator.namespacedRules" -}}
# kopf lists and watches ConsulDiscovery objects, and patches them to add and remove its
# finalizer (consul-sd.io/finalizer) and its annotations (consul-sd.io/*).
- apiGroups: ["consul-sd.io"]
  resources: ["consuldiscoveries"]
  verbs: ["list", "watch", "patch"]
# The runner writes Ready/Degraded/Progressing, counts and outputs into status (merge patch).
- apiGroups: ["consul-sd.io"]
  resources: ["consuldiscoveries/status"]
  verbs: ["patch"]
# The Consul token, basic-auth and TLS Secrets the spec names, read by name. No list or watch:
# the operator cannot enumerate Secrets.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
# The file_sd output: list (by the consul-sd.io/discovery label, to resume after a restart),
# server-side apply (patch; the apiserver also checks create when the ConfigMap is new), and
# delete of shards no longer needed.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["list", "create", "patch", "delete"]
# The ScrapeConfig output, with the same four verbs as the ConfigMaps.
- apiGroups: ["monitoring.coreos.com"]
  resources: ["scrapeconfigs"]
  verbs: ["list", "create", "patch", "delete"]
# Events on ConsulDiscovery objects (SecretNotFound, OutputWriteFailed, Recovered, ...), by the
# runner and by kopf (warnings), both through the core/v1 Events API.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/*
The base URL ScrapeConfigs in the HTTP SD form point at: httpSD.url, else the metrics Service.
*/}}
{{- define "consul-sd-operator.httpSDURL" -}}
{{- if .Values.httpSD.url }}
{{- .Values.httpSD.url | trimSuffix "/" }}
{{- else }}
{{- printf "http://%s.%s.svc:%v" (include "consul-sd-operator.metricsServiceName" .) .Release.Namespace .Values.service.port }}
{{- end }}
{{- end }}

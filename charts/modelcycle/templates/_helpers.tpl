{{/* The release's full name, shortened to the 63 characters of a label. */}}
{{- define "modelcycle.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "modelcycle.operatorName" -}}
{{- printf "%s-operator" (include "modelcycle.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "modelcycle.selectorLabels" -}}
app.kubernetes.io/name: modelcycle-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "modelcycle.labels" -}}
{{ include "modelcycle.selectorLabels" . }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: modelcycle
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "modelcycle.serviceAccountName" -}}
{{- default (include "modelcycle.operatorName" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/*
The namespaces the operator serves: `watchNamespaces`, else the release's own. Empty
only for a cluster-wide install (`clusterWide: true`), which must not also list some.
*/}}
{{- define "modelcycle.watchNamespaces" -}}
{{- if .Values.clusterWide -}}
{{- if .Values.watchNamespaces -}}
{{- fail "clusterWide: true serves every namespace; leave watchNamespaces empty, or set clusterWide: false to serve only the listed ones" -}}
{{- end -}}
{{- else -}}
{{- join "," (.Values.watchNamespaces | default (list .Release.Namespace)) -}}
{{- end -}}
{{- end -}}

{{- define "agent.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- define "agent.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "agent.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "agent.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- define "agent.labels" -}}
app.kubernetes.io/name: {{ include "agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fedstream
app.kubernetes.io/component: agent
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
{{- define "agent.selector" -}}
app.kubernetes.io/name: {{ include "agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- define "agent.validate" -}}
{{- if not .Values.scheduler.endpoint -}}
{{- fail "scheduler.endpoint is required: the host:port of the tenant's scheduler gRPC" -}}
{{- end -}}
{{- if and .Values.data.existingClaim .Values.data.hostPath -}}
{{- fail "set one of data.existingClaim and data.hostPath, not both" -}}
{{- end -}}
{{- if not (or .Values.data.existingClaim .Values.data.hostPath) -}}
{{- fail "the site's data is required: set data.existingClaim or data.hostPath" -}}
{{- end -}}
{{- end -}}

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
{{/* The claim holding the agent's identity: the one given, else the chart's own (stable across upgrades). */}}
{{- define "agent.identityClaim" -}}
{{- default (printf "%s-identity" (include "agent.fullname" .)) .Values.identity.existingClaim -}}
{{- end -}}
{{/* The image: [registry/]repository:tag, with "-cpu" for the CPU variant (as `make images` tags it). */}}
{{- define "agent.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if not .Values.gpu.enabled }}{{ $tag = printf "%s-cpu" $tag }}{{ end -}}
{{- if .Values.image.registry -}}
{{- printf "%s/%s:%s" .Values.image.registry .Values.image.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
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
{{- if and .Values.identity.existingClaim (not .Values.identity.persistence.enabled) -}}
{{- fail "identity.existingClaim is set but identity.persistence.enabled is false: keep the identity on the claim (enabled true) or drop the claim" -}}
{{- end -}}
{{- end -}}

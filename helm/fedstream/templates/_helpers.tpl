{{/* Names */}}
{{- define "fedstream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "fedstream.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "fedstream.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "fedstream.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "fedstream.tenant" -}}
{{- default .Release.Namespace .Values.tenant -}}
{{- end -}}

{{- define "fedstream.labels" -}}
app.kubernetes.io/name: {{ include "fedstream.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fedstream
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
fedstream.io/tenant: {{ include "fedstream.tenant" . }}
{{- end -}}

{{/* Selector labels of one component: fedstream.selector (dict "ctx" $ "component" "scheduler") */}}
{{- define "fedstream.selector" -}}
app.kubernetes.io/name: {{ include "fedstream.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* An image as `make images` names it: [registry/]repository:tag (IMAGE_REGISTRY, IMAGE_TAG). */}}
{{- define "fedstream.image" -}}
{{- $tag := default .ctx.Chart.AppVersion .ctx.Values.image.tag -}}
{{- if .ctx.Values.image.registry -}}
{{- printf "%s/%s:%s" .ctx.Values.image.registry .repository $tag -}}
{{- else -}}
{{- printf "%s:%s" .repository $tag -}}
{{- end -}}
{{- end -}}

{{/* Services and secrets */}}
{{- define "fedstream.scheduler" -}}{{ include "fedstream.fullname" . }}-scheduler{{- end -}}
{{- define "fedstream.aggregator" -}}{{ include "fedstream.fullname" . }}-aggregator{{- end -}}
{{- define "fedstream.leaf" -}}{{ include "fedstream.fullname" . }}-aggregator-leaf{{- end -}}
{{- define "fedstream.redis" -}}{{ include "fedstream.fullname" . }}-redis{{- end -}}
{{- define "fedstream.minio" -}}{{ include "fedstream.fullname" . }}-minio{{- end -}}
{{- define "fedstream.secret" -}}{{ include "fedstream.fullname" . }}-credentials{{- end -}}

{{- define "fedstream.bootstrapSecret" -}}{{ default (include "fedstream.secret" .) .Values.scheduler.bootstrapToken.existingSecret }}{{- end -}}
{{- define "fedstream.redisSecret" -}}{{ default (include "fedstream.secret" .) .Values.redis.auth.existingSecret }}{{- end -}}
{{- define "fedstream.s3Secret" -}}{{ default (include "fedstream.secret" .) .Values.s3.auth.existingSecret }}{{- end -}}

{{- define "fedstream.redisUrl" -}}
{{- if .Values.redis.bundled -}}
redis://{{ include "fedstream.redis" . }}:6379/0
{{- else -}}
{{ .Values.redis.external.url }}
{{- end -}}
{{- end -}}

{{- define "fedstream.s3Endpoint" -}}
{{- if .Values.s3.bundled -}}
{{ include "fedstream.minio" . }}:9000
{{- else -}}
{{ .Values.s3.external.endpoint }}
{{- end -}}
{{- end -}}

{{/* Cross-field checks: a render with inconsistent values fails with the reason. */}}
{{- define "fedstream.validate" -}}
{{- if and (not .Values.redis.bundled) (not .Values.redis.external.url) -}}
{{- fail "redis.external.url is required when redis.bundled is false" -}}
{{- end -}}
{{- if and (not .Values.s3.bundled) (not .Values.s3.external.endpoint) -}}
{{- fail "s3.external.endpoint is required when s3.bundled is false" -}}
{{- end -}}
{{- if and (not .Values.s3.bundled) (not .Values.s3.auth.existingSecret) -}}
{{- fail "s3.auth.existingSecret is required with an external S3 (its access and secret keys)" -}}
{{- end -}}
{{- if and .Values.ingress.enabled (not (and .Values.ingress.grpc.schedulerHost .Values.ingress.grpc.enrollHost .Values.ingress.grpc.aggregatorHost)) -}}
{{- fail "ingress.grpc.schedulerHost, enrollHost and aggregatorHost are required when ingress.enabled is true (agents dial them)" -}}
{{- end -}}
{{- if and .Values.ingress.enabled (not .Values.ingress.api.host) -}}
{{- fail "ingress.api.host is required when ingress.enabled is true" -}}
{{- end -}}
{{- if and (ne .Values.service.type "ClusterIP") (not .Values.ingress.enabled) (not .Values.scheduler.aggregatorPublicEndpoint) -}}
{{- fail (printf "scheduler.aggregatorPublicEndpoint is required with service.type %s: the host:port agents reach the aggregator at (its load balancer's or a node's address)" .Values.service.type) -}}
{{- end -}}
{{- if and (ne .Values.service.type "ClusterIP") (not .Values.ingress.enabled) (not .Values.tls.serverNames) (not .Values.tls.insecurePlaintext) -}}
{{- fail (printf "tls.serverNames is required with service.type %s: the host names or IPs agents dial, which the services' certificates must name" .Values.service.type) -}}
{{- end -}}
{{- if and .Values.aggregator.distill.enabled (not .Values.aggregator.distill.publicDataClaim) -}}
{{- fail "aggregator.distill.publicDataClaim is required when aggregator.distill.enabled is true" -}}
{{- end -}}
{{- if and .Values.aggregator.distill.enabled (gt (int .Values.aggregator.leaves) 0) -}}
{{- fail "aggregator.distill.enabled needs a single aggregator: distillation rounds run on the root (set aggregator.leaves to 0)" -}}
{{- end -}}
{{- end -}}

{{/* Environment shared by the scheduler and the aggregators: state and model stores. */}}
{{- define "fedstream.storeEnv" -}}
- name: {{ .prefix }}TENANT__TENANT
  value: {{ include "fedstream.tenant" .ctx | quote }}
- name: {{ .prefix }}LOG__JSON_FORMAT
  value: "true"
- name: {{ .prefix }}STATE__BACKEND
  value: redis
- name: {{ .prefix }}STATE__REDIS__URL
  value: {{ include "fedstream.redisUrl" .ctx | quote }}
{{- if or .ctx.Values.redis.bundled .ctx.Values.redis.auth.existingSecret }}
- name: {{ .prefix }}STATE__REDIS__PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "fedstream.redisSecret" .ctx }}
      key: {{ .ctx.Values.redis.auth.key }}
{{- end }}
- name: {{ .prefix }}STORE__BACKEND
  value: s3
- name: {{ .prefix }}STORE__PATH
  value: /tmp/fedstream/staging
- name: {{ .prefix }}STORE__S3__ENDPOINT
  value: {{ include "fedstream.s3Endpoint" .ctx | quote }}
- name: {{ .prefix }}STORE__S3__SECURE
  value: {{ ternary "false" (.ctx.Values.s3.external.secure | toString) .ctx.Values.s3.bundled | quote }}
- name: {{ .prefix }}STORE__S3__BUCKET
  value: {{ .ctx.Values.s3.bucket | quote }}
{{- if and (not .ctx.Values.s3.bundled) .ctx.Values.s3.external.region }}
- name: {{ .prefix }}STORE__S3__REGION
  value: {{ .ctx.Values.s3.external.region | quote }}
{{- end }}
- name: {{ .prefix }}STORE__S3__ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "fedstream.s3Secret" .ctx }}
      key: {{ .ctx.Values.s3.auth.accessKeyKey }}
- name: {{ .prefix }}STORE__S3__SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "fedstream.s3Secret" .ctx }}
      key: {{ .ctx.Values.s3.auth.secretKeyKey }}
- name: {{ .prefix }}STORE__KEEP_LAST
  value: {{ .ctx.Values.aggregator.keepLast | quote }}
{{- end -}}

{{- define "fedstream.aggregatorMemory" -}}
{{- add (mul (int .Values.aggregator.modelSizeMiB) (int .Values.aggregator.memoryFactor)) 512 -}}Mi
{{- end -}}

{{/* The root's leaves as FEDSTREAM_AGGREGATOR_LEAVES JSON: each leaf pod's stable DNS name. */}}
{{- define "fedstream.leafList" -}}
{{- $leaf := include "fedstream.leaf" . -}}
{{- $out := list -}}
{{- range $i := until (int .Values.aggregator.leaves) -}}
{{- $host := printf "%s-%d.%s.%s.svc:%d" $leaf $i $leaf $.Release.Namespace (int $.Values.aggregator.grpcPort) -}}
{{- $out = append $out (dict "endpoint" $host "public_endpoint" $host) -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* The tenant's CA secret. */}}
{{- define "fedstream.caSecret" -}}{{ default (printf "%s-ca" (include "fedstream.fullname" .)) .Values.tls.caSecret }}{{- end -}}

{{/* Mutual TLS settings of a service: fedstream.tlsEnv (dict "ctx" $ "prefix" "FEDSTREAM_SCHEDULER_" "names" (list ...)) */}}
{{- define "fedstream.tlsEnv" -}}
{{- if .ctx.Values.tls.insecurePlaintext -}}
- name: {{ .prefix }}TLS__INSECURE_PLAINTEXT
  value: "true"
{{- else -}}
- name: {{ .prefix }}TLS__CA_FILE
  value: /etc/fedstream/ca/ca.pem
- name: {{ .prefix }}TLS__CA_KEY_FILE
  value: /etc/fedstream/ca/ca-key.pem
- name: {{ .prefix }}TLS__SERVER_NAMES
  value: {{ concat .names .ctx.Values.tls.serverNames | compact | uniq | toJson | quote }}
{{- end -}}
{{- end -}}

{{/* The in-cluster DNS names of a Service. */}}
{{- define "fedstream.dnsNames" -}}
{{- $ns := .ctx.Release.Namespace -}}
{{- toJson (list .service (printf "%s.%s.svc" .service $ns) (printf "%s.%s.svc.cluster.local" .service $ns)) -}}
{{- end -}}

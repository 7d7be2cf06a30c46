{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "relay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the release's resources. */}}
{{- define "relay.fullname" -}}
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

{{/* chart label: name-version. */}}
{{- define "relay.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "relay.labels" -}}
helm.sh/chart: {{ include "relay.chart" . }}
{{ include "relay.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: relay
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels that select the release's pods; never change them on upgrade. */}}
{{- define "relay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "relay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "relay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "relay.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Image reference: repository, then @digest or :tag (default appVersion). */}}
{{- define "relay.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Name of the Secret the chart creates for values-given secrets. */}}
{{- define "relay.secretName" -}}
{{- include "relay.fullname" . }}
{{- end }}

{{/* "true" when Redis is configured (cluster mode), "" in embedded mode. */}}
{{- define "relay.redisEnabled" -}}
{{- if or .Values.redis.url .Values.redis.existingSecret }}true{{ end }}
{{- end }}

{{/* "true" when the chart stores the HS256 secret itself. */}}
{{- define "relay.chartJwtSecret" -}}
{{- if and (eq .Values.auth.jwt.mode "secret") (not .Values.auth.existingSecret) }}true{{ end }}
{{- end }}

{{/* "true" when the chart stores the API key itself. */}}
{{- define "relay.chartApiKey" -}}
{{- if and .Values.auth.apiKey (not .Values.auth.existingSecret) }}true{{ end }}
{{- end }}

{{/* The variable the Redis URL(s) go in: one server or a cluster's seeds. */}}
{{- define "relay.redisVar" -}}
{{- if eq (.Values.redis.mode | default "standalone") "cluster" }}REDIS_CLUSTER_URLS{{ else }}REDIS_URL{{ end }}
{{- end }}

{{/* "true" when the chart stores REDIS_URL itself. */}}
{{- define "relay.chartRedisUrl" -}}
{{- if and .Values.redis.url (not .Values.redis.existingSecret) }}true{{ end }}
{{- end }}

{{/* "true" when the chart creates its Secret at all. */}}
{{- define "relay.createSecret" -}}
{{- if or (include "relay.chartJwtSecret" .) (include "relay.chartApiKey" .) (include "relay.chartRedisUrl" .) }}true{{ end }}
{{- end }}

{{/* "true" when long-polling is on, i.e. load balancers need sticky sessions. */}}
{{- define "relay.pollingEnabled" -}}
{{- if not .Values.relay.websocketOnly }}true{{ end }}
{{- end }}

{{/* Path of the mounted PEM public key (auth.jwt.mode publicKey). */}}
{{- define "relay.publicKeyPath" -}}
/etc/relay/jwt/{{ .Values.auth.jwt.publicKeyItem }}
{{- end }}

{{/* Where redis.tls Secrets are mounted, and the files in it. */}}
{{- define "relay.redisTlsDir" -}}
/etc/relay/redis-tls
{{- end }}

{{/* "true" when a redis.tls Secret is set (the redis-tls volume is mounted). */}}
{{- define "relay.redisTls" -}}
{{- $t := .Values.redis.tls | default dict }}
{{- if or $t.caSecret $t.clientSecret }}true{{ end }}
{{- end }}

{{/* Seconds of the preStop pause; 0 when there is none. */}}
{{- define "relay.preStopSeconds" -}}
{{- if eq .Values.shutdown.preStop.mode "none" }}0{{ else }}{{ .Values.shutdown.preStop.seconds | int }}{{ end }}
{{- end }}

{{/*
terminationGracePeriodSeconds: the preStop pause, then relay's own drain
(RELAY_SHUTDOWN_GRACE_S), then a margin before SIGKILL.
*/}}
{{- define "relay.terminationGracePeriodSeconds" -}}
{{- add (include "relay.preStopSeconds" . | int) (.Values.shutdown.graceSeconds | int) (.Values.shutdown.marginSeconds | int) }}
{{- end }}

{{/*
Checks across values that values.schema.json cannot express; each failure
names the values to fix.
*/}}
{{- define "relay.validate" -}}
{{- $jwt := .Values.auth.jwt }}
{{- if eq $jwt.mode "secret" }}
  {{- if and (not .Values.auth.existingSecret) (not $jwt.secret) }}
    {{- fail "relay: set auth.jwt.secret or auth.existingSecret (the HS256 secret clients' tokens are signed with), or use auth.jwt.mode=publicKey" }}
  {{- end }}
  {{- if or $jwt.publicKey $jwt.existingPublicKeyConfigMap $jwt.existingPublicKeySecret }}
    {{- fail "relay: auth.jwt.publicKey/existingPublicKeyConfigMap/existingPublicKeySecret need auth.jwt.mode=publicKey" }}
  {{- end }}
{{- else }}
  {{- $sources := 0 }}
  {{- range (list $jwt.publicKey $jwt.existingPublicKeyConfigMap $jwt.existingPublicKeySecret) }}
    {{- if . }}{{ $sources = add1 $sources }}{{ end }}
  {{- end }}
  {{- if ne (int $sources) 1 }}
    {{- fail "relay: auth.jwt.mode=publicKey needs exactly one of auth.jwt.publicKey, auth.jwt.existingPublicKeyConfigMap, auth.jwt.existingPublicKeySecret" }}
  {{- end }}
  {{- if $jwt.secret }}
    {{- fail "relay: auth.jwt.secret is only used with auth.jwt.mode=secret; remove it" }}
  {{- end }}
{{- end }}
{{- if and .Values.redis.url .Values.redis.existingSecret }}
  {{- fail "relay: set redis.url or redis.existingSecret, not both" }}
{{- end }}
{{- if not (include "relay.redisEnabled" .) }}
  {{- if or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1) }}
    {{- fail "relay: more than one pod needs a shared Redis: set redis.url or redis.existingSecret (without them relay runs in embedded single-node mode, allowed only with replicaCount=1 and autoscaling off)" }}
  {{- end }}
{{- end }}
{{- if include "relay.redisTls" . }}
  {{- if not (include "relay.redisEnabled" .) }}
    {{- fail "relay: redis.tls needs a rediss:// Redis: set redis.url or redis.existingSecret" }}
  {{- end }}
  {{- if and .Values.redis.url (not (hasPrefix "rediss://" .Values.redis.url)) }}
    {{- fail "relay: redis.tls.caSecret/clientSecret need a rediss:// redis.url (TLS)" }}
  {{- end }}
{{- end }}
{{- if and (eq (.Values.redis.mode | default "standalone") "standalone") (contains "," .Values.redis.url) }}
  {{- fail "relay: redis.url holds several URLs: set redis.mode=cluster for the seeds of a Redis Cluster" }}
{{- end }}
{{- if and .Values.redis.url (contains "rediss://" .Values.redis.url) (contains "redis://" (replace "rediss://" "" .Values.redis.url)) }}
  {{- fail "relay: redis.url mixes redis:// and rediss:// seeds: all must be one or the other" }}
{{- end }}
{{- if gt (int .Values.relay.wsMaxFrameBytes) (int .Values.relay.wsMaxMessageBytes) }}
  {{- fail "relay: relay.wsMaxFrameBytes must not exceed relay.wsMaxMessageBytes" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
  {{- fail "relay: autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- if and .Values.httpRoute.enabled (not .Values.httpRoute.parentRefs) }}
  {{- fail "relay: httpRoute.enabled needs httpRoute.parentRefs (the Gateway to attach to)" }}
{{- end }}
{{- end }}

{{/* Chart name, truncated to the 63 characters a DNS label allows. */}}
{{- define "herald.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name; the release name alone when it already contains the chart name. */}}
{{- define "herald.fullname" -}}
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

{{- define "herald.selectorLabels" -}}
app.kubernetes.io/name: {{ include "herald.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "herald.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "herald.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Gateway pods only (the bundled Redis shares name/instance). */}}
{{- define "herald.podSelectorLabels" -}}
{{ include "herald.selectorLabels" . }}
app.kubernetes.io/component: gateway
{{- end }}

{{/* "url", "secret", "shards", "shardsSecret", "bundled" or "" (embedded broker). Fails on more than one, and on redis.tls.* that cannot apply. */}}
{{- define "herald.redisMode" -}}
{{- $r := .Values.redis }}
{{- $modes := list }}
{{- if $r.url }}{{ $modes = append $modes "url" }}{{ end }}
{{- if $r.existingSecret }}{{ $modes = append $modes "secret" }}{{ end }}
{{- if $r.shards }}{{ $modes = append $modes "shards" }}{{ end }}
{{- if $r.shardsExistingSecret }}{{ $modes = append $modes "shardsSecret" }}{{ end }}
{{- if $r.bundled.enabled }}{{ $modes = append $modes "bundled" }}{{ end }}
{{- if gt (len $modes) 1 }}
{{- fail "set only one of redis.url, redis.existingSecret, redis.shards, redis.shardsExistingSecret and redis.bundled.enabled" }}
{{- end }}
{{- $mode := first $modes | default "" }}
{{- if or $r.tls.caSecret $r.tls.clientCertSecret }}
{{- if eq $mode "bundled" }}
{{- fail "redis.tls.* is for an external rediss:// Redis: the bundled Redis has no TLS" }}
{{- else if eq $mode "" }}
{{- fail "redis.tls.* needs a rediss:// Redis: set redis.url, redis.existingSecret, redis.shards or redis.shardsExistingSecret" }}
{{- else if and (eq $mode "url") (not (regexMatch "^rediss(\\+cluster)?://" $r.url)) }}
{{- fail "redis.tls.* needs a rediss:// or rediss+cluster:// redis.url (herald refuses TLS files otherwise)" }}
{{- else if eq $mode "shards" }}
{{- range $r.shards }}
{{- if not (hasPrefix "rediss://" .) }}
{{- fail (printf "redis.tls.* applies to every shard: %s is not rediss:// (herald refuses TLS files with a plain shard)" (regexReplaceAll "//[^@/]*@" . "//***@")) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- $mode }}
{{- end }}

{{/* Name of the Secret holding the env secrets, or "" when there is none. */}}
{{- define "herald.secretName" -}}
{{- $s := .Values.secrets }}
{{- if $s.existingSecret }}
{{- $s.existingSecret }}
{{- else if or $s.reconnectSecrets $s.apiKeys $s.jwtSecret }}
{{- include "herald.fullname" . }}
{{- end }}
{{- end }}

{{/* "true" when JWT key files are mounted. herald takes exactly one key source. */}}
{{- define "herald.jwtFiles" -}}
{{- if and .Values.jwt.configMap .Values.jwt.secret }}
{{- fail "set only one of jwt.configMap and jwt.secret" }}
{{- end }}
{{- if gt (len (compact (list .Values.secrets.jwtSecret .Values.jwt.publicKeyKey .Values.jwt.jwksKey))) 1 }}
{{- fail "herald takes one JWT key source: set only one of secrets.jwtSecret, jwt.publicKeyKey and jwt.jwksKey" }}
{{- end }}
{{- if and (or .Values.jwt.publicKeyKey .Values.jwt.jwksKey) (not (or .Values.jwt.configMap .Values.jwt.secret)) }}
{{- fail "jwt.publicKeyKey/jwt.jwksKey need jwt.configMap or jwt.secret" }}
{{- end }}
{{- if or .Values.jwt.publicKeyKey .Values.jwt.jwksKey }}true{{ end }}
{{- end }}

{{/* config.auth.jwt_algorithm needs the key source it names; herald refuses to start otherwise. */}}
{{- define "herald.jwtAlgorithmCheck" -}}
{{- $alg := (.Values.config.auth | default dict).jwt_algorithm }}
{{- $files := include "herald.jwtFiles" . }}
{{- if and (eq (toString $alg) "HS256") (not (or .Values.secrets.jwtSecret (and .Values.secrets.existingSecret (not $files)))) }}
{{- fail "config.auth.jwt_algorithm HS256 needs an HS256 secret: set secrets.jwtSecret, or secrets.existingSecret with its jwtSecret key and no jwt.* key file" }}
{{- end }}
{{- if and (has (toString $alg) (list "RS256" "ES256")) (not $files) }}
{{- fail (printf "config.auth.jwt_algorithm %s needs a public key: set jwt.publicKeyKey or jwt.jwksKey (with jwt.configMap or jwt.secret)" $alg) }}
{{- end }}
{{- end }}

{{/* key = value lines of one TOML table; toJson gives valid TOML for strings, numbers, booleans and string arrays. */}}
{{- define "herald.tomlKeys" -}}
{{- range $k, $v := . }}
{{- if not (kindIs "invalid" $v) }}
{{ $k }} = {{ toJson $v }}
{{- end }}
{{- end }}
{{- end }}

{{/* herald.toml: only keys listed in docs/configuration.md (values.schema.json enforces them). */}}
{{- define "herald.toml" -}}
{{- $c := .Values.config -}}
{{- $redis := include "herald.redisMode" . -}}
{{- if and (hasKey $c.broker "timeout") (eq $redis "") }}
{{- fail "config.broker.timeout applies to Redis only: configure redis.* or drop it" }}
{{- end -}}
{{- include "herald.jwtAlgorithmCheck" . -}}
# Rendered by the herald Helm chart. Keys: docs/configuration.md.
{{- with $c.log }}
log = {{ toJson . }}
{{- end }}
[server]
drain_timeout = "{{ .Values.drainTimeout }}s"
{{- include "herald.tomlKeys" $c.server }}
{{- with $c.session }}
[session]
{{- include "herald.tomlKeys" . }}
{{- end }}
[broker]
type = {{ ternary "redis" "memory" (ne $redis "") | quote }}{{ if has $redis (list "shards" "shardsSecret") }}  # shards: HERALD_REDIS_SHARDS{{ else if $redis }}  # url: HERALD_REDIS_URL{{ end }}
{{- include "herald.tomlKeys" $c.broker }}
{{- with $c.auth }}
[auth]  # key source, issuer, audience: environment (secrets.*, jwt.*)
{{- include "herald.tomlKeys" . }}
{{- end }}
{{- with $c.channels }}
[channels]
{{- include "herald.tomlKeys" . }}
{{- end }}
{{- range $name, $rule := $c.namespaces }}
[namespaces.{{ if regexMatch "^[A-Za-z0-9_-]+$" $name }}{{ $name }}{{ else }}{{ toJson $name }}{{ end }}]
{{- include "herald.tomlKeys" $rule }}
{{- end }}
{{- end }}

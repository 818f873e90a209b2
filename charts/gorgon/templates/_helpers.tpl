{{/* Names. */}}
{{- define "gorgon.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "gorgon.fullname" -}}
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

{{/* The name of one component's objects: gorgon.componentName (dict "root" $ "component" "api"). */}}
{{- define "gorgon.componentName" -}}
{{- printf "%s-%s" (include "gorgon.fullname" .root | trunc 50 | trimSuffix "-") .component }}
{{- end }}

{{- define "gorgon.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object: gorgon.labels (dict "root" $ "component" "api"). */}}
{{- define "gorgon.labels" -}}
helm.sh/chart: {{ include "gorgon.chart" .root }}
{{ include "gorgon.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: gorgon
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels that select one component's pods. */}}
{{- define "gorgon.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gorgon.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* image reference: gorgon.image (dict "root" $ "image" .Values.api.image). */}}
{{- define "gorgon.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}

{{/* Redis. */}}
{{- define "gorgon.redis.host" -}}
{{- include "gorgon.componentName" (dict "root" . "component" "redis") }}
{{- end }}

{{- define "gorgon.redis.passwordSecretName" -}}
{{- default (include "gorgon.componentName" (dict "root" . "component" "redis")) .Values.redis.auth.existingSecret }}
{{- end }}

{{- define "gorgon.redis.urlSecretName" -}}
{{- default (include "gorgon.componentName" (dict "root" . "component" "redis-url")) .Values.redis.external.existingSecret }}
{{- end }}

{{/* REDIS_URL of one component's containers: gorgon.redis.env (dict "root" $ "user" "api"). The bundled Redis is
reached as the component's own ACL user; an external Redis through the URL in its Secret. */}}
{{- define "gorgon.redis.env" -}}
{{- $root := .root }}
{{- if $root.Values.redis.enabled }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "gorgon.redis.passwordSecretName" $root }}
      key: {{ index $root.Values.redis.auth.secretKeys .user }}
- name: REDIS_URL
  value: {{ printf "redis://%s:$(REDIS_PASSWORD)@%s:6379/0" .user (include "gorgon.redis.host" $root) | quote }}
{{- else }}
{{- if not (or $root.Values.redis.external.url $root.Values.redis.external.existingSecret) }}
{{- fail "redis.enabled is false: set redis.external.url or redis.external.existingSecret" }}
{{- end }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "gorgon.redis.urlSecretName" $root }}
      key: {{ $root.Values.redis.external.secretKey }}
{{- end }}
- name: GORGON_REDIS_NAMESPACE
  value: {{ $root.Values.redisNamespace | quote }}
{{- end }}

{{/* What each ACL user of the bundled Redis may do: the commands its component's code issues (scripts included:
Redis checks the commands a script calls, and a script's declared keys need read and write) on its namespace's
keys and channels only. One line per user: the name, then its rules; the password hash is added when the pod
starts (redis-statefulset.yaml). tests/reliability/test_redis_acl.py runs each component's code under its user. */}}
{{- define "gorgon.redis.aclRules" -}}
{{- $ns := .Values.redisNamespace -}}
default ~* &* +@all
api -@all +ping +info +evalsha +script|load +xlen +xadd +xrange +set +get +lrange +incrby +expire +smembers +srem +exists +mget +scan +subscribe {{ printf "~%s:requests:* ~%s:cancel:* ~%s:ratelimit:* ~%s:worker-index ~%s:workers:* %%R~%s:result:* %%R~%s:progress:* %%R~%s:held:* &%s:replies:*" $ns $ns $ns $ns $ns $ns $ns $ns $ns }}
worker -@all +ping +evalsha +script|load +xgroup|create +xreadgroup +xack +xdel +xclaim +xautoclaim +xadd +get +set +rpush +expire +pexpire +exists +lrange +mget +sadd +srem +del +publish {{ printf "~%s:requests:* ~%s:dead:* ~%s:attempt:* ~%s:progress:* ~%s:result:* ~%s:cancel:* ~%s:held:* ~%s:workers:* ~%s:worker-index &%s:replies:*" $ns $ns $ns $ns $ns $ns $ns $ns $ns $ns }}
operator -@all +ping +xlen {{ printf "%%R~%s:requests:*" $ns }}
{{ end }}

{{/* Environment shared by the api, worker and operator containers: gorgon.commonEnv (dict "root" $ "user" "api"). */}}
{{- define "gorgon.commonEnv" -}}
{{- $root := .root -}}
{{ include "gorgon.redis.env" . | trim }}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- if $root.Values.tracing.enabled }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $root.Values.tracing.otlpEndpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: http/protobuf
- name: OTEL_TRACES_SAMPLER
  value: parentbased_traceidratio
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ $root.Values.tracing.sampleRatio | quote }}
{{- end }}
{{- with $root.Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* OTEL_SERVICE_NAME of one component: gorgon.serviceNameEnv "api". */}}
{{- define "gorgon.serviceNameEnv" -}}
- name: OTEL_SERVICE_NAME
  value: {{ printf "gorgon-%s" . | quote }}
{{- end }}

{{/* API keys. */}}
{{- define "gorgon.api.keySecretName" -}}
{{- default (include "gorgon.componentName" (dict "root" . "component" "api-key")) .Values.api.auth.existingSecret }}
{{- end }}

{{/* Worker. */}}
{{- define "gorgon.worker.name" -}}
{{- include "gorgon.componentName" (dict "root" . "component" "worker") }}
{{- end }}

{{- define "gorgon.worker.hfTokenSecretName" -}}
{{- default (include "gorgon.componentName" (dict "root" . "component" "hf-token")) .Values.worker.hfToken.existingSecret }}
{{- end }}

{{- define "gorgon.worker.hasHfToken" -}}
{{- if or .Values.worker.hfToken.existingSecret .Values.worker.hfToken.value }}true{{- end }}
{{- end }}

{{- define "gorgon.worker.modelCacheClaim" -}}
{{- default (include "gorgon.componentName" (dict "root" . "component" "model-cache")) .Values.worker.modelCache.existingClaim }}
{{- end }}

{{/* Operator. */}}
{{- define "gorgon.operator.name" -}}
{{- include "gorgon.componentName" (dict "root" . "component" "operator") }}
{{- end }}

{{/* A writable /tmp for read-only root filesystems. */}}
{{- define "gorgon.tmpVolumeMount" -}}
- name: tmp
  mountPath: /tmp
{{- end }}

{{/* The /tmp volume: gorgon.tmpVolume "256Mi". */}}
{{- define "gorgon.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ . }}
{{- end }}

{{/* The WorkerPool CRD, read from crds/workerpools.yaml so its group, version and kind have one source. */}}
{{- define "gorgon.crd" -}}
{{- $crd := .Files.Get "crds/workerpools.yaml" | fromYaml }}
{{- if not $crd.spec }}
{{- fail "crds/workerpools.yaml is missing or holds no CustomResourceDefinition" }}
{{- end }}
{{- $storage := list }}
{{- range $crd.spec.versions }}{{ if .storage }}{{ $storage = append $storage .name }}{{ end }}{{ end }}
{{- dict "group" $crd.spec.group "version" (first $storage) "kind" $crd.spec.names.kind "plural" $crd.spec.names.plural | toJson }}
{{- end }}

{{- define "gorgon.crd.group" -}}
{{- (include "gorgon.crd" . | fromJson).group }}
{{- end }}

{{- define "gorgon.crd.version" -}}
{{- (include "gorgon.crd" . | fromJson).version }}
{{- end }}

{{- define "gorgon.crd.kind" -}}
{{- (include "gorgon.crd" . | fromJson).kind }}
{{- end }}

{{- define "gorgon.crd.plural" -}}
{{- (include "gorgon.crd" . | fromJson).plural }}
{{- end }}

{{/* Seconds the worker may spend finishing its batch after SIGTERM: the grace period less the preStop sleep and
a margin to hand unfinished requests back to the queue. */}}
{{- define "gorgon.worker.drainSeconds" -}}
{{- $drain := sub (sub (int .Values.worker.terminationGracePeriodSeconds) (int .Values.worker.preStopSleepSeconds)) 10 }}
{{- if lt $drain 1 }}
{{- fail "worker.terminationGracePeriodSeconds must exceed worker.preStopSleepSeconds by more than 10 seconds" }}
{{- end }}
{{- $drain }}
{{- end }}

{{/* Longest a worker may take to load its model: what its startup probe allows. */}}
{{- define "gorgon.worker.startupBudgetSeconds" -}}
{{- $probe := .Values.worker.probes.startup }}
{{- add (int (default 0 $probe.initialDelaySeconds)) (mul (int (default 10 $probe.periodSeconds)) (int (default 3 $probe.failureThreshold))) }}
{{- end }}

{{/* The name the workers serve their model under, which names the Redis stream the operator measures: the
chart sets it on both sides whenever it is known, so they cannot disagree. Empty: both use their defaults. */}}
{{- define "gorgon.worker.servedModel" -}}
{{- default (.Values.worker.model.name | trimSuffix "/") .Values.worker.model.servedName }}
{{- end }}

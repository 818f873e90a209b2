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

{{/* Labels of one component's pods: the labels of every object, then the component's podLabels, which may add
labels but not change the chart's (the selectors rely on them): gorgon.podLabels (dict "root" $ "component" "api"
"podLabels" .Values.api.podLabels). */}}
{{- define "gorgon.podLabels" -}}
{{ include "gorgon.labels" . }}
{{- $own := include "gorgon.labels" . | fromYaml }}
{{- range $key, $value := .podLabels }}
{{- if not (hasKey $own $key) }}
{{ $key }}: {{ $value | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* Image reference: gorgon.image (dict "root" $ "image" .Values.api.image). global.imageRegistry replaces the
registry host the repository starts with (a first path part with a dot or a port, or localhost), or is put in
front of a repository without one. */}}
{{- define "gorgon.image" -}}
{{- $repository := .image.repository }}
{{- $registry := .root.Values.global.imageRegistry | trimSuffix "/" }}
{{- if $registry }}
{{- $parts := splitList "/" $repository }}
{{- $host := first $parts }}
{{- if and (gt (len $parts) 1) (or (contains "." $host) (contains ":" $host) (eq $host "localhost")) }}
{{- $repository = join "/" (rest $parts) }}
{{- end }}
{{- $repository = printf "%s/%s" $registry $repository }}
{{- end }}
{{- printf "%s:%s" $repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}

{{/* The imagePullSecrets field of every pod: global.imagePullSecrets (names or {name}) and imagePullSecrets,
each name once; empty when there are none. */}}
{{- define "gorgon.imagePullSecrets" -}}
{{- $names := list }}
{{- range concat .Values.global.imagePullSecrets .Values.imagePullSecrets }}
{{- if kindIs "string" . }}
{{- $names = append $names . }}
{{- else }}
{{- $names = append $names .name }}
{{- end }}
{{- end }}
{{- with $names | uniq -}}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end }}

{{/* ServiceAccount of one component's pods: gorgon.serviceAccountName (dict "root" $ "component" "api"
"serviceAccount" .Values.api.serviceAccount). */}}
{{- define "gorgon.serviceAccountName" -}}
{{- if .serviceAccount.create }}
{{- default (include "gorgon.componentName" .) .serviceAccount.name }}
{{- else }}
{{- default "default" .serviceAccount.name }}
{{- end }}
{{- end }}

{{/* checksum/secret of a component's pods: gorgon.checksumSecret (dict "root" $ "templates" (list ...)), the
digest of the chart's Secret templates the pods read whose content the user gives in values (the external Redis
URL, the Hugging Face token), so a new value rolls the pods that read it. The generated Secrets (API key, Redis
passwords) are left out on purpose: under `helm install/upgrade` `lookup` keeps their content, so there is no
change to roll for, while under `helm template` (Argo CD and other GitOps tools) nothing can be looked up, their
content is new on every render, and its digest would roll every pod on every sync. A Secret named by an
existingSecret value is outside the chart: its name is in the pod template already, and a change of its content
needs a rollout restart (docs/deploy.md). */}}
{{- define "gorgon.checksumSecret" -}}
{{- $root := .root }}
{{- $rendered := list }}
{{- range .templates }}
{{- $rendered = append $rendered (include (print $root.Template.BasePath "/" .) $root) }}
{{- end }}
{{- join "---\n" $rendered | sha256sum }}
{{- end }}

{{/* Autoscaling: which autoscaler owns the worker count. */}}
{{- define "gorgon.operator.enabled" -}}
{{- if eq .Values.autoscaling.mode "operator" }}true{{ end }}
{{- end }}

{{- define "gorgon.keda.enabled" -}}
{{- if eq .Values.autoscaling.mode "keda" }}true{{ end }}
{{- end }}

{{- define "gorgon.keda.triggerAuthenticationName" -}}
{{- include "gorgon.componentName" (dict "root" . "component" "keda") }}
{{- end }}

{{/* Fail on worker bounds an autoscaler cannot keep: gorgon.worker.checkBounds (dict "min" 0 "max" 4
"name" "autoscaling.keda.minReplicaCount" "maxName" "autoscaling.keda.maxReplicaCount"). */}}
{{- define "gorgon.worker.checkBounds" -}}
{{- if gt (int .min) (int .max) }}
{{- fail (printf "%s must not exceed %s" .name .maxName) }}
{{- end }}
{{- end }}

{{/* The value that lets the worker pool down to zero, as "name=value" ("autoscaling.keda.minReplicaCount=0"), or
empty when the pool always keeps a worker (or the chart makes no autoscaler object whose minimum it knows). A
WorkerPool's minReplicas may come from operator.workerPool.extraSpec, which wins over the value. */}}
{{- define "gorgon.worker.zeroMinimum" -}}
{{- if include "gorgon.keda.enabled" . }}
{{- if eq (int .Values.autoscaling.keda.minReplicaCount) 0 }}autoscaling.keda.minReplicaCount=0{{ end }}
{{- else if and (include "gorgon.operator.enabled" .) .Values.operator.workerPool.create }}
{{- $pool := .Values.operator.workerPool }}
{{- if hasKey $pool.extraSpec "minReplicas" }}
{{- if eq (int $pool.extraSpec.minReplicas) 0 }}operator.workerPool.extraSpec.minReplicas=0{{ end }}
{{- else if eq (int $pool.minReplicas) 0 }}operator.workerPool.minReplicas=0{{ end }}
{{- end }}
{{- end }}

{{/* Redis. */}}
{{- define "gorgon.redis.host" -}}
{{- include "gorgon.componentName" (dict "root" . "component" "redis") }}
{{- end }}

{{- define "gorgon.redis.passwordSecretName" -}}
{{- default (include "gorgon.componentName" (dict "root" . "component" "redis")) .Values.redis.auth.existingSecret }}
{{- end }}

{{/* The bundled Redis's users: `default` (administration, probes) and one per installed component that talks to
Redis, as a JSON list. */}}
{{- define "gorgon.redis.users" -}}
{{- $users := list "default" "api" "worker" }}
{{- if include "gorgon.operator.enabled" . }}
{{- $users = append $users "operator" }}
{{- end }}
{{- if include "gorgon.keda.enabled" . }}
{{- $users = append $users "keda" }}
{{- end }}
{{- toJson $users }}
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
keys and channels only. One line per user of gorgon.redis.users: the name, then its rules; the password hash is
added when the pod starts (redis-statefulset.yaml). `keda` is KEDA's redis-streams scaler with streamLength: PING
when it connects, then XLEN of the request stream (worker-scaledobject.yaml). tests/chart/test_chart_redis_acl.py
runs each component's code under its user. */}}
{{- define "gorgon.redis.aclRules" -}}
{{- $ns := .Values.redisNamespace -}}
default ~* &* +@all
api -@all +ping +info +evalsha +script|load +xlen +xadd +xrange +set +get +lrange +incrby +expire +smembers +srem +exists +mget +scan +subscribe {{ printf "~%s:requests:* ~%s:cancel:* ~%s:ratelimit:* ~%s:worker-index ~%s:workers:* %%R~%s:result:* %%R~%s:progress:* %%R~%s:held:* &%s:replies:*" $ns $ns $ns $ns $ns $ns $ns $ns $ns }}
worker -@all +ping +evalsha +script|load +xgroup|create +xreadgroup +xack +xdel +xclaim +xautoclaim +xadd +xlen +xpending +get +set +rpush +expire +pexpire +exists +lrange +mget +sadd +smembers +scan +srem +del +publish {{ printf "~%s:requests:* ~%s:dead:* ~%s:attempt:* ~%s:progress:* ~%s:result:* ~%s:cancel:* ~%s:held:* ~%s:workers:* ~%s:worker-index &%s:replies:*" $ns $ns $ns $ns $ns $ns $ns $ns $ns $ns }}
{{- if include "gorgon.operator.enabled" . }}
operator -@all +ping +xlen {{ printf "%%R~%s:requests:*" $ns }}
{{- end }}
{{- if include "gorgon.keda.enabled" . }}
keda -@all +ping +xlen {{ printf "%%R~%s:requests:*" $ns }}
{{- end }}
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

{{- define "gorgon.operator.serviceAccountName" -}}
{{- include "gorgon.serviceAccountName" (dict "root" . "component" "operator" "serviceAccount" .Values.operator.serviceAccount) }}
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

{{/* The engine's default model (core/defaults.py, engine/config.py): the name it is served under and its context
window (the GGUF's llama.context_length, which the engine reads as max_position_embeddings). tests/chart check
both against the code and the model file. */}}
{{- define "gorgon.defaultModel" -}}
{{- dict "name" "HuggingFaceTB/SmolLM2-135M-Instruct" "contextLength" 8192 | toJson }}
{{- end }}

{{/* The name the workers serve their model under, whoever sets it: the chart, else the engine's default. */}}
{{- define "gorgon.worker.modelName" -}}
{{- default (include "gorgon.defaultModel" . | fromJson).name (include "gorgon.worker.servedModel" .) }}
{{- end }}

{{/* The name the workers queue under, as the chart sets it (GORGON_ENGINE_SERVED_MODEL_NAME). KEDA needs a stream name
even when no model is set: then it is the engine's default model name, given to the workers too, so the stream
KEDA reads is always the one they consume. */}}
{{- define "gorgon.worker.queuedModel" -}}
{{- if include "gorgon.keda.enabled" . }}
{{- include "gorgon.worker.modelName" . }}
{{- else }}
{{- include "gorgon.worker.servedModel" . }}
{{- end }}
{{- end }}

{{/* GORGON_API_SERVED_MODELS (`name:context_length,...`): the models the API queues requests for with no worker
up, so that a request reaches a pool scaled to zero and wakes it. api.servedModels, else the workers' model when
it is the engine's default, whose context window the chart knows. With the pool able to reach zero the workers'
model must be among them: the API would otherwise answer 503 no_workers and nothing would ever wake a worker. */}}
{{- define "gorgon.api.servedModels" -}}
{{- $default := include "gorgon.defaultModel" . | fromJson }}
{{- $workerModel := include "gorgon.worker.modelName" . }}
{{- $models := .Values.api.servedModels }}
{{- $loaded := .Values.worker.model.name | trimSuffix "/" }}
{{- if and (not $models) (or (not $loaded) (eq $loaded $default.name)) }}
{{- $models = list (dict "name" $workerModel "contextLength" $default.contextLength) }}
{{- end }}
{{- $entries := list }}
{{- $names := list }}
{{- range $models }}
{{- $entries = append $entries (printf "%s:%d" .name (int .contextLength)) }}
{{- $names = append $names .name }}
{{- end }}
{{- with include "gorgon.worker.zeroMinimum" . }}
{{- if not (has $workerModel $names) }}
{{- fail (printf "%s (scale to zero) needs the workers' model in api.servedModels: [{name: %s, contextLength: <its context window in tokens>}]; without it the API refuses the model's requests while no worker is up (503 no_workers), so no request would ever wake one" . (quote $workerModel)) }}
{{- end }}
{{- end }}
{{- join "," $entries }}
{{- end }}

{{/* Seconds the API gives its open streams after SIGTERM (GORGON_API_SHUTDOWN_GRACE_S): the grace period less the
preStop sleep and a margin for the API's own shutdown, so uvicorn ends the streams before the kubelet kills it. */}}
{{- define "gorgon.api.shutdownGraceSeconds" -}}
{{- $grace := sub (sub (int .Values.api.terminationGracePeriodSeconds) (int .Values.api.preStopSleepSeconds)) 10 }}
{{- if lt $grace 1 }}
{{- fail "api.terminationGracePeriodSeconds must exceed api.preStopSleepSeconds by more than 10 seconds" }}
{{- end }}
{{- $grace }}
{{- end }}

{{/* Chart name. */}}
{{- define "controlplane.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Fully qualified name: <release>-<chart>, unless the release name already contains it. */}}
{{- define "controlplane.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "controlplane.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "controlplane.selectorLabels" -}}
app.kubernetes.io/name: {{ include "controlplane.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "controlplane.labels" -}}
helm.sh/chart: {{ include "controlplane.chart" . }}
{{ include "controlplane.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/component: controlplane
app.kubernetes.io/part-of: voice-controlplane
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "controlplane.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "controlplane.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "controlplane.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* Secret holding the tokens file. */}}
{{- define "controlplane.tokensSecretName" -}}
{{- default (printf "%s-tokens" (include "controlplane.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{/* Directory the tokens Secret is mounted at; the file inside is always "tokens". */}}
{{- define "controlplane.tokensDir" -}}/etc/controlplane/tokens{{- end -}}

{{/* Name of the in-cluster NATS service created by the nats subchart. */}}
{{- define "controlplane.natsSubchartHost" -}}
{{- if .Values.nats.fullnameOverride -}}
{{- .Values.nats.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains "nats" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-nats" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Fullname of the Bitnami redis subchart (its Secret; the service adds "-master"). */}}
{{- define "controlplane.redisSubchartName" -}}
{{- if .Values.redis.fullnameOverride -}}
{{- .Values.redis.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains "redis" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-redis" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* "true" when a shared NATS bus is configured (external or subchart). */}}
{{- define "controlplane.hasNats" -}}
{{- if or .Values.nats.enabled .Values.externalNats.url .Values.externalNats.urlSecret.name -}}true{{- end -}}
{{- end -}}

{{- define "controlplane.hasRedis" -}}
{{- if or .Values.redis.enabled .Values.externalRedis.url .Values.externalRedis.urlSecret.name -}}true{{- end -}}
{{- end -}}

{{/* terminationGracePeriodSeconds: preStop + drain + close margin unless set explicitly. */}}
{{- define "controlplane.minGracePeriod" -}}
{{- add (int .Values.shutdown.preStopSleepSeconds) (int .Values.shutdown.drainSeconds) (int .Values.shutdown.closeMarginSeconds) -}}
{{- end -}}

{{- define "controlplane.gracePeriod" -}}
{{- $min := include "controlplane.minGracePeriod" . | int -}}
{{- if kindIs "invalid" .Values.shutdown.terminationGracePeriodSeconds -}}
{{- $min -}}
{{- else -}}
{{- .Values.shutdown.terminationGracePeriodSeconds | int -}}
{{- end -}}
{{- end -}}

{{/* Cross-field checks the JSON schema cannot express; fail with an actionable message. */}}
{{- define "controlplane.validate" -}}
{{- $replicas := .Values.replicaCount | int -}}
{{- if .Values.autoscaling.enabled -}}
{{- $replicas = .Values.autoscaling.maxReplicas | int -}}
{{- if lt (.Values.autoscaling.maxReplicas | int) (.Values.autoscaling.minReplicas | int) -}}
{{- fail "autoscaling.maxReplicas must be >= autoscaling.minReplicas" -}}
{{- end -}}
{{- end -}}
{{- if and (gt $replicas 1) (not (and (include "controlplane.hasNats" .) (include "controlplane.hasRedis" .))) -}}
{{- fail "more than one replica needs a shared NATS bus and Redis registry: set externalNats.url (or urlSecret, or nats.enabled) and externalRedis.url (or urlSecret, or redis.enabled); the embedded defaults are single-replica only" -}}
{{- end -}}
{{- if and .Values.nats.enabled (not (hasKey .Subcharts "nats")) -}}
{{- fail "nats.enabled=true but the nats subchart is not vendored: run `helm dependency update deploy/helm/controlplane` first (or use externalNats.url)" -}}
{{- end -}}
{{- if and .Values.redis.enabled (not (hasKey .Subcharts "redis")) -}}
{{- fail "redis.enabled=true but the redis subchart is not vendored: run `helm dependency update deploy/helm/controlplane` first (or use externalRedis.url)" -}}
{{- end -}}
{{- if and .Values.nats.enabled (or .Values.externalNats.url .Values.externalNats.urlSecret.name) -}}
{{- fail "set either nats.enabled or externalNats, not both" -}}
{{- end -}}
{{- if and .Values.redis.enabled (or .Values.externalRedis.url .Values.externalRedis.urlSecret.name) -}}
{{- fail "set either redis.enabled or externalRedis, not both" -}}
{{- end -}}
{{- if lt (include "controlplane.gracePeriod" . | int) (include "controlplane.minGracePeriod" . | int) -}}
{{- fail (printf "shutdown.terminationGracePeriodSeconds (%v) is shorter than preStopSleepSeconds + drainSeconds + closeMarginSeconds (%s): the kubelet would SIGKILL live sessions mid-drain" .Values.shutdown.terminationGracePeriodSeconds (include "controlplane.minGracePeriod" .)) -}}
{{- end -}}
{{- range .Values.extraEnv -}}
{{- if and (has .name (list "CONTROLPLANE_TOKENS" "CONTROLPLANE_POLICY_SIGNING_KEY")) (hasKey . "value") -}}
{{- fail (printf "extraEnv %s has a plain value: the secret would be readable in the Deployment by anyone who may read it; use auth.tokens / auth.existingSecret (tokens), or valueFrom.secretKeyRef" .name) -}}
{{- end -}}
{{- end -}}
{{- end -}}

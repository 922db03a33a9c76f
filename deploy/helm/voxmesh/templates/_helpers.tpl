{{/*
Names, labels and the pieces every component repeats.
Most helpers take (dict "root" $ "key" "<values key>" "component" "<name>").
*/}}

{{- define "voxmesh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "voxmesh.fullname" -}}
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

{{- define "voxmesh.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <fullname>-<component>, e.g. voxmesh-stt */}}
{{- define "voxmesh.componentName" -}}
{{- printf "%s-%s" (include "voxmesh.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Fully qualified DNS name of a component's Service. */}}
{{- define "voxmesh.componentHost" -}}
{{- printf "%s.%s.svc.%s" (include "voxmesh.componentName" .) .root.Release.Namespace .root.Values.clusterDomain -}}
{{- end -}}

{{- define "voxmesh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "voxmesh.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "voxmesh.labels" -}}
helm.sh/chart: {{ include "voxmesh.chart" .root }}
{{ include "voxmesh.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: voxmesh
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* <registry>/<repository><suffix>:<tag> */}}
{{- define "voxmesh.image" -}}
{{- $v := index .root.Values .key -}}
{{- $tag := $v.image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- $repo := printf "%s%s" $v.image.repository ($v.image.suffix | default "") -}}
{{- if .root.Values.image.registry -}}
{{- printf "%s/%s:%s" (trimSuffix "/" .root.Values.image.registry) $repo (toString $tag) -}}
{{- else -}}
{{- printf "%s:%s" $repo (toString $tag) -}}
{{- end -}}
{{- end -}}

{{- define "voxmesh.imagePullSecrets" -}}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The engine (hpa|keda) of a component's autoscaler. */}}
{{- define "voxmesh.autoscalingEngine" -}}
{{- $v := index .root.Values .key -}}
{{- $v.autoscaling.engine | default .root.Values.autoscaling.engine -}}
{{- end -}}

{{/* Seconds a pod may take to stop: preStop wait + drain grace + margin. */}}
{{- define "voxmesh.terminationGrace" -}}
{{- $v := index .root.Values .key -}}
{{- add (int .root.Values.preStopDelaySeconds) (int (ceil $v.drainGraceSeconds)) (int .root.Values.shutdownMarginSeconds) -}}
{{- end -}}

{{/* Resources with the GPU request/limit added when gpu.enabled. */}}
{{- define "voxmesh.resources" -}}
{{- $v := index .root.Values .key -}}
{{- $res := deepCopy ($v.resources | default dict) -}}
{{- $gpu := $v.gpu | default dict -}}
{{- if $gpu.enabled -}}
{{- $limits := $res.limits | default dict -}}
{{- $requests := $res.requests | default dict -}}
{{- $_ := set $limits $gpu.resourceName (int $gpu.count) -}}
{{- $_ := set $requests $gpu.resourceName (int $gpu.count) -}}
{{- $_ := set $res "limits" $limits -}}
{{- $_ := set $res "requests" $requests -}}
{{- end -}}
{{- toYaml $res -}}
{{- end -}}

{{/* `settings` map -> VOXMESH_<PREFIX>_<FIELD> env entries. */}}
{{- define "voxmesh.settingsEnv" -}}
{{- $prefix := .prefix -}}
{{- range $k, $val := .settings }}
- name: {{ printf "%s_%s" $prefix ($k | snakecase | upper) }}
  value: {{ $val | toString | quote }}
{{- end }}
{{- end -}}

{{/* The Redis password Secret (in-cluster Redis). */}}
{{- define "voxmesh.redisSecretName" -}}
{{- if .Values.redis.auth.existingSecret -}}
{{- .Values.redis.auth.existingSecret -}}
{{- else -}}
{{- printf "%s-redis" (include "voxmesh.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/*
Env entries that give a service its Redis URL in env var .name:
(dict "root" $ "name" "VOXMESH_ORCHESTRATOR_REDIS_URL")
*/}}
{{- define "voxmesh.redisEnv" -}}
{{- $r := .root.Values.redis -}}
{{- if $r.enabled }}
{{- $host := include "voxmesh.componentHost" (dict "root" .root "component" "redis") }}
{{- if $r.auth.enabled }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "voxmesh.redisSecretName" .root }}
      key: {{ $r.auth.existingSecretPasswordKey }}
- name: {{ .name }}
  value: {{ printf "redis://:$(REDIS_PASSWORD)@%s:6379/0" $host | quote }}
{{- else }}
- name: {{ .name }}
  value: {{ printf "redis://%s:6379/0" $host | quote }}
{{- end }}
{{- else if $r.external.urlSecret.name }}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ $r.external.urlSecret.name }}
      key: {{ $r.external.urlSecret.key }}
{{- else }}
{{- $url := required "redis.external.url or redis.external.urlSecret.name is required when redis.enabled is false" $r.external.url }}
{{- if $r.external.passwordSecret.name }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $r.external.passwordSecret.name }}
      key: {{ $r.external.passwordSecret.key }}
{{- end }}
- name: {{ .name }}
  value: {{ $url | quote }}
{{- end }}
{{- end -}}

{{/* Volumes every voxmesh pod has (a writable /tmp; the root filesystem is read-only). */}}
{{- define "voxmesh.commonVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 1Gi
{{- end -}}

{{- define "voxmesh.commonVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{- define "voxmesh.commonEnv" -}}
- name: HOME
  value: /tmp
- name: XDG_CACHE_HOME
  value: /tmp/.cache
{{- end -}}

{{/* Scheduling fields shared by every pod: (dict "v" <component values>) */}}
{{- define "voxmesh.scheduling" -}}
{{- with .v.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .v.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Default affinity: spread replicas over nodes (preferred). */}}
{{- define "voxmesh.affinity" -}}
{{- if .v.affinity }}
affinity:
  {{- toYaml .v.affinity | nindent 2 }}
{{- else }}
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "voxmesh.selectorLabels" . | nindent 14 }}
{{- end }}
{{- end -}}

{{/* Extra labels on every alert (monitoring.rules.alertLabels). */}}
{{- define "voxmesh.alertLabels" -}}
{{- with .Values.monitoring.rules.alertLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

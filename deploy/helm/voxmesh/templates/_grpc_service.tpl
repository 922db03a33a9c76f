{{/*
A gRPC pool (stt, llm, tts, orchestrator): Deployment + headless Service.

(dict "root" $ "key" "stt" "component" "stt" "prefix" "VOXMESH_STT"
      "graceEnv" "GRACE_S" "env" <extra env entries as YAML> "rbac" false)

The headless Service makes `dns:///<name>.<ns>.svc...:<port>` resolve to every
ready pod, so gRPC clients balance streams round_robin (one ClusterIP would pin
each long-lived HTTP/2 connection to one pod), and it is the Service whose
EndpointSlices the orchestrator watches for llm replicas.
*/}}
{{- define "voxmesh.grpcService" -}}
{{- $root := .root -}}
{{- $v := index $root.Values .key -}}
{{- $ctx := dict "root" $root "key" .key "component" .component -}}
{{- $name := include "voxmesh.componentName" $ctx -}}
{{- $engine := include "voxmesh.autoscalingEngine" $ctx -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ $name }}
  labels:
    {{- include "voxmesh.labels" $ctx | nindent 4 }}
    voxmesh.io/scrape: "true"
spec:
  clusterIP: None
  selector:
    {{- include "voxmesh.selectorLabels" $ctx | nindent 4 }}
  ports:
    - name: grpc
      port: {{ $v.port }}
      targetPort: grpc
      protocol: TCP
      appProtocol: kubernetes.io/h2c
    - name: metrics
      port: {{ $v.metricsPort }}
      targetPort: metrics
      protocol: TCP
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}
  labels:
    {{- include "voxmesh.labels" $ctx | nindent 4 }}
spec:
  {{- if not $v.autoscaling.enabled }}
  replicas: {{ $v.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  strategy:
    {{- toYaml $v.strategy | nindent 4 }}
  selector:
    matchLabels:
      {{- include "voxmesh.selectorLabels" $ctx | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "voxmesh.labels" $ctx | nindent 8 }}
      annotations:
        kubectl.kubernetes.io/default-container: {{ .component }}
        {{- with $v.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ $name }}
      automountServiceAccountToken: {{ .rbac | default false }}
      {{- with include "voxmesh.imagePullSecrets" $root | trim }}{{- . | nindent 6 }}{{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      terminationGracePeriodSeconds: {{ include "voxmesh.terminationGrace" $ctx }}
      {{- with include "voxmesh.scheduling" (dict "v" $v) | trim }}{{- . | nindent 6 }}{{- end }}
      {{- include "voxmesh.affinity" (merge (dict "v" $v) $ctx) | trim | nindent 6 }}
      containers:
        - name: {{ .component }}
          image: {{ include "voxmesh.image" $ctx }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          ports:
            - name: grpc
              containerPort: {{ $v.port }}
              protocol: TCP
            - name: metrics
              containerPort: {{ $v.metricsPort }}
              protocol: TCP
          env:
            {{- include "voxmesh.commonEnv" $root | nindent 12 }}
            - name: {{ .prefix }}_PORT
              value: {{ $v.port | quote }}
            - name: {{ .prefix }}_METRICS_PORT
              value: {{ $v.metricsPort | quote }}
            - name: {{ .prefix }}_{{ .graceEnv }}
              value: {{ $v.drainGraceSeconds | quote }}
            {{- with .env }}
            {{- . | nindent 12 }}
            {{- end }}
            {{- with include "voxmesh.settingsEnv" (dict "prefix" .prefix "settings" $v.settings) | trim }}{{- . | nindent 12 }}{{- end }}
            {{- with $v.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          resources:
            {{- include "voxmesh.resources" $ctx | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.containerSecurityContext | nindent 12 }}
          # grpc.health.v1 on the serving port: NOT_SERVING from SIGTERM on.
          startupProbe:
            grpc:
              port: {{ $v.port }}
            periodSeconds: 5
            timeoutSeconds: 3
            failureThreshold: {{ $v.startupProbe.failureThreshold }}
          readinessProbe:
            grpc:
              port: {{ $v.port }}
            periodSeconds: 5
            timeoutSeconds: 3
            failureThreshold: 2
          livenessProbe:
            grpc:
              port: {{ $v.port }}
            periodSeconds: 10
            timeoutSeconds: 5
            failureThreshold: 6
          lifecycle:
            preStop:
              exec:
                command: ["sleep", "{{ $root.Values.preStopDelaySeconds }}"]
          volumeMounts:
            {{- include "voxmesh.commonVolumeMounts" $root | nindent 12 }}
            {{- if and $v.modelVolume $v.modelVolume.enabled }}
            - name: models
              mountPath: {{ $v.modelVolume.mountPath }}
              readOnly: true
            {{- end }}
            {{- if and $v.shm $v.shm.enabled }}
            - name: dshm
              mountPath: /dev/shm
            {{- end }}
            {{- with $v.extraVolumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
      volumes:
        {{- include "voxmesh.commonVolumes" $root | nindent 8 }}
        {{- if and $v.modelVolume $v.modelVolume.enabled }}
        - name: models
          {{- if $v.modelVolume.claimName }}
          persistentVolumeClaim:
            claimName: {{ $v.modelVolume.claimName }}
            readOnly: true
          {{- else if $v.modelVolume.source }}
          {{- toYaml $v.modelVolume.source | nindent 10 }}
          {{- else }}
          {{- fail (printf "%s.modelVolume: set claimName or source" .key) }}
          {{- end }}
        {{- end }}
        {{- if and $v.shm $v.shm.enabled }}
        - name: dshm
          emptyDir:
            medium: Memory
            sizeLimit: {{ $v.shm.sizeLimit }}
        {{- end }}
        {{- with $v.extraVolumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
{{- end -}}

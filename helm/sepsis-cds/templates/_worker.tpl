{{/*
A Celery worker Deployment, shared by the CPU pool and the GPU pool:
(dict "root" $ "component" "worker"|"gpu-worker" "pool" <values> "gpu" bool).
The command is the one `make run` starts (cds_service/devrun.py), with the pod's hostname.
*/}}
{{- define "sepsis-cds.workerDeployment" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $pool := .pool -}}
{{- $labels := dict "root" $root "component" .component -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "sepsis-cds.fullname" $root }}-{{ .component }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "sepsis-cds.componentLabels" $labels | nindent 4 }}
spec:
  {{- if not (and (not .gpu) $v.workers.keda.enabled) }}
  replicas: {{ $pool.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "sepsis-cds.componentSelectorLabels" $labels | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "sepsis-cds.componentLabels" $labels | nindent 8 }}
        {{- with $v.workers.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        {{- include "sepsis-cds.workerChecksums" $root | nindent 8 }}
        {{- with $pool.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      {{- include "sepsis-cds.podCommon" $root | nindent 6 }}
      terminationGracePeriodSeconds: {{ $v.workers.terminationGracePeriodSeconds }}
      {{- with $v.workers.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      {{- if .gpu }}
      {{- with $pool.runtimeClassName }}
      runtimeClassName: {{ . }}
      {{- end }}
      {{- end }}
      containers:
        - name: worker
          image: {{ ternary (include "sepsis-cds.gpuImage" $root) (include "sepsis-cds.image" $root) .gpu }}
          imagePullPolicy: {{ $v.image.pullPolicy }}
          command:
            - celery
            - -A
            - workers.main
            - worker
            - --loglevel={{ $v.workers.logLevel }}
            - --concurrency={{ $pool.concurrency }}
            - --queues={{ join "," $pool.queues }}
            # $(POD_NAME) is expanded by Kubernetes: each pod is its own Celery node.
            - --hostname={{ .component }}@$(POD_NAME)
            - --without-gossip
            - --without-mingle
            {{- with $v.workers.extraArgs }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          envFrom:
            - configMapRef:
                name: {{ include "sepsis-cds.fullname" $root }}
            - configMapRef:
                name: {{ include "sepsis-cds.fullname" $root }}-worker
          env:
            - name: POD_NAME
              valueFrom:
                fieldRef:
                  fieldPath: metadata.name
            {{- if .gpu }}
            - name: CDS_SEPSIS__DEVICE
              value: cuda
            {{- end }}
            {{- include "sepsis-cds.env" (dict "root" $root "worker" true) | nindent 12 }}
            {{- with $pool.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          securityContext:
            {{- toYaml $v.securityContext | nindent 12 }}
          resources:
            {{- if .gpu }}
            requests:
              {{- with $pool.resources.requests }}
              {{- toYaml . | nindent 14 }}
              {{- end }}
              nvidia.com/gpu: {{ $pool.gpus }}
            limits:
              {{- with $pool.resources.limits }}
              {{- toYaml . | nindent 14 }}
              {{- end }}
              nvidia.com/gpu: {{ $pool.gpus }}
            {{- else }}
            {{- toYaml $pool.resources | nindent 12 }}
            {{- end }}
          {{- range $kind := list "livenessProbe" "readinessProbe" }}
          {{- with index $v.workers $kind }}
          {{- if .enabled }}
          {{ $kind }}:
            exec:
              # A broker round trip to this very node; the timeout bounds the probe's own wait.
              command:
                - sh
                - -c
                - exec celery -A workers.main inspect ping --destination={{ $.component }}@"$POD_NAME" --timeout={{ sub .timeoutSeconds 5 }}
            initialDelaySeconds: {{ .initialDelaySeconds }}
            periodSeconds: {{ .periodSeconds }}
            timeoutSeconds: {{ .timeoutSeconds }}
            failureThreshold: {{ .failureThreshold }}
          {{- end }}
          {{- end }}
          {{- end }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- include "sepsis-cds.lifecycleMount" $root | nindent 12 }}
            {{- with include "sepsis-cds.modelMount" $root }}
            {{- . | trim | nindent 12 }}
            {{- end }}
            {{- with $v.workers.extraVolumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
      volumes:
        {{- include "sepsis-cds.volumes" $root | nindent 8 }}
        {{- with $v.workers.extraVolumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $pool.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $pool.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $pool.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $pool.topologySpreadConstraints }}
      topologySpreadConstraints:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end -}}

{{/* vim: set filetype=mustache: */}}

{{/* The chart name, or nameOverride. */}}
{{- define "sepsis-cds.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The full name: release + chart unless the release name already contains the chart name.
Kept to 52 characters so that "-redis-headless" still fits the 63 of a DNS label.
*/}}
{{- define "sepsis-cds.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Chart name and version, for the helm.sh/chart label. */}}
{{- define "sepsis-cds.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "sepsis-cds.labels" -}}
helm.sh/chart: {{ include "sepsis-cds.chart" . }}
{{ include "sepsis-cds.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: {{ include "sepsis-cds.name" . }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels that select the release's pods (without a component). */}}
{{- define "sepsis-cds.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sepsis-cds.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of one component: (dict "root" $ "component" "api"). */}}
{{- define "sepsis-cds.componentLabels" -}}
{{ include "sepsis-cds.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "api"). */}}
{{- define "sepsis-cds.componentSelectorLabels" -}}
{{ include "sepsis-cds.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The ServiceAccount the pods run as. */}}
{{- define "sepsis-cds.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "sepsis-cds.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
An image reference from (dict "image" <repository/tag/digest> "default" <tag>): the digest when
given, else the tag, else the default tag. A missing tag or `latest` fails the render.
*/}}
{{- define "sepsis-cds.imageRef" -}}
{{- $tag := .image.tag | default .default | toString -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else if or (not $tag) (eq $tag "latest") -}}
{{- fail (printf "image %s needs a pinned tag or digest, not %q" .image.repository $tag) -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* The service image. */}}
{{- define "sepsis-cds.image" -}}
{{- include "sepsis-cds.imageRef" (dict "image" .Values.image "default" .Chart.AppVersion) -}}
{{- end -}}

{{/* The GPU pool's image: its own fields, falling back to the service image's. */}}
{{- define "sepsis-cds.gpuImage" -}}
{{- $gpu := .Values.gpuWorkers.image -}}
{{- $image := dict
  "repository" ($gpu.repository | default .Values.image.repository)
  "tag" ($gpu.tag | default .Values.image.tag)
  "digest" $gpu.digest -}}
{{- include "sepsis-cds.imageRef" (dict "image" $image "default" .Chart.AppVersion) -}}
{{- end -}}

{{/* Names of the chart's Secrets and ConfigMaps. */}}
{{- define "sepsis-cds.secretName" -}}
{{- .Values.secrets.existingSecret | default (include "sepsis-cds.fullname" .) -}}
{{- end -}}
{{- define "sepsis-cds.jwksSecretName" -}}
{{- .Values.jwks.existingSecret | default (printf "%s-jwks" (include "sepsis-cds.fullname" .)) -}}
{{- end -}}
{{- define "sepsis-cds.redisName" -}}
{{- printf "%s-redis" (include "sepsis-cds.fullname" .) -}}
{{- end -}}
{{- define "sepsis-cds.redisSecretName" -}}
{{- .Values.redis.auth.existingSecret | default (include "sepsis-cds.redisName" .) -}}
{{- end -}}
{{- define "sepsis-cds.redisExternalSecretName" -}}
{{- .Values.redis.external.existingSecret | default (printf "%s-redis-url" (include "sepsis-cds.fullname" .)) -}}
{{- end -}}

{{- define "sepsis-cds.adminSecretName" -}}
{{- .Values.admin.existingSecret | default (printf "%s-admin" (include "sepsis-cds.fullname" .)) -}}
{{- end -}}

{{/* Whether the admin API is on: token hashes are given or an existing Secret named. */}}
{{- define "sepsis-cds.hasAdmin" -}}
{{- if or .Values.admin.existingSecret .Values.admin.tokens -}}true{{- end -}}
{{- end -}}

{{/* Where the lifecycle policy ConfigMap is mounted, and the file in it. */}}
{{- define "sepsis-cds.lifecycleDir" -}}/etc/cds/lifecycle{{- end -}}
{{- define "sepsis-cds.lifecyclePolicyFile" -}}
{{- printf "%s/policy.toml" (include "sepsis-cds.lifecycleDir" .) -}}
{{- end -}}

{{/* Where the audit archive's volume is mounted: CDS_LIFECYCLE__ARCHIVE_DIR. */}}
{{- define "sepsis-cds.auditArchiveDir" -}}/var/lib/cds/audit{{- end -}}

{{/* The audit archive's claim: the hospital's own (existingClaim), else the chart's. */}}
{{- define "sepsis-cds.auditArchiveClaim" -}}
{{- .Values.audit.archive.persistence.existingClaim | default (printf "%s-audit-archive" (include "sepsis-cds.fullname" .)) -}}
{{- end -}}

{{/* Whether the JWKS volume exists: a JWK Set file is given or an existing Secret named. */}}
{{- define "sepsis-cds.hasJwks" -}}
{{- if or .Values.jwks.existingSecret .Values.jwks.files -}}true{{- end -}}
{{- end -}}

{{/* The in-chart Redis's address as KEDA, in another namespace, resolves it. */}}
{{- define "sepsis-cds.redisAddress" -}}
{{- printf "%s.%s.svc.%s:6379" (include "sepsis-cds.redisName" .) .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{/* The public base URL: the value, else the first ingress host, else the Service address. */}}
{{- define "sepsis-cds.publicBaseUrl" -}}
{{- if .Values.config.publicBaseUrl -}}
{{- .Values.config.publicBaseUrl -}}
{{- else if and .Values.ingress.enabled .Values.ingress.hosts -}}
{{- printf "https://%s" (first .Values.ingress.hosts).host -}}
{{- else -}}
{{- printf "http://%s.%s.svc.%s" (include "sepsis-cds.fullname" .) .Release.Namespace .Values.clusterDomain -}}
{{- if ne (int .Values.api.service.port) 80 -}}:{{ .Values.api.service.port }}{{- end -}}
{{- end -}}
{{- end -}}

{{/* Fails the render early when a required secret has no source. */}}
{{- define "sepsis-cds.validate" -}}
{{- if and (not .Values.secrets.existingSecret) (not .Values.secrets.pseudonymKey) -}}
{{- fail "set secrets.pseudonymKey (openssl rand -hex 32) or secrets.existingSecret" -}}
{{- end -}}
{{- if and .Values.secrets.pseudonymKey (lt (len .Values.secrets.pseudonymKey) 32) -}}
{{- fail "secrets.pseudonymKey must be at least 32 characters" -}}
{{- end -}}
{{- if .Values.redis.enabled -}}
{{- if and (not .Values.redis.auth.existingSecret) (not .Values.redis.auth.password) -}}
{{- fail "set redis.auth.password (openssl rand -hex 24) or redis.auth.existingSecret" -}}
{{- end -}}
{{- else if and (not .Values.redis.external.url) (not .Values.redis.external.existingSecret) -}}
{{- fail "redis.enabled is false: set redis.external.url or redis.external.existingSecret" -}}
{{- end -}}
{{- range .Values.config.jwt.issuers -}}
{{- if not (or .jwksFile .jku) -}}
{{- fail (printf "issuer %q needs jwksFile or jku" .iss) -}}
{{- end -}}
{{- if and .jwksFile (not $.Values.jwks.existingSecret) (not (hasKey $.Values.jwks.files .jwksFile)) -}}
{{- fail (printf "issuer %q names jwksFile %q, which jwks.files does not have" .iss .jwksFile) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.workers.config.smart.enabled (not .Values.secrets.existingSecret) (not .Values.secrets.smartPrivateKeyPem) -}}
{{- fail "workers.config.smart.enabled needs secrets.smartPrivateKeyPem or secrets.existingSecret" -}}
{{- end -}}
{{- if and .Values.admin.tokens .Values.admin.existingSecret -}}
{{- fail "set admin.tokens or admin.existingSecret, not both: one list says who may act" -}}
{{- end -}}
{{- if and .Values.ingress.enabled (not .Values.admin.ingress.expose) -}}
{{- range .Values.ingress.paths -}}
{{- $path := trimSuffix "/" . -}}
{{- if or (eq $path "") (eq $path "/admin") (hasPrefix "/admin/" $path) -}}
{{- fail (printf "ingress.paths has %q, which routes the admin API (/admin) through the Ingress: remove it, or set admin.ingress.expose=true to mean it" .) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and .Values.redis.enabled (not .Values.redis.appendonly) (ne .Values.config.environment "development") -}}
{{- fail "redis.appendonly=false would lose the audit trail on a Redis restart: keep it on (only config.environment=development may turn it off)" -}}
{{- end -}}
{{- end -}}

{{/* CDS_JWT__ISSUERS: the issuers with their JWK Set files at the mount path. */}}
{{- define "sepsis-cds.issuersJson" -}}
{{- $issuers := list -}}
{{- range .Values.config.jwt.issuers -}}
{{- if .jwksFile -}}
{{- $issuers = append $issuers (dict "iss" .iss "jwks_path" (printf "/etc/cds/jwks/%s" .jwksFile)) -}}
{{- else -}}
{{- $issuers = append $issuers (dict "iss" .iss "jku" .jku) -}}
{{- end -}}
{{- end -}}
{{- toJson $issuers -}}
{{- end -}}

{{/*
Environment every service container gets: secrets by reference, Redis. The ConfigMap comes in
through envFrom. (dict "root" $ "worker" true) also adds the workers' own secret, the SMART key.
*/}}
{{- define "sepsis-cds.env" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
# The lifecycle policy ConfigMap, mounted by every pod that gets this environment.
- name: CDS_LIFECYCLE__POLICY_FILE
  value: {{ include "sepsis-cds.lifecyclePolicyFile" $root | quote }}
{{ include "sepsis-cds.pseudonymKeyEnv" $root }}
{{- if or $v.secrets.existingSecret $v.secrets.identifierKey }}
- name: CDS_WORKER__IDENTIFIER_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "sepsis-cds.secretName" $root }}
      key: {{ $v.secrets.keys.identifierKey }}
      optional: {{ not (empty $v.secrets.existingSecret) }}
{{- end }}
{{- if .worker }}
{{- if $v.workers.config.smart.enabled }}
- name: CDS_WORKER__SMART__PRIVATE_KEY_PEM
  valueFrom:
    secretKeyRef:
      name: {{ include "sepsis-cds.secretName" $root }}
      key: {{ $v.secrets.keys.smartPrivateKeyPem }}
{{- end }}
{{- end }}
{{- include "sepsis-cds.redisEnv" $root }}
{{- end -}}

{{/* CDS_PSEUDONYM_KEY from the chart's Secret (or secrets.existingSecret). */}}
{{- define "sepsis-cds.pseudonymKeyEnv" -}}
- name: CDS_PSEUDONYM_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "sepsis-cds.secretName" . }}
      key: {{ .Values.secrets.keys.pseudonymKey }}
{{- end -}}

{{/*
REDIS_URL (and REDIS_PASSWORD) as every process that talks to Redis gets them: composed from the
in-chart Redis's password Secret, or read whole from the external Redis's Secret.
*/}}
{{- define "sepsis-cds.redisEnv" -}}
{{- if .Values.redis.enabled }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "sepsis-cds.redisSecretName" . }}
      key: {{ .Values.redis.auth.existingSecretPasswordKey }}
# Kubernetes expands $(REDIS_PASSWORD) when the container starts; the URL is in no object.
- name: REDIS_URL
  value: "redis://:$(REDIS_PASSWORD)@{{ include "sepsis-cds.redisName" . }}:6379/0"
{{- else }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "sepsis-cds.redisExternalSecretName" . }}
      key: {{ .Values.redis.external.urlKey }}
{{- if .Values.redis.external.passwordKey }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "sepsis-cds.redisExternalSecretName" . }}
      key: {{ .Values.redis.external.passwordKey }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The model volume's mount, when the registry comes from a volume. */}}
{{- define "sepsis-cds.modelMount" -}}
{{- if .Values.models.volume }}
- name: models
  mountPath: {{ .Values.models.mountPath }}
  readOnly: true
  {{- with .Values.models.subPath }}
  subPath: {{ . }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* The lifecycle policy's mount; every service container reads it. */}}
{{- define "sepsis-cds.lifecycleMount" -}}
- name: lifecycle
  mountPath: {{ include "sepsis-cds.lifecycleDir" . }}
  readOnly: true
{{- end -}}

{{/* The lifecycle policy's volume. */}}
{{- define "sepsis-cds.lifecycleVolume" -}}
- name: lifecycle
  configMap:
    name: {{ include "sepsis-cds.fullname" . }}-lifecycle
{{- end -}}

{{/* The volumes of a service pod: /tmp, the lifecycle policy and, when given, the model registry. */}}
{{- define "sepsis-cds.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{ include "sepsis-cds.lifecycleVolume" . }}
{{- with .Values.models.volume }}
- name: models
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Annotations that restart the pods when the configuration or the chart's secrets change. */}}
{{- define "sepsis-cds.checksums" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/lifecycle: {{ include (print .Template.BasePath "/lifecycle-configmap.yaml") . | sha256sum }}
checksum/secret: {{ printf "%s%s%s%s"
  (include (print .Template.BasePath "/secret.yaml") .)
  (include (print .Template.BasePath "/jwks-secret.yaml") .)
  (include (print .Template.BasePath "/redis-secret.yaml") .)
  (include (print .Template.BasePath "/redis-external-secret.yaml") .) | sha256sum }}
{{- end -}}

{{/* The workers' checksums add their own ConfigMap. */}}
{{- define "sepsis-cds.workerChecksums" -}}
{{ include "sepsis-cds.checksums" . }}
checksum/worker-config: {{ include (print .Template.BasePath "/worker-configmap.yaml") . | sha256sum }}
{{- end -}}

{{/* Pod-level settings shared by every pod of the chart. */}}
{{- define "sepsis-cds.podCommon" -}}
serviceAccountName: {{ include "sepsis-cds.serviceAccountName" . }}
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}

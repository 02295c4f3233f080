{{/* Chart name. */}}
{{- define "metis.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name when it already contains the chart name
(release "metis-gateway" -> "metis-gateway", as the runbook's deploy/metis-gateway expects). */}}
{{- define "metis.fullname" -}}
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

{{- define "metis.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "metis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "metis.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "metis.labels" -}}
helm.sh/chart: {{ include "metis.chart" . }}
{{ include "metis.selectorLabels" . }}
app.kubernetes.io/version: {{ include "metis.imageTag" . | quote }}
app.kubernetes.io/component: gateway
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "metis.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{- define "metis.image" -}}
{{- printf "%s:%s" .Values.image.repository (include "metis.imageTag" .) }}
{{- end }}

{{- define "metis.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "metis.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Whether the chart renders its own provider Secret. */}}
{{- define "metis.chartProviderSecret" -}}
{{- with .Values.provider }}
{{- if or .anthropicApiKey .openaiApiKey .openrouterApiKey }}true{{ end }}
{{- end }}
{{- end }}

{{/* "https" when the gateway terminates TLS itself. */}}
{{- define "metis.scheme" -}}
{{- if .Values.tls.enabled }}https{{ else }}http{{ end }}
{{- end }}

{{/* The storage engine. Read defensively: a `helm upgrade --reuse-values` from a release
made with chart 0.2.0 (before store.* existed) carries that release's values, without
store.* or topologySpread.*, and must render what it rendered before (SQLite). */}}
{{- define "metis.backend" -}}
{{- (default (dict) .Values.store).backend | default "sqlite" }}
{{- end }}

{{/* "true" when the stores live in PostgreSQL (a fleet: no volume, keys in the database). */}}
{{- define "metis.postgres" -}}
{{- if eq (include "metis.backend" .) "postgres" }}true{{ end }}
{{- end }}

{{/* Replicas: replicaCount, or when it is null the backend's default (2 for postgres, 1 for
the file stores, whose volume holds one writer's file). */}}
{{- define "metis.replicas" -}}
{{- if kindIs "invalid" .Values.replicaCount }}
{{- ternary 2 1 (eq (include "metis.backend" .) "postgres") }}
{{- else }}
{{- int .Values.replicaCount }}
{{- end }}
{{- end }}

{{/* "true" when the data directory is a PersistentVolumeClaim (file stores with persistence). */}}
{{- define "metis.pvc" -}}
{{- if and .Values.persistence.enabled (not (include "metis.postgres" .)) }}true{{ end }}
{{- end }}

{{/* The main store file of the file engines (`--db-path`). */}}
{{- define "metis.dbPath" -}}
{{- if eq (include "metis.backend" .) "redb" }}/var/lib/metis/metis.redb{{ else }}/var/lib/metis/metis.db{{ end }}
{{- end }}

{{- define "metis.claimName" -}}
{{- default (printf "%s-data" (include "metis.fullname" .)) .Values.persistence.existingClaim }}
{{- end }}

{{/* Combinations the schema cannot express; each message says what to do. */}}
{{- define "metis.validate" -}}
{{- $pg := include "metis.postgres" . }}
{{- if and $pg (not .Values.store.postgres.existingSecret) }}
{{- fail "store.backend=postgres needs store.postgres.existingSecret: a Secret holding the database URL, e.g. `kubectl create secret generic metis-gateway-database --from-literal=database-url='postgres://USER:PASSWORD@HOST:5432/DB?sslmode=verify-full'` and `--set store.postgres.existingSecret=metis-gateway-database`" }}
{{- end }}
{{- if and (not $pg) (not .Values.keystore.existingSecret) }}
{{- fail "keystore.existingSecret is required: issue a key with `metis gateway issue-key --keystore ./keys.json --name NAME --workspace /workspace`, then `kubectl create secret generic metis-gateway-keystore --from-file=keys.json=./keys.json` and `--set keystore.existingSecret=metis-gateway-keystore` (a non-loopback gateway refuses to start with no keys)" }}
{{- end }}
{{- if and .Values.provider.existingSecret (include "metis.chartProviderSecret" .) }}
{{- fail "set either provider.existingSecret or provider.*ApiKey, not both" }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) }}
{{- fail "tls.enabled needs tls.secretName (a kubernetes.io/tls Secret with tls.crt and tls.key)" }}
{{- end }}
{{- if and (include "metis.pvc" .) (gt (int (include "metis.replicas" .)) 1) }}
{{- fail "persistence.enabled allows replicaCount 0 or 1: the trace is one SQLite file on a ReadWriteOnce volume, and several replicas pinned to one node would block node drains. For more replicas use store.backend=postgres (a shared store; docs/helm.md \"Running a fleet\")" }}
{{- end }}
{{- if and .Values.restore.enabled $pg }}
{{- fail "restore.enabled restores a file store in an initContainer and does not apply to store.backend=postgres: restore the database once with `metis restore` while the gateways are scaled to 0 (docs/upgrade-runbook.md, PostgreSQL)" }}
{{- end }}
{{- if .Values.restore.enabled }}
{{- if not .Values.persistence.enabled }}
{{- fail "restore.enabled needs persistence.enabled: the backup and the trace DB live on the volume" }}
{{- end }}
{{- $f := .Values.restore.fromFile }}
{{- if or (not $f) (hasPrefix "/" $f) (contains ".." $f) (eq $f "metis.db") (eq $f "metis.redb") }}
{{- fail "restore.fromFile must name a backup file relative to /var/lib/metis (e.g. metis-pre-upgrade.db), not the store itself (metis.db, metis.redb), not absolute, without '..'" }}
{{- end }}
{{- end }}
{{- if and .Values.ingress.enabled (not .Values.ingress.hosts) }}
{{- fail "ingress.enabled needs at least one ingress.hosts entry" }}
{{- end }}
{{- range .Values.ingress.hosts }}
{{- if and $.Values.ingress.enabled (not .host) }}
{{- fail "every ingress.hosts entry needs a host" }}
{{- end }}
{{- end }}
{{- end }}

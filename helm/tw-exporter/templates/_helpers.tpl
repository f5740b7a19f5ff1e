{{/*
Name of the chart, overridable with nameOverride.
*/}}
{{- define "tw-exporter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name (63 characters at most: some Kubernetes name fields are limited
to this). If the release name already contains the chart name it is used as is.
*/}}
{{- define "tw-exporter.fullname" -}}
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

{{- define "tw-exporter.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object.
*/}}
{{- define "tw-exporter.labels" -}}
helm.sh/chart: {{ include "tw-exporter.chart" . }}
{{ include "tw-exporter.selectorLabels" . }}
app.kubernetes.io/version: {{ include "tw-exporter.imageTag" . | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tw-exporter
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels: stable for the life of a release (a Deployment's selector is immutable).
*/}}
{{- define "tw-exporter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tw-exporter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tw-exporter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tw-exporter.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Image reference: repository:tag, or repository@digest when a digest is given. The tag
defaults to the chart's appVersion.
*/}}
{{- define "tw-exporter.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "tw-exporter.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "tw-exporter.imageTag" .) }}
{{- end }}
{{- end }}

{{/*
The Secret holding the DSN and its key: the user's existing Secret, or the one this chart
renders from database.dsn. Rendering fails, with a message naming both values, when there
is neither (an exporter without a database would only crash-loop).
*/}}
{{- define "tw-exporter.dsnSecretName" -}}
{{- if .Values.database.existingSecret.name }}
{{- .Values.database.existingSecret.name }}
{{- else if .Values.database.dsn }}
{{- printf "%s-dsn" (include "tw-exporter.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- fail "tw-exporter: a database is required: set database.existingSecret.name (a Secret holding the PostgreSQL URI, recommended) or database.dsn (a Secret is created for it)" }}
{{- end }}
{{- end }}

{{- define "tw-exporter.dsnSecretKey" -}}
{{- if .Values.database.existingSecret.name }}
{{- .Values.database.existingSecret.key }}
{{- else }}
{{- "dsn" }}
{{- end }}
{{- end }}

{{/*
The exporter-toolkit web config: the user's Secret, or the one rendered from
webConfig.config.
*/}}
{{- define "tw-exporter.webConfigSecretName" -}}
{{- if .Values.webConfig.existingSecret.name }}
{{- .Values.webConfig.existingSecret.name }}
{{- else }}
{{- printf "%s-web-config" (include "tw-exporter.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "tw-exporter.webConfigSecretKey" -}}
{{- if .Values.webConfig.existingSecret.name }}
{{- .Values.webConfig.existingSecret.key }}
{{- else }}
{{- "web-config.yml" }}
{{- end }}
{{- end }}

{{/*
HTTP or HTTPS, for the probes, the ServiceMonitor and the helm test: webConfig.scheme when
set, else HTTPS exactly when the inline web config turns TLS on.
*/}}
{{- define "tw-exporter.scheme" -}}
{{- if and .Values.webConfig.enabled .Values.webConfig.scheme }}
{{- .Values.webConfig.scheme }}
{{- else if and .Values.webConfig.enabled (not .Values.webConfig.existingSecret.name) (hasKey .Values.webConfig.config "tls_server_config") }}
{{- "HTTPS" }}
{{- else }}
{{- "HTTP" }}
{{- end }}
{{- end }}

{{/*
The exporter's settings as TW_EXPORTER_* variables (strings, as the environment wants
them). Unset (null) values are left out, so the exporter's own defaults apply.
*/}}
{{- define "tw-exporter.configEnv" -}}
{{- $names := dict
  "interval" "TW_EXPORTER_INTERVAL"
  "queryTimeout" "TW_EXPORTER_QUERY_TIMEOUT"
  "topUsers" "TW_EXPORTER_TOP_USERS"
  "trendingDays" "TW_EXPORTER_TRENDING_DAYS"
  "trendingLimit" "TW_EXPORTER_TRENDING_LIMIT"
  "statsDays" "TW_EXPORTER_STATS_DAYS"
  "maxLabelLength" "TW_EXPORTER_MAX_LABEL_LENGTH"
  "maxStaleness" "TW_EXPORTER_MAX_STALENESS"
  "maxConnections" "TW_EXPORTER_MAX_CONNECTIONS"
  "logLevel" "TW_EXPORTER_LOG_LEVEL"
  "logFormat" "TW_EXPORTER_LOG_FORMAT"
}}
{{- range $key := keys $names | sortAlpha }}
{{- $value := index $.Values.config $key }}
{{- if not (kindIs "invalid" $value) }}
- name: {{ index $names $key }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}
{{- end }}

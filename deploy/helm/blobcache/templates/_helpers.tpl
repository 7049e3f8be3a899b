{{/* Names and labels shared by the templates. */}}

{{- define "blobcache.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The full name: release-chart, or just the release when it already contains the chart's name. */}}
{{- define "blobcache.fullname" -}}
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

{{/* The headless Service: peer discovery and the pods' stable DNS names. */}}
{{- define "blobcache.headless" -}}
{{- printf "%s-headless" (include "blobcache.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{- define "blobcache.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "blobcache.selectorLabels" -}}
app.kubernetes.io/name: {{ include "blobcache.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "blobcache.labels" -}}
helm.sh/chart: {{ include "blobcache.chart" . }}
{{ include "blobcache.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "blobcache.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "blobcache.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "blobcache.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* The Secret with S3 credentials, if any: the user's, or the one the chart creates. */}}
{{- define "blobcache.s3SecretName" -}}
{{- if .Values.s3.existingSecret }}
{{- .Values.s3.existingSecret }}
{{- else if .Values.s3.accessKeyId }}
{{- printf "%s-s3" (include "blobcache.fullname" .) }}
{{- end }}
{{- end }}

{{/* The DNS domain of the headless Service. */}}
{{- define "blobcache.peerDomain" -}}
{{- printf "%s.%s.svc.%s" (include "blobcache.headless" .) .Release.Namespace .Values.cluster.clusterDomain }}
{{- end }}

{{/* --peers: the headless Service's DNS name, or every pod's URL. */}}
{{- define "blobcache.peers" -}}
{{- if eq .Values.cluster.discovery "static" }}
{{- $fullname := include "blobcache.fullname" . }}
{{- $domain := include "blobcache.peerDomain" . }}
{{- $urls := list }}
{{- range $i := until (int .Values.replicaCount) }}
{{- $urls = append $urls (printf "http://%s-%d.%s:8080" $fullname $i $domain) }}
{{- end }}
{{- join "," $urls }}
{{- else }}
{{- printf "dns://%s:8080" (include "blobcache.peerDomain" .) }}
{{- end }}
{{- end }}

{{- define "blobcache.terminationGracePeriodSeconds" -}}
{{- $min := add (int .Values.shutdownGraceSeconds) (int .Values.preStopSleepSeconds) }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $min 15 }}
{{- else if le (int .Values.terminationGracePeriodSeconds) $min }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be above shutdownGraceSeconds + preStopSleepSeconds (%d), or Kubernetes kills nodes that are still draining" (int .Values.terminationGracePeriodSeconds) $min) }}
{{- else }}
{{- .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/*
One TOML value: strings quoted, whole numbers without a fraction (values files
turn every number into a float), booleans as they are.
*/}}
{{- define "blobcache.tomlValue" -}}
{{- if kindIs "bool" . }}
{{- . }}
{{- else if or (kindIs "float64" .) (kindIs "int" .) (kindIs "int64" .) }}
{{- if eq (float64 .) (float64 (int64 .)) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else }}
{{- toJson (toString .) }}
{{- end }}
{{- end }}

{{/* The configuration file. */}}
{{- define "blobcache.configToml" -}}
{{- range $key := list "listen" "data-dir" "shutdown-grace" "config" "peers" "advertise-url" }}
{{- if hasKey $.Values.config $key }}
{{- fail (printf "config.%s is set by the chart; remove it from config (see values.yaml)" $key) }}
{{- end }}
{{- end }}
{{- if not .Values.config.store }}
{{- fail "config.store is required: the S3 bucket every node shares, e.g. s3://my-bucket/blobcache" }}
{{- end }}
{{- if not (hasPrefix "s3://" .Values.config.store) }}
{{- fail "config.store must be an s3:// URL: nodes of a cluster share one store" }}
{{- end -}}
# blobcache configuration (from the chart's values; flag names as keys).
listen = "0.0.0.0:8080"
data-dir = "/data"
shutdown-grace = "{{ int .Values.shutdownGraceSeconds }}s"
{{- range $key, $value := .Values.config }}
{{- if not (or (kindIs "invalid" $value) (and (kindIs "string" $value) (eq $value ""))) }}
{{ $key }} = {{ include "blobcache.tomlValue" $value }}
{{- end }}
{{- end }}
{{- end }}

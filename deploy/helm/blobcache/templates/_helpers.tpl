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

{{/* http, or https with tls.enabled: the nodes' URLs, probes and scrapes. */}}
{{- define "blobcache.scheme" -}}
{{- if .Values.tls.enabled }}https{{ else }}http{{ end }}
{{- end }}

{{/* The Secret with the nodes' certificate: tls.secretName, or the one cert-manager writes. */}}
{{- define "blobcache.tlsSecretName" -}}
{{- if .Values.tls.secretName }}
{{- .Values.tls.secretName }}
{{- else if .Values.tls.certManager.enabled }}
{{- printf "%s-tls" (include "blobcache.fullname" .) }}
{{- end }}
{{- end }}

{{/*
Where the Secrets are mounted: directories of their own, outside the
ConfigMap's /etc/blobcache, and whole (no subPath), so the kubelet's updates of
a Secret reach the files and the nodes reload them.
*/}}
{{- define "blobcache.tlsDir" -}}/etc/blobcache-tls{{- end }}
{{- define "blobcache.tokensDir" -}}/etc/blobcache-tokens{{- end }}

{{/* The client Service's and the headless Service's names, short to fully qualified, and the pods' wildcard. */}}
{{- define "blobcache.dnsNames" -}}
{{- $ns := .Release.Namespace }}
{{- $names := list }}
{{- range $svc := list (include "blobcache.fullname" .) (include "blobcache.headless" .) }}
{{- $names = concat $names (list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.%s" $svc $ns $.Values.cluster.clusterDomain)) }}
{{- end }}
{{- $names = append $names (printf "*.%s" (include "blobcache.peerDomain" .)) }}
{{- $names = concat $names .Values.tls.certManager.extraDnsNames }}
{{- toYaml (uniq $names) }}
{{- end }}

{{/* A probe from the values, with scheme HTTPS under TLS unless it names one. */}}
{{- define "blobcache.probe" -}}
{{- $probe := deepCopy .probe }}
{{- if and .root.Values.tls.enabled (kindIs "map" $probe.httpGet) (not (hasKey $probe.httpGet "scheme")) }}
{{- $_ := set $probe.httpGet "scheme" "HTTPS" }}
{{- end }}
{{- toYaml $probe }}
{{- end }}

{{/*
Values that cannot work together, refused with the reason (the node itself
would refuse most of them at start, in a crash loop).
*/}}
{{- define "blobcache.validate" -}}
{{- $owned := dict "peer-token" "auth.peerTokenSecret" "tls-cert" "tls.enabled and tls.secretName" "tls-key" "tls.enabled and tls.secretName" "tls-client-ca" "tls.clientAuth" "peer-ca" "tls.enabled (ca.crt of tls.secretName)" "peer-cert" "tls.clientAuth" "peer-key" "tls.clientAuth" }}
{{- range $key, $use := $owned }}
{{- if hasKey $.Values.config $key }}
{{- fail (printf "config.%s is set by the chart from a Secret: use %s instead (see values.yaml)" $key $use) }}
{{- end }}
{{- end }}
{{- $auth := .Values.auth }}
{{- $tokens := or $auth.tokensSecret .Values.config.tokens }}
{{- if and $auth.tokensSecret .Values.config.tokens }}
{{- fail "auth.tokensSecret and config.tokens both name a tokens file: keep auth.tokensSecret (the chart mounts it and sets the path), drop config.tokens" }}
{{- end }}
{{- $peerTokenEnv := false }}
{{- range .Values.extraEnv }}
{{- if eq (toString .name) "BLOBCACHE_PEER_TOKEN" }}{{ $peerTokenEnv = true }}{{ end }}
{{- end }}
{{- if and $tokens (not $auth.peerTokenSecret) (not $peerTokenEnv) }}
{{- fail "auth.tokensSecret needs auth.peerTokenSecret: the pods always run as a cluster (--peers, whatever replicaCount says), and a node with tokens and peers needs the token it sends its peers, or it refuses to start. Make one with the peer scope (blobcache token create --scopes peer), add its line to the tokens file, and put the token itself in a Secret (it may be the same Secret, under auth.peerTokenKey)" }}
{{- end }}
{{- $anonymous := toString (.Values.config.anonymous | default "") }}
{{- if and (not $tokens) (ne $anonymous "all") }}
{{- if eq $anonymous "" }}
{{- fail "no tokens: set auth.tokensSecret (a Secret with a tokens file) and auth.peerTokenSecret, or config.anonymous=all to run the cache open on purpose, for a network only trusted clients reach (the node refuses to start open otherwise)" }}
{{- else }}
{{- fail (printf "config.anonymous=%s needs tokens (auth.tokensSecret): without them no client, and no peer, could do more than that" $anonymous) }}
{{- end }}
{{- end }}
{{- $tls := .Values.tls }}
{{- if $tls.enabled }}
{{- if not (include "blobcache.tlsSecretName" .) }}
{{- fail "tls.enabled needs tls.secretName (a kubernetes.io/tls Secret with tls.crt, tls.key and ca.crt, as cert-manager writes it), or tls.certManager.enabled to have one made" }}
{{- end }}
{{- if and $tls.certManager.enabled (not $tls.certManager.issuerRef.name) }}
{{- fail "tls.certManager.enabled needs tls.certManager.issuerRef.name: the cert-manager Issuer or ClusterIssuer that signs the nodes' certificate" }}
{{- end }}
{{- else }}
{{- if $tls.clientAuth }}
{{- fail "tls.clientAuth needs tls.enabled: client certificates are asked for over TLS only" }}
{{- end }}
{{- if $tls.certManager.enabled }}
{{- fail "tls.certManager.enabled needs tls.enabled: the certificate would not be used" }}
{{- end }}
{{- end }}
{{- if .Values.serviceMonitor.enabled }}
{{- $tc := .Values.serviceMonitor.tlsConfig | default dict }}
{{- if and $tls.clientAuth (not (and (hasKey $tc "cert") (hasKey $tc "keySecret"))) }}
{{- fail "serviceMonitor.enabled with tls.clientAuth needs serviceMonitor.tlsConfig.cert and .keySecret: Prometheus must show a client certificate of the nodes' CA, or every scrape gets 401 client_certificate_required" }}
{{- end }}
{{- if and (eq (toString (index .Values.config "metrics-access" | default "")) "admin") (not .Values.serviceMonitor.tokenSecret) }}
{{- fail "serviceMonitor.enabled with config.metrics-access=admin needs serviceMonitor.tokenSecret: a Secret with a token of the admin scope, or every scrape gets 401" }}
{{- end }}
{{- end }}
{{- end }}

{{/* --peers: the headless Service's DNS name, or every pod's URL. */}}
{{- define "blobcache.peers" -}}
{{- if eq .Values.cluster.discovery "static" }}
{{- $fullname := include "blobcache.fullname" . }}
{{- $domain := include "blobcache.peerDomain" . }}
{{- $urls := list }}
{{- range $i := until (int .Values.replicaCount) }}
{{- $urls = append $urls (printf "%s://%s-%d.%s:8080" (include "blobcache.scheme" $) $fullname $i $domain) }}
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
{{- end }}
{{- include "blobcache.validate" . -}}
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

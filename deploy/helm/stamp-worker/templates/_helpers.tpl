{{/* Names and labels. */}}
{{- define "stamp-worker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "stamp-worker.fullname" -}}
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

{{- define "stamp-worker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "stamp-worker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "stamp-worker.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "stamp-worker.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: worker
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "stamp-worker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "stamp-worker.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "stamp-worker.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* The workload kind: a StatefulSet gives pods stable names for static membership. */}}
{{- define "stamp-worker.workloadKind" -}}
{{- if .Values.staticMembership.enabled }}StatefulSet{{ else }}Deployment{{ end }}
{{- end }}

{{/* Where the rendered configuration is mounted. */}}
{{- define "stamp-worker.configDir" -}}/etc/stamp-worker/config{{- end }}
{{- define "stamp-worker.configPath" -}}{{ include "stamp-worker.configDir" . }}/worker.yaml{{- end }}

{{/* security.protocol implied by kafkaAuth; empty when neither SASL nor TLS is on. */}}
{{- define "stamp-worker.securityProtocol" -}}
{{- $sasl := .Values.kafkaAuth.sasl.enabled }}
{{- $tls := .Values.kafkaAuth.tls.enabled }}
{{- if and $sasl $tls }}SASL_SSL{{ else if $sasl }}SASL_PLAINTEXT{{ else if $tls }}SSL{{ end }}
{{- end }}

{{/*
The worker's configuration as the pod sees it: .Values.config with processes: 1, the
metrics address, the security settings implied by kafkaAuth and the GPU device.
Rendered as YAML; the ConfigMap holds it and the tests load it with worker.stream.config.
*/}}
{{- define "stamp-worker.workerConfig" -}}
{{- $cfg := deepCopy (.Values.config | default dict) }}
{{- $_ := set $cfg "processes" 1 }}
{{- $metrics := deepCopy (get $cfg "metrics" | default dict) }}
{{- if not $metrics.host }}{{ $_ := set $metrics "host" "0.0.0.0" }}{{ end }}
{{- if not (hasKey $metrics "port") }}{{ $_ := set $metrics "port" 9108 }}{{ end }}
{{- $_ := set $cfg "metrics" $metrics }}
{{- $protocol := include "stamp-worker.securityProtocol" . }}
{{- if $protocol }}
{{- /* kafka.common: librdkafka settings of both clients (consumer and producer). */}}
{{- $kafka := deepCopy (get $cfg "kafka" | default dict) }}
{{- $common := deepCopy (get $kafka "common" | default dict) }}
{{- if not (hasKey $common "security.protocol") }}{{ $_ := set $common "security.protocol" $protocol }}{{ end }}
{{- if and .Values.kafkaAuth.sasl.enabled (not (hasKey $common "sasl.mechanism")) }}
{{- $_ := set $common "sasl.mechanism" .Values.kafkaAuth.sasl.mechanism }}
{{- end }}
{{- if and .Values.kafkaAuth.tls.enabled .Values.kafkaAuth.tls.secretName (not (hasKey $common "ssl.ca.location")) }}
{{- $_ := set $common "ssl.ca.location" (printf "%s/%s" .Values.kafkaAuth.tls.mountPath .Values.kafkaAuth.tls.caKey) }}
{{- end }}
{{- $_ := set $kafka "common" $common }}
{{- $_ := set $cfg "kafka" $kafka }}
{{- end }}
{{- if and .Values.gpu.enabled (not (get $cfg "model_device")) }}
{{- $_ := set $cfg "model_device" "cuda" }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/* The metrics port of the rendered configuration. */}}
{{- define "stamp-worker.metricsPort" -}}
{{- $metrics := (get (.Values.config | default dict) "metrics") | default dict }}
{{- if hasKey $metrics "port" }}{{ $metrics.port | int }}{{ else }}9108{{ end }}
{{- end }}

{{/* [s] the worker's drain limit, shutdown_timeout_s (the worker's default is 30). */}}
{{- define "stamp-worker.shutdownTimeout" -}}
{{- $cfg := .Values.config | default dict }}
{{- if hasKey $cfg "shutdown_timeout_s" }}{{ $cfg.shutdown_timeout_s | float64 }}{{ else }}30{{ end }}
{{- end }}

{{/* [s] terminationGracePeriodSeconds: the value given, else the drain limit plus margin. */}}
{{- define "stamp-worker.gracePeriod" -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add (include "stamp-worker.shutdownTimeout" . | float64 | ceil | int) (.Values.drainMarginSeconds | int) }}
{{- else }}
{{- .Values.terminationGracePeriodSeconds | int }}
{{- end }}
{{- end }}

{{/* The topic KEDA measures the lag of: keda.topic, else the one plain input topic. */}}
{{- define "stamp-worker.kedaTopic" -}}
{{- if .Values.keda.topic }}
{{- .Values.keda.topic }}
{{- else }}
{{- $input := (get ((.Values.config | default dict).topics | default dict) "input") }}
{{- $topics := list }}
{{- if kindIs "string" $input }}{{ $topics = splitList "," $input }}{{ else if kindIs "slice" $input }}{{ $topics = $input }}{{ end }}
{{- if and (eq (len $topics) 1) (not (hasPrefix "^" (first $topics | toString | trim))) }}
{{- first $topics | toString | trim }}
{{- end }}
{{- end }}
{{- end }}

{{/* KEDA's name for a librdkafka sasl.mechanism; empty when KEDA has none. */}}
{{- define "stamp-worker.kedaSasl" -}}
{{- $m := upper .Values.kafkaAuth.sasl.mechanism }}
{{- if eq $m "SCRAM-SHA-512" }}scram_sha512{{ else if eq $m "SCRAM-SHA-256" }}scram_sha256{{ else if eq $m "PLAIN" }}plaintext{{ end }}
{{- end }}

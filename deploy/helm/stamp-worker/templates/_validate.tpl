{{/*
Rules that rendering enforces; each broken one fails `helm template/install/upgrade` with a
line naming the value and what to do. Included once, from configmap.yaml.
*/}}
{{- define "stamp-worker.validate" -}}
{{- $cfg := .Values.config | default dict }}
{{- $p := "stamp-worker:" }}

{{- /* One worker process per pod: the pod is the unit of scaling and of resources. */}}
{{- if and (hasKey $cfg "processes") (not (kindIs "invalid" $cfg.processes)) (ne ($cfg.processes | toString) "1") }}
{{- fail (printf "%s config.processes is %v; the chart runs one worker process per pod (processes: 1): scale with replicaCount or keda instead" $p $cfg.processes) }}
{{- end }}

{{- if and (hasKey $cfg "instance_id") (not (kindIs "invalid" $cfg.instance_id)) }}
{{- fail (printf "%s config.instance_id is set; one id shared by every pod makes them fence each other: set staticMembership.enabled=true instead (each pod's id is then its pod name)" $p) }}
{{- end }}

{{- $kafka := get $cfg "kafka" | default dict }}
{{- if not (get $kafka "bootstrap_servers") }}
{{- fail (printf "%s config.kafka.bootstrap_servers is required (comma-separated host:port list)" $p) }}
{{- end }}

{{- /* Secrets never go into the ConfigMap. */}}
{{- $secretKeys := list "sasl.password" "ssl.key.password" "ssl.key.pem" "basic.auth.user.info" "bearer.auth.token" "sasl.oauthbearer.config" "sasl.oauthbearer.client.secret" }}
{{- $sections := dict "config.kafka.common" (get $kafka "common") "config.kafka.consumer" (get $kafka "consumer") "config.kafka.producer" (get $kafka "producer") "config.registry.client" (get (get $cfg "registry" | default dict) "client") }}
{{- range $where, $props := $sections }}
{{- range $key, $_ := ($props | default dict) }}
{{- $k := lower $key }}
{{- if or (has $k $secretKeys) (contains "password" $k) (contains "secret" $k) (contains "passphrase" $k) }}
{{- fail (printf "%s %s[%q] is a secret and would be stored in a ConfigMap: put it in a Secret and use kafkaAuth, registryAuth or extraEnv (valueFrom.secretKeyRef) instead" $p $where $key) }}
{{- end }}
{{- end }}
{{- end }}

{{- $metrics := get $cfg "metrics" | default dict }}
{{- $port := include "stamp-worker.metricsPort" . | int }}
{{- if or (lt $port 1) (gt $port 65535) }}
{{- fail (printf "%s config.metrics.port is %v; the probes and Prometheus need the metrics server: give a port from 1 to 65535" $p (get $metrics "port")) }}
{{- end }}
{{- if has (toString (get $metrics "host")) (list "127.0.0.1" "localhost" "::1") }}
{{- fail (printf "%s config.metrics.host is %s, which the kubelet's probes and Prometheus cannot reach: leave it out (0.0.0.0) or give the pod's address" $p (get $metrics "host")) }}
{{- end }}

{{- /* The grace period must cover the drain (shutdown_timeout_s) and the margin. */}}
{{- $shutdown := include "stamp-worker.shutdownTimeout" . | float64 }}
{{- $margin := .Values.drainMarginSeconds | float64 }}
{{- if lt $margin 1.0 }}
{{- fail (printf "%s drainMarginSeconds is %v; give at least 1 s for the batch in hand, the commit and leaving the group" $p .Values.drainMarginSeconds) }}
{{- end }}
{{- $grace := include "stamp-worker.gracePeriod" . | float64 }}
{{- if lt $grace (addf $shutdown $margin) }}
{{- fail (printf "%s terminationGracePeriodSeconds is %v, less than config.shutdown_timeout_s (%v s) + drainMarginSeconds (%v s): Kubernetes would kill the worker mid-drain; raise it to at least %v or leave it null" $p .Values.terminationGracePeriodSeconds $shutdown $margin (addf $shutdown $margin | ceil)) }}
{{- end }}

{{- /* Replicas against the input topic's partitions. */}}
{{- $partitions := 0 }}
{{- if not (kindIs "invalid" .Values.inputPartitions) }}
{{- $partitions = .Values.inputPartitions | int }}
{{- if lt $partitions 1 }}
{{- fail (printf "%s inputPartitions is %v; give the input topic's partition count (at least 1) or null" $p .Values.inputPartitions) }}
{{- end }}
{{- end }}
{{- if .Values.keda.enabled }}
{{- if eq $partitions 0 }}
{{- fail (printf "%s keda.enabled needs inputPartitions, the input topic's partition count, to cap keda.maxReplicaCount" $p) }}
{{- end }}
{{- $max := .Values.keda.maxReplicaCount | int }}
{{- $min := .Values.keda.minReplicaCount | int }}
{{- if gt $max $partitions }}
{{- fail (printf "%s keda.maxReplicaCount (%d) is above inputPartitions (%d): the replicas beyond the partition count would get no partition and idle; lower keda.maxReplicaCount or add partitions" $p $max $partitions) }}
{{- end }}
{{- if lt $max 1 }}
{{- fail (printf "%s keda.maxReplicaCount is %d; give at least 1" $p $max) }}
{{- end }}
{{- if or (lt $min 0) (gt $min $max) }}
{{- fail (printf "%s keda.minReplicaCount (%d) must be from 0 to keda.maxReplicaCount (%d)" $p $min $max) }}
{{- end }}
{{- if lt (.Values.keda.lagThreshold | int) 1 }}
{{- fail (printf "%s keda.lagThreshold is %v; give the target lag per replica [messages], at least 1" $p .Values.keda.lagThreshold) }}
{{- end }}
{{- if not (include "stamp-worker.kedaTopic" .) }}
{{- fail (printf "%s keda.topic is needed: config.topics.input is not one plain topic name (a list or a ^regular expression), so give the topic whose lag KEDA should follow" $p) }}
{{- end }}
{{- if and .Values.kafkaAuth.sasl.enabled (not (include "stamp-worker.kedaSasl" .)) }}
{{- fail (printf "%s kafkaAuth.sasl.mechanism %s has no KEDA Kafka scaler equivalent; use SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN, or turn keda off" $p .Values.kafkaAuth.sasl.mechanism) }}
{{- end }}
{{- else if and (gt $partitions 0) (gt (.Values.replicaCount | int) $partitions) }}
{{- fail (printf "%s replicaCount (%d) is above inputPartitions (%d): the replicas beyond the partition count would get no partition and idle; lower replicaCount or add partitions" $p (.Values.replicaCount | int) $partitions) }}
{{- end }}

{{- if and .Values.kafkaAuth.sasl.enabled (not .Values.kafkaAuth.sasl.secretName) }}
{{- fail (printf "%s kafkaAuth.sasl.enabled needs kafkaAuth.sasl.secretName, a Secret with the keys %s and %s" $p .Values.kafkaAuth.sasl.usernameKey .Values.kafkaAuth.sasl.passwordKey) }}
{{- end }}
{{- if .Values.registryAuth.enabled }}
{{- if not .Values.registryAuth.secretName }}
{{- fail (printf "%s registryAuth.enabled needs registryAuth.secretName, a Secret whose key %s holds user:password" $p .Values.registryAuth.userInfoKey) }}
{{- end }}
{{- if not (get (get $cfg "registry" | default dict) "url") }}
{{- fail (printf "%s registryAuth.enabled needs config.registry.url" $p) }}
{{- end }}
{{- end }}
{{- if and .Values.gpu.enabled (lt (.Values.gpu.count | int) 1) }}
{{- fail (printf "%s gpu.count is %v; give at least 1" $p .Values.gpu.count) }}
{{- end }}
{{- end }}

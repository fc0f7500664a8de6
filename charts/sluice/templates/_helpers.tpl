{{/* The chart name, or nameOverride. */}}
{{- define "sluice.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The prefix of every resource name: release-chart, or fullnameOverride. */}}
{{- define "sluice.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "sluice.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "sluice.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "sluice.mta.fullname" -}}
{{- printf "%s-mta" (include "sluice.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sluice.operator.fullname" -}}
{{- printf "%s-operator" (include "sluice.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The ConfigMap the operator writes its generated policy into. */}}
{{- define "sluice.generatedConfigMap" -}}
{{- printf "%s-generated" (include "sluice.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sluice.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Selector labels: name, instance and component only, because a selector
cannot change after install. Call with (dict "context" $ "component" "mta").
*/}}
{{- define "sluice.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sluice.name" .context }}
app.kubernetes.io/instance: {{ .context.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* All labels. Call with (dict "context" $ "component" "mta"). */}}
{{- define "sluice.labels" -}}
{{ include "sluice.selectorLabels" . }}
app.kubernetes.io/version: {{ .context.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: sluice
app.kubernetes.io/managed-by: {{ .context.Release.Service }}
helm.sh/chart: {{ include "sluice.chart" .context }}
{{- with .context.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* repository:tag or repository@digest. Call with (dict "image" .Values.mta.image "context" $). */}}
{{- define "sluice.image" -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository (default .context.Chart.AppVersion .image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "sluice.mta.serviceAccountName" -}}
{{- if .Values.mta.serviceAccount.create -}}
{{- default (include "sluice.mta.fullname" .) .Values.mta.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.mta.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "sluice.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (include "sluice.operator.fullname" .) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Whether the PodDisruptionBudget is rendered: forced, or on for more than one MTA pod. */}}
{{- define "sluice.pdb.enabled" -}}
{{- if kindIs "bool" .Values.podDisruptionBudget.enabled -}}
{{- if .Values.podDisruptionBudget.enabled }}true{{ end -}}
{{- else if gt (int .Values.mta.replicas) 1 -}}
true
{{- end -}}
{{- end -}}

{{/* Fails the render when a listener wants TLS and no certificate Secret is named. */}}
{{- define "sluice.mta.checkTls" -}}
{{- range $name, $l := .Values.mta.listeners -}}
{{- if and $l.enabled $l.tls (not $.Values.mta.tls.secretName) -}}
{{- fail (printf "mta.listeners.%s.tls is true: set mta.tls.secretName to a kubernetes.io/tls Secret" $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Paths inside the MTA pod, shared by the settings and the mounts. */}}
{{- define "sluice.mta.policyDir" -}}/etc/sluice/policy{{- end -}}
{{- define "sluice.mta.secretsDir" -}}/etc/sluice/secrets{{- end -}}
{{- define "sluice.mta.tlsDir" -}}/etc/sluice/tls{{- end -}}
{{- define "sluice.mta.spoolDir" -}}/var/spool/sluice{{- end -}}
{{- define "sluice.mta.logDir" -}}/var/log/sluice{{- end -}}
{{- define "sluice.mta.smtpAuthDir" -}}/etc/sluice/smtp-auth{{- end -}}
{{- define "sluice.mta.redisDir" -}}/etc/sluice/redis{{- end -}}
{{- define "sluice.mta.redisCaDir" -}}/etc/sluice/redis-ca{{- end -}}
{{- define "sluice.mta.adminAuthDir" -}}/etc/sluice/admin-auth{{- end -}}

{{/* The Secret of the admin API's credentials: the user's, or the one the operator creates. */}}
{{- define "sluice.adminSecret" -}}
{{- default (printf "%s-admin" (include "sluice.fullname" .)) .Values.mta.admin.auth.secretName -}}
{{- end -}}

{{/* externalTrafficPolicy of the SMTP Service: Local unless the user chose Cluster; none for ClusterIP. */}}
{{- define "sluice.mta.externalTrafficPolicy" -}}
{{- if has .Values.mta.service.type (list "LoadBalancer" "NodePort") -}}
{{- default "Local" .Values.mta.service.externalTrafficPolicy -}}
{{- end -}}
{{- end -}}

{{/*
"true" when the CIDR (or bare address) overlaps a range a masquerading proxy
gives clients: RFC 1918, 100.64.0.0/10, 169.254.0.0/16, fc00::/7, fe80::/10.
Two networks overlap when they agree on the shorter prefix of the two.
*/}}
{{- define "sluice.cidrIsPrivate" -}}
{{- $parts := splitList "/" . -}}
{{- $ip := first $parts -}}
{{- if contains ":" $ip -}}
{{- $len := 128 -}}
{{- if gt (len $parts) 1 }}{{ $len = atoi (last $parts) }}{{ end -}}
{{- $first := first (splitList ":" (lower $ip)) -}}
{{- $digits := dict "0" 0 "1" 1 "2" 2 "3" 3 "4" 4 "5" 5 "6" 6 "7" 7 "8" 8 "9" 9 "a" 10 "b" 11 "c" 12 "d" 13 "e" 14 "f" 15 -}}
{{- $value := 0 -}}
{{- range $c := splitList "" (printf "%04s" $first) }}{{ $value = add (mul $value 16) (get $digits $c) }}{{ end -}}
{{- range $net := list (list 64512 7) (list 65152 10) -}}
{{- $k := min $len (index $net 1) -}}
{{- $unit := 1 -}}
{{- range until (int (sub 16 $k)) }}{{ $unit = mul $unit 2 }}{{ end -}}
{{- if eq (div $value $unit) (div (index $net 0) $unit) }}true{{ end -}}
{{- end -}}
{{- else -}}
{{- $len := 32 -}}
{{- if gt (len $parts) 1 }}{{ $len = atoi (last $parts) }}{{ end -}}
{{- $o := splitList "." $ip -}}
{{- $value := add (mul (atoi (index $o 0)) 16777216) (mul (atoi (index $o 1)) 65536) (mul (atoi (index $o 2)) 256) (atoi (index $o 3)) -}}
{{- range $net := list (list 167772160 8) (list 2886729728 12) (list 3232235520 16) (list 1681915904 10) (list 2851995648 16) -}}
{{- $k := min $len (index $net 1) -}}
{{- $unit := 1 -}}
{{- range until (int (sub 32 $k)) }}{{ $unit = mul $unit 2 }}{{ end -}}
{{- if eq (div $value $unit) (div (index $net 0) $unit) }}true{{ end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Fails the render on a listener set-up that would relay for strangers or
cannot work: requireAuth without TLS, users or with relayHosts; and, when the
SMTP Service masquerades clients (LoadBalancer or NodePort with
externalTrafficPolicy: Cluster), any exposed listener relaying for private
ranges by address alone. Also the admin API's credentials.
*/}}
{{- define "sluice.mta.checkRelay" -}}
{{- $masquerades := eq (include "sluice.mta.externalTrafficPolicy" .) "Cluster" -}}
{{- range $name, $l := .Values.mta.listeners -}}
{{- if $l.enabled -}}
{{- /* behind PROXY protocol, relay control sees the real client, not the masquerading node */ -}}
{{- $proxied := dig "proxyProtocol" "enabled" false $l -}}
{{- if and $proxied (not (dig "proxyProtocol" "from" list $l)) -}}
{{- fail (printf "mta.listeners.%s.proxyProtocol.enabled needs proxyProtocol.from: the networks the load balancer or HAProxy connects from (whoever may send the header chooses the address relay control sees)" $name) -}}
{{- end -}}
{{- if $l.requireAuth -}}
{{- if not $l.tls -}}
{{- fail (printf "mta.listeners.%s.requireAuth needs tls: true (AUTH is offered only after STARTTLS, so passwords never cross in clear)" $name) -}}
{{- end -}}
{{- if not $.Values.mta.smtpAuth.secretName -}}
{{- fail (printf "mta.listeners.%s.requireAuth needs mta.smtpAuth.secretName: a Secret whose keys are user names and values passwords" $name) -}}
{{- end -}}
{{- if $l.relayHosts -}}
{{- fail (printf "mta.listeners.%s.requireAuth relays only for authenticated clients: set relayHosts to [] (it lists %s)" $name (join ", " $l.relayHosts)) -}}
{{- end -}}
{{- else if and $masquerades $l.exposed (not $proxied) -}}
{{- range $cidr := $l.relayHosts -}}
{{- if include "sluice.cidrIsPrivate" $cidr -}}
{{- fail (printf "refusing an open relay: mta.service.externalTrafficPolicy is Cluster, so the %s Service masquerades every client to a node's private address, and mta.listeners.%s (exposed on it) relays for %s without authentication: every internet client reaching port %v could relay. Set mta.listeners.%s.requireAuth=true (with tls and mta.smtpAuth.secretName) and relayHosts=[], or exposed=false (cluster-internal only), or proxyProtocol.enabled with from (the real client in a PROXY protocol header), or keep externalTrafficPolicy Local" $.Values.mta.service.type $name $cidr $l.servicePort $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and .Values.mta.admin.auth.enabled (not .Values.mta.admin.auth.secretName) (not .Values.operator.enabled) -}}
{{- fail "mta.admin.auth.enabled needs mta.admin.auth.secretName (a kubernetes.io/basic-auth Secret) when the operator, which would create one, is disabled" -}}
{{- end -}}
{{- if and (not .Values.mta.admin.auth.enabled) (not .Values.mta.admin.trustedHosts) .Values.operator.enabled -}}
{{- fail "mta.admin.auth.enabled is false and mta.admin.trustedHosts is empty: nobody, the operator included, could use the admin API" -}}
{{- end -}}
{{- end -}}

{{/*
A min_free_space / min_free_inodes value as the MTA reads it: a string such as
"10%" as given, a number as its integer digits (toString would write 1e+09).
*/}}
{{- define "sluice.minFree" -}}
{{- if kindIs "string" . -}}{{ . }}{{- else -}}{{ int64 . }}{{- end -}}
{{- end -}}

{{/* The bundled Redis's name. */}}
{{- define "sluice.redis.fullname" -}}
{{- printf "%s-redis" (include "sluice.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The URL the MTA pods use: redis.url, or the bundled Redis's Service. */}}
{{- define "sluice.redis.url" -}}
{{- if .Values.redis.url -}}
{{- .Values.redis.url -}}
{{- else if .Values.redis.deploy -}}
{{- printf "redis://%s:6379/" (include "sluice.redis.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the Redis password: the user's, or the bundled one's. */}}
{{- define "sluice.redis.passwordSecret" -}}
{{- if .Values.redis.passwordSecret.name -}}
{{- .Values.redis.passwordSecret.name -}}
{{- else if and .Values.redis.deploy (not .Values.redis.url) -}}
{{- include "sluice.redis.fullname" . -}}
{{- end -}}
{{- end -}}

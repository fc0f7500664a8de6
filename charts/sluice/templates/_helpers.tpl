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

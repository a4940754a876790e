{{/* The chart's name, overridable. */}}
{{- define "cyclr-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Names of the release's objects: the release name when it already holds the chart's. */}}
{{- define "cyclr-operator.fullname" -}}
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

{{- define "cyclr-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cyclr-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "cyclr-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "cyclr-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "cyclr-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cyclr-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Leader election, on unless turned off; two replicas without it would both reconcile. */}}
{{- define "cyclr-operator.leaderElection" -}}
{{- if .Values.leaderElection.enabled }}true
{{- else if gt (int .Values.replicaCount) 1 }}
{{- fail "leaderElection.enabled=false needs replicaCount <= 1: replicas without a Lease would reconcile at once" }}
{{- end }}
{{- end }}

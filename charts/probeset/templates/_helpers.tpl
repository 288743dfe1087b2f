{{/* Common labels. */}}
{{- define "probeset.labels" -}}
app.kubernetes.io/name: probeset
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Operator pod selector labels. */}}
{{- define "probeset.operatorSelector" -}}
app.kubernetes.io/name: probeset
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* The operator image, repository:tag (tag defaults to appVersion). */}}
{{- define "probeset.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The agents' image: agent.image, else the operator's. */}}
{{- define "probeset.agentImage" -}}
{{- default (include "probeset.image" .) .Values.agent.image -}}
{{- end -}}

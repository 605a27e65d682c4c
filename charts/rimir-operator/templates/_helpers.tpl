{{- define "rimir-operator.name" -}}rimir-operator{{- end -}}

{{- define "rimir-operator.labels" -}}
app.kubernetes.io/name: rimir-operator
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "rimir-operator.selector" -}}
app.kubernetes.io/name: rimir-operator
{{- end -}}

{{- define "rimir-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}{{ .Values.serviceAccount.name }}{{- else -}}{{ default "default" .Values.serviceAccount.name }}{{- end -}}
{{- end -}}

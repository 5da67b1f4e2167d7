{{- define "mtls-rotator.name" -}}mtls-rotator{{- end -}}

{{- define "mtls-rotator.labels" -}}
app.kubernetes.io/name: {{ include "mtls-rotator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "mtls-rotator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mtls-rotator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The rules of a kind (ClusterRole or Role) in files/role.yaml, which
     `make manifests` copies from what controller-gen generates. */}}
{{- define "mtls-rotator.rules" -}}
{{- $kind := .kind -}}
{{- range $doc := regexSplit "(?m)^---$" (.root.Files.Get "files/role.yaml") -1 }}
{{- $obj := fromYaml $doc }}
{{- if and $obj (eq (get $obj "kind") $kind) }}
{{- toYaml (get $obj "rules") }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
wgmesh.name is the app.kubernetes.io/name of every object: the chart's name
unless nameOverride says otherwise.
*/}}
{{- define "wgmesh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
wgmesh.fullname names the objects: fullnameOverride, else the release name
when it contains the chart's name (a release named wgmesh gives wgmesh, the
names of the kustomize base), else release-chart.
*/}}
{{- define "wgmesh.fullname" -}}
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

{{/*
wgmesh.selectorLabels select the agent's pods; a DaemonSet's selector cannot
change, so it holds only the name.
*/}}
{{- define "wgmesh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wgmesh.name" . }}
{{- end }}

{{/*
wgmesh.labels go on every object. A Helm release adds Helm's labels; the
kustomize base (`make manifests`, which renders with a Release.Service other
than Helm) carries only the first two, as `kubectl apply -k` leaves no Helm
release behind.
*/}}
{{- define "wgmesh.labels" -}}
{{ include "wgmesh.selectorLabels" . }}
app.kubernetes.io/part-of: wgmesh
{{- if eq .Release.Service "Helm" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/*
wgmesh.serviceAccountUser is the agent's service account user name, which the
admission policy matches.
*/}}
{{- define "wgmesh.serviceAccountUser" -}}
system:serviceaccount:{{ .Release.Namespace }}:{{ include "wgmesh.fullname" . }}
{{- end }}

{{/*
wgmesh.image is repository[:tag].
*/}}
{{- define "wgmesh.image" -}}
{{- if .Values.image.tag }}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag }}
{{- else }}
{{- .Values.image.repository }}
{{- end }}
{{- end }}

{{/*
wgmesh.metricsAddr is --metrics-addr: address:port.
*/}}
{{- define "wgmesh.metricsAddr" -}}
{{- printf "%s:%d" .Values.metrics.address (int .Values.metrics.port) }}
{{- end }}

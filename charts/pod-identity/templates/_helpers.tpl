{{/* The image of every container: repository@digest, or repository:tag. */}}
{{- define "pod-identity.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/* Labels on every object (the kustomize overlays set part-of only). */}}
{{- define "pod-identity.labels" -}}
app.kubernetes.io/part-of: pod-identity
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The webhook Service's DNS names, as `pod-identity-webhook certs` writes them. */}}
{{- define "pod-identity.webhookNames" -}}
{{- $ns := .Values.namespaces.system -}}
{{- list "pod-identity-webhook" (printf "pod-identity-webhook.%s" $ns) (printf "pod-identity-webhook.%s.svc" $ns) (printf "pod-identity-webhook.%s.svc.cluster.local" $ns) | toJson -}}
{{- end -}}

{{/* Non-empty when the agents call with their token and trust a CA of the chart's: the
exchange, or the cloud's CCE endpoint; not AWS's EKS Auth (SigV4, public roots). */}}
{{- define "pod-identity.agentCallsExchange" -}}
{{- if or .Values.exchange.enabled (eq .Values.backend "cce") }}true{{ end -}}
{{- end -}}

{{- define "pod-identity.exchangeHost" -}}
pod-identity-exchange.{{ .Values.namespaces.system }}.svc
{{- end -}}

{{/* The webhook's TLS Secret name. */}}
{{- define "pod-identity.webhookSecret" -}}
{{- if eq .Values.certificates.mode "secret" -}}
{{ required "certificates.existingSecret.name is required with certificates.mode=secret" .Values.certificates.existingSecret.name }}
{{- else -}}
pod-identity-webhook-tls
{{- end -}}
{{- end -}}

{{- define "pod-identity.exchangeSecret" -}}
{{- if eq .Values.certificates.mode "secret" -}}
{{ required "exchange.existingSecret is required with certificates.mode=secret" .Values.exchange.existingSecret }}
{{- else -}}
pod-identity-exchange-tls
{{- end -}}
{{- end -}}

{{/* Each of networkPolicies.metricsFrom as an extra ingress peer. */}}
{{- define "pod-identity.metricsFrom" -}}
{{- range .Values.networkPolicies.metricsFrom }}
    - {{ toJson . }}
{{- end }}
{{- end -}}

{{/* The release's name prefix for every object. */}}
{{- define "berth.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "berth.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: include "berth.selector" (list . "berthd") */}}
{{- define "berth.selector" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ $root.Chart.Name }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "berth.image" -}}
{{- $root := index . 0 -}}
{{- printf "%s:%s" (index . 1).repository (default $root.Chart.AppVersion $root.Values.image.tag) -}}
{{- end -}}

{{- define "berth.berthd" -}}{{ include "berth.fullname" . }}-berthd{{- end -}}
{{- define "berth.peers" -}}{{ include "berth.fullname" . }}-berthd-peers{{- end -}}
{{- define "berth.proxy" -}}{{ include "berth.fullname" . }}-proxy{{- end -}}
{{- define "berth.tunnel" -}}{{ include "berth.fullname" . }}-proxy-tunnel{{- end -}}

{{/* The DNS domain of the berthd pods (the headless Service). */}}
{{- define "berth.peersDomain" -}}
{{- printf "%s.%s.svc.%s" (include "berth.peers" .) .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{/* Every berthd node's gRPC address, comma-separated: what proxies dial. */}}
{{- define "berth.cpAddrs" -}}
{{- $addrs := list -}}
{{- range $i := until (int .Values.berthd.replicas) -}}
{{- $addrs = append $addrs (printf "%s-%d.%s:%d" (include "berth.berthd" $) $i (include "berth.peersDomain" $) (int $.Values.berthd.ports.grpc)) -}}
{{- end -}}
{{- join "," $addrs -}}
{{- end -}}

{{- define "berth.serverSecret" -}}{{ default (printf "%s-berthd-tls" (include "berth.fullname" .)) .Values.tls.serverSecret }}{{- end -}}
{{- define "berth.proxySecret" -}}{{ default (printf "%s-proxy-tls" (include "berth.fullname" .)) .Values.tls.proxySecret }}{{- end -}}
{{- define "berth.agentKeysSecret" -}}{{ default (printf "%s-agent-keys" (include "berth.fullname" .)) .Values.tls.agentKeysSecret }}{{- end -}}
{{- define "berth.agentTokenSecret" -}}{{ default (printf "%s-agent-token" (include "berth.fullname" .)) .Values.tls.agentTokenSecret }}{{- end -}}

{{/* The pod's name and IP from the downward API, for $(POD_NAME) in args. */}}
{{- define "berth.podEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
{{- end -}}

{{/* Scratch images have no users: run as a fixed unprivileged id. */}}
{{- define "berth.podSecurity" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "berth.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

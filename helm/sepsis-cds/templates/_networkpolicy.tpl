{{/* Egress rules to CIDR entries: (list of {cidr, except, ports}) → NetworkPolicyEgressRules. */}}
{{- define "sepsis-cds.cidrEgress" -}}
{{- range . }}
- to:
    - ipBlock:
        cidr: {{ .cidr }}
        {{- with .except }}
        except:
          {{- toYaml . | nindent 10 }}
        {{- end }}
  ports:
    {{- range (.ports | default (list 443)) }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
{{- end }}
{{- end -}}

{{/* Egress every service pod needs: the cluster DNS and Redis. */}}
{{- define "sepsis-cds.baseEgress" -}}
{{- include "sepsis-cds.validate" . -}}
{{- $np := .Values.networkPolicy -}}
- to:
    - namespaceSelector:
        matchLabels:
          {{- toYaml $np.egress.dns.namespaceSelector | nindent 10 }}
      podSelector:
        matchLabels:
          {{- toYaml $np.egress.dns.podSelector | nindent 10 }}
  ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- if .Values.redis.enabled }}
- to:
    - podSelector:
        matchLabels:
          {{- include "sepsis-cds.componentSelectorLabels" (dict "root" . "component" "redis") | nindent 10 }}
  ports:
    - port: 6379
      protocol: TCP
{{- else if .Values.redis.external.cidrs }}
- to:
    {{- range .Values.redis.external.cidrs }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  ports:
    - port: {{ .Values.redis.external.port }}
      protocol: TCP
{{- else }}
{{- fail "networkPolicy.enabled with an external Redis needs redis.external.cidrs" }}
{{- end }}
{{- end -}}

{{/*
Labels of every object: the app.kubernetes.io set, the chart, and
commonLabels. Call with (dict "ctx" $ "component" "agent").
*/}}
{{- define "kubepulse.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: kubepulse
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/version: {{ include "kubepulse.version" .ctx | quote }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: kubepulse
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels. Kept to name and component (plus the agents' network) so
that selectors, which are immutable, stay those of earlier releases; the
controller's plan publisher finds the agents by them
(controller.plan.label_selector).
*/}}
{{- define "kubepulse.selectorLabels" -}}
app.kubernetes.io/name: kubepulse
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "kubepulse.version" -}}
{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The image reference: repository:tag, or repository:tag@digest. */}}
{{- define "kubepulse.image" -}}
{{- $ref := printf "%s:%s" .Values.image.repository (include "kubepulse.version" .) -}}
{{- if .Values.image.digest -}}
{{- $ref = printf "%s@%s" $ref .Values.image.digest -}}
{{- end -}}
{{ $ref }}
{{- end }}

{{- define "kubepulse.burstKeySecret" -}}
{{ .Values.burstKey.existingSecret | default "kubepulse-burst-key" }}
{{- end }}

{{/* Where the agents read the burst key: the Secret's key burst.key. */}}
{{- define "kubepulse.burstKeyDir" -}}
/var/run/secrets/kubepulse
{{- end }}

{{/*
The agent config of one DaemonSet: what the manifests need, then
agents.config, then agents.<network>.config (later wins). Call with
(dict "ctx" $ "network" "pod").
*/}}
{{- define "kubepulse.agentConfig" -}}
{{- $required := dict "agent" (dict "burst_key_file" (printf "%s/burst.key" (include "kubepulse.burstKeyDir" .ctx))) "discovery" (dict "mode" "kubernetes") -}}
{{- $own := index .ctx.Values.agents .network -}}
{{- toYaml (mustMergeOverwrite $required (deepCopy .ctx.Values.agents.config) (deepCopy $own.config)) -}}
{{- end }}

{{/* Scrape annotations for plain Prometheus. Call with (dict "ctx" $ "port" 9477). */}}
{{- define "kubepulse.scrapeAnnotations" -}}
{{- if .ctx.Values.scrapeAnnotations -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}

{{/*
The rules file alerts/kubepulse-rules.yaml (synced into files/ by
`cargo xtask deploy`) with the values substituted: the one place that
adapts the rules to an installation. The source keeps the defaults as
literals so that promtool and alerts/tests run on it unchanged. With
mixinDuplicates, the groups of alerts/kubepulse-mixin-duplicates.yaml
are appended to its group list (the main file ends with that list), so
the substitutions apply to them too.
*/}}
{{- define "kubepulse.rules" -}}
{{- $p := .Values.prometheusRule -}}
{{- $text := .Files.Get "files/kubepulse-rules.yaml" -}}
{{- if $p.mixinDuplicates -}}
{{- $parts := splitList "\ngroups:\n" (.Files.Get "files/kubepulse-mixin-duplicates.yaml") -}}
{{- if ne (len $parts) 2 -}}
{{- fail "files/kubepulse-mixin-duplicates.yaml must have one top-level groups: list (run cargo xtask deploy)" -}}
{{- end -}}
{{- $text = printf "%s%s" $text (index $parts 1) -}}
{{- end -}}
{{- $text = $text | replace "https://github.com/kubepulse/kubepulse/blob/main/docs/runbooks.md#" (printf "%s#" $p.runbookUrlBase) -}}
{{- $text = $text | replace "job=~\".*kubepulse.*\"" $p.jobSelector -}}
{{- if $p.namespaceSelector -}}
{{- $text = $text | replace "daemonset=~\"kubepulse.*\"" (printf "%s,daemonset=~\"kubepulse.*\"" $p.namespaceSelector) -}}
{{- end -}}
{{ $text }}
{{- end }}

{{/* A NetworkPolicy peer from a value's namespaceSelector and podSelector. */}}
{{- define "kubepulse.peer" -}}
{{- $peer := dict -}}
{{- with .namespaceSelector }}{{ $_ := set $peer "namespaceSelector" . }}{{ end -}}
{{- with .podSelector }}{{ $_ := set $peer "podSelector" . }}{{ end -}}
{{ toYaml $peer }}
{{- end }}

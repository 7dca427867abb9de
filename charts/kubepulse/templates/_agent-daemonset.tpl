{{/*
One agent DaemonSet. Call with (dict "ctx" $ "network" "pod"|"host").
*/}}
{{- define "kubepulse.agentDaemonSet" -}}
{{- $ := .ctx -}}
{{- $network := .network -}}
{{- $v := index $.Values.agents $network -}}
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: kubepulse-agent-{{ $network }}
  namespace: {{ $.Release.Namespace }}
  labels:
    {{- include "kubepulse.labels" (dict "ctx" $ "component" "agent") | nindent 4 }}
    kubepulse.io/network: {{ $network }}
spec:
  selector:
    matchLabels:
      {{- include "kubepulse.selectorLabels" (dict "component" "agent") | nindent 6 }}
      kubepulse.io/network: {{ $network }}
  {{- with $v.updateStrategy }}
  updateStrategy:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  template:
    metadata:
      labels:
        {{- include "kubepulse.labels" (dict "ctx" $ "component" "agent") | nindent 8 }}
        kubepulse.io/network: {{ $network }}
        {{- with $v.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        # Restarts the agents when their configuration changes.
        checksum/config: {{ include "kubepulse.agentConfig" (dict "ctx" $ "network" $network) | sha256sum }}
        {{- include "kubepulse.scrapeAnnotations" (dict "ctx" $ "port" 9477) | nindent 8 }}
        {{- with $v.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ $.Values.serviceAccount.agent.name }}
      terminationGracePeriodSeconds: {{ $.Values.agents.terminationGracePeriodSeconds }}
      {{- if eq $network "host" }}
      # The baseline of every path comparison. The one documented exception
      # to the restricted Pod Security Standard: hostNetwork is required by
      # design; the agent still runs non-root, read-only, no capabilities.
      hostNetwork: true
      # Resolve cluster names although the pod uses the node's network.
      dnsPolicy: ClusterFirstWithHostNet
      {{- end }}
      {{- with $v.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      {{- with $.Values.image.pullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- with $.Values.agents.podSecurityContext }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
        {{- if and (eq $network "pod") $v.sysctls }}
        # Unprivileged ICMP echo for every group, a "safe" sysctl. (Pod
        # sysctls are refused with hostNetwork: the host agent's ICMP uses
        # the node's net.ipv4.ping_group_range, which systemd >= 243 opens
        # to every group; else its ICMP probes report mode "unavailable".)
        sysctls:
          {{- toYaml $v.sysctls | nindent 10 }}
        {{- end }}
      containers:
        - name: agent
          image: {{ include "kubepulse.image" $ }}
          imagePullPolicy: {{ $.Values.image.pullPolicy }}
          args: ["agent"]
          env:
            - name: KUBEPULSE_POD_NAME
              valueFrom:
                fieldRef:
                  fieldPath: metadata.name
            - name: KUBEPULSE_NODE_NAME
              valueFrom:
                fieldRef:
                  fieldPath: spec.nodeName
            - name: KUBEPULSE_NAMESPACE
              valueFrom:
                fieldRef:
                  fieldPath: metadata.namespace
            - name: KUBEPULSE_CONFIG
              value: /etc/kubepulse/config.yaml
            {{- if eq $network "host" }}
            - name: KUBEPULSE__AGENT__KIND
              value: host
            {{- end }}
            {{- with $v.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          ports:
            - name: metrics
              containerPort: 9477
              protocol: TCP
            - name: udp-echo
              containerPort: 9478
              protocol: UDP
            - name: tcp-echo
              containerPort: 9478
              protocol: TCP
            - name: bandwidth
              containerPort: 9479
              protocol: TCP
            - name: http
              containerPort: 9480
              protocol: TCP
          readinessProbe:
            httpGet:
              path: /readyz
              port: metrics
            periodSeconds: 10
          livenessProbe:
            httpGet:
              path: /healthz
              port: metrics
            periodSeconds: 20
            failureThreshold: 3
          {{- with $v.resources }}
          resources:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          {{- with $.Values.agents.securityContext }}
          securityContext:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          volumeMounts:
            - name: config
              mountPath: /etc/kubepulse
              readOnly: true
            - name: burst-key
              mountPath: {{ include "kubepulse.burstKeyDir" $ }}
              readOnly: true
      volumes:
        - name: config
          configMap:
            name: kubepulse-agent
            items:
              - key: {{ $network }}.yaml
                path: config.yaml
        # Optional: an agent without the key starts and runs every latency
        # probe, but no bandwidth bursts (it logs a warning and says so in
        # a metric). The agent re-reads the key when the Secret changes.
        - name: burst-key
          secret:
            secretName: {{ include "kubepulse.burstKeySecret" $ }}
            optional: true
{{- end }}

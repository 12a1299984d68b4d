{{/*
=====================================================================================================
Naming and labels.

The chart name is spelled out instead of read from .Chart.Name: the embedded-mode templates below
run in the *parent* chart's context, where .Chart is the parent, and must still compute the same
ConfigMap name the subchart rendered.
=====================================================================================================
*/}}

{{- define "jwt-sidecar.name" -}}
{{- default "jwt-sidecar" .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "jwt-sidecar.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default "jwt-sidecar" .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "jwt-sidecar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "jwt-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "jwt-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "jwt-sidecar.labels" -}}
helm.sh/chart: {{ include "jwt-sidecar.chart" . }}
{{ include "jwt-sidecar.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.sidecar.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "jwt-sidecar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "jwt-sidecar.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "jwt-sidecar.configMapName" -}}
{{- printf "%s-config" (include "jwt-sidecar.fullname" . | trunc 56 | trimSuffix "-") }}
{{- end }}

{{- define "jwt-sidecar.metricsServiceName" -}}
{{- printf "%s-metrics" (include "jwt-sidecar.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{- define "jwt-sidecar.image" -}}
{{- $img := . -}}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (toString $img.tag) }}
{{- end }}
{{- end }}

{{/*
=====================================================================================================
Durations: a number (seconds) or "500ms", "30s", "5m", "24h", "1d", as sidecar/config/types.py accepts.
Input: the value. Output: whole seconds, rounded up.
=====================================================================================================
*/}}
{{- define "jwt-sidecar.seconds" -}}
{{- $v := . -}}
{{- if kindIs "string" $v -}}
{{- $s := trim $v -}}
{{- if not (regexMatch "^[0-9]+(\\.[0-9]+)?(ms|s|m|h|d)?$" $s) -}}
{{- fail (printf "jwt-sidecar: %q is not a duration such as 30, \"30s\", \"5m\" or \"24h\"" $s) -}}
{{- end -}}
{{- $num := regexReplaceAll "^([0-9.]+)(ms|s|m|h|d)?$" $s "${1}" -}}
{{- $unit := regexReplaceAll "^([0-9.]+)(ms|s|m|h|d)?$" $s "${2}" -}}
{{- $mult := get (dict "ms" 0.001 "s" 1.0 "m" 60.0 "h" 3600.0 "d" 86400.0 "" 1.0) $unit -}}
{{- mulf (float64 $num) $mult | ceil | int -}}
{{- else -}}
{{- ceil (float64 $v) | int -}}
{{- end -}}
{{- end }}

{{/*
=====================================================================================================
The sidecar config file. Input: a context whose .Values are this chart's values.
Fills listen / admin_listen / upstream from the ports, and refuses a listen port that disagrees
with the container port the probes and Service use.
=====================================================================================================
*/}}
{{- define "jwt-sidecar.configYaml" -}}
{{- $s := .Values.sidecar -}}
{{- $cfg := deepCopy ($s.config | default dict) -}}
{{- $pairs := list (list "listen" (int $s.port) "sidecar.port") (list "admin_listen" (int $s.adminPort) "sidecar.adminPort") -}}
{{- range $pairs -}}
{{- $key := index . 0 -}}{{- $port := index . 1 -}}
{{- if hasKey $cfg $key -}}
{{- $given := toString (get $cfg $key) -}}
{{- if not (hasSuffix (printf ":%d" $port) $given) -}}
{{- fail (printf "jwt-sidecar: sidecar.config.%s is %q but %s is %d; they must name the same port" $key $given (index . 2) $port) -}}
{{- end -}}
{{- else -}}
{{- $_ := set $cfg $key (printf "0.0.0.0:%d" $port) -}}
{{- end -}}
{{- end -}}
{{- if not (hasKey $cfg "upstream") -}}
{{- $_ := set $cfg "upstream" (printf "http://127.0.0.1:%d" (int .Values.app.port)) -}}
{{- end -}}
{{- with include "jwt-sidecar.kubernetesProvider" . -}}
{{- $_ := set $cfg "providers" (append ($cfg.providers | default list) (fromYaml .)) -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end }}

{{/*
The provider kubernetesIssuer adds (a YAML mapping), or nothing when it is off. Its keys are fetched from
the API server with the pod's own projected token and the cluster CA, both mounted only into the sidecar.
*/}}
{{- define "jwt-sidecar.kubernetesIssuerDir" -}}/var/run/secrets/jwt-sidecar/kubernetes{{- end }}
{{- define "jwt-sidecar.kubernetesProvider" -}}
{{- $k := .Values.kubernetesIssuer | default dict -}}
{{- if $k.enabled -}}
{{- if not $k.audiences -}}
{{- fail "jwt-sidecar: kubernetesIssuer.audiences is required: the audience client pods request in their projected tokens" -}}
{{- end -}}
{{- $dir := include "jwt-sidecar.kubernetesIssuerDir" . -}}
name: {{ $k.name | quote }}
issuer: {{ $k.issuer | quote }}
audiences:
  {{- toYaml $k.audiences | nindent 2 }}
jwks_url: {{ $k.jwksUrl | quote }}
ca_file: {{ printf "%s/ca.crt" $dir | quote }}
jwks_auth:
  bearer_token_file: {{ printf "%s/token" $dir | quote }}
{{- end -}}
{{- end }}

{{/* The decision listener's port when sidecar.config.decision.listen is set, else nothing. */}}
{{- define "jwt-sidecar.decisionPort" -}}
{{- $decision := (.Values.sidecar.config | default dict).decision | default dict -}}
{{- with $decision.listen -}}{{- regexReplaceAll "^.*:" (toString .) "" -}}{{- end -}}
{{- end }}

{{- define "jwt-sidecar.drainSeconds" -}}
{{- $limits := (.Values.sidecar.config | default dict).limits | default dict -}}
{{- include "jwt-sidecar.seconds" (hasKey $limits "drain_timeout" | ternary $limits.drain_timeout 20) -}}
{{- end }}

{{- define "jwt-sidecar._terminationGracePeriodSeconds" -}}
{{- if not (kindIs "invalid" .Values.sidecar.terminationGracePeriodSeconds) -}}
{{- .Values.sidecar.terminationGracePeriodSeconds | int -}}
{{- else -}}
{{- add (include "jwt-sidecar.drainSeconds" . | int) (.Values.sidecar.terminationGraceMarginSeconds | int) -}}
{{- end -}}
{{- end }}

{{/*
=====================================================================================================
The sidecar container (one list item). Input: a context whose .Values are this chart's values.
=====================================================================================================
*/}}
{{- define "jwt-sidecar._container" -}}
{{- $s := .Values.sidecar -}}
- name: {{ $s.name }}
  image: {{ include "jwt-sidecar.image" $s.image | quote }}
  imagePullPolicy: {{ $s.image.pullPolicy }}
  {{- if $s.nativeSidecar }}
  restartPolicy: Always
  {{- end }}
  args:
    - run
    - --config
    - /etc/sidecar/config.yaml
    {{- with $s.extraArgs }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - name: sidecar-http
      containerPort: {{ $s.port }}
      protocol: TCP
    - name: sidecar-admin
      containerPort: {{ $s.adminPort }}
      protocol: TCP
    {{- with include "jwt-sidecar.decisionPort" . }}
    - name: sidecar-decide
      containerPort: {{ . }}
      protocol: TCP
    {{- end }}
  {{- with $s.env }}
  env:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $s.envFrom }}
  envFrom:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  startupProbe:
    httpGet:
      path: /healthz
      port: sidecar-admin
    periodSeconds: {{ $s.probes.startup.periodSeconds }}
    timeoutSeconds: {{ $s.probes.startup.timeoutSeconds }}
    failureThreshold: {{ $s.probes.startup.failureThreshold }}
  livenessProbe:
    httpGet:
      path: /healthz
      port: sidecar-admin
    periodSeconds: {{ $s.probes.liveness.periodSeconds }}
    timeoutSeconds: {{ $s.probes.liveness.timeoutSeconds }}
    failureThreshold: {{ $s.probes.liveness.failureThreshold }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: sidecar-admin
    periodSeconds: {{ $s.probes.readiness.periodSeconds }}
    timeoutSeconds: {{ $s.probes.readiness.timeoutSeconds }}
    failureThreshold: {{ $s.probes.readiness.failureThreshold }}
  {{- with $s.lifecycle }}
  lifecycle:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $s.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $s.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    - name: jwt-sidecar-config
      mountPath: /etc/sidecar
      readOnly: true
    - name: jwt-sidecar-tmp
      mountPath: /tmp
    {{- if (.Values.kubernetesIssuer | default dict).enabled }}
    - name: jwt-sidecar-kubernetes-issuer
      mountPath: {{ include "jwt-sidecar.kubernetesIssuerDir" . }}
      readOnly: true
    {{- end }}
    {{- with $s.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{- define "jwt-sidecar._volumes" -}}
- name: jwt-sidecar-config
  configMap:
    name: {{ include "jwt-sidecar.configMapName" . }}
- name: jwt-sidecar-tmp
  emptyDir:
    sizeLimit: {{ .Values.sidecar.tmpSizeLimit }}
{{- with .Values.kubernetesIssuer }}
{{- if .enabled }}
{{- /* The sidecar's own credential for reading the API server's key set: a short-lived projected token
(not the automounted one, which the app container would see too) and the cluster CA. */}}
- name: jwt-sidecar-kubernetes-issuer
  projected:
    sources:
      - serviceAccountToken:
          path: token
          expirationSeconds: {{ .fetchToken.expirationSeconds | int }}
          {{- with .fetchToken.audience }}
          audience: {{ . | quote }}
          {{- end }}
      - configMap:
          name: kube-root-ca.crt
          items:
            - key: ca.crt
              path: ca.crt
{{- end }}
{{- end }}
{{- end }}

{{/*
=====================================================================================================
Embedded mode: named templates for YOUR chart's pod spec (this chart as a dependency).

They accept your chart's root context (`.`) and find this chart's values under
.Values.jwt-sidecar (the dependency name) or .Values.jwtSidecar (alias: jwtSidecar). Or pass a
dict yourself: (dict "Values" .Values.mySidecarKey "Release" .Release).

  spec:
    terminationGracePeriodSeconds: {{ include "jwt-sidecar.terminationGracePeriodSeconds" . }}
    initContainers:
      {{- include "jwt-sidecar.initContainers" . | nindent 6 }}   # native sidecar only
    containers:
      {{- include "jwt-sidecar.containers" . | nindent 6 }}       # regular sidecar only
      - name: my-app
        ...
    volumes:
      {{- include "jwt-sidecar.volumes" . | nindent 6 }}
  template.metadata.annotations:
      {{- include "jwt-sidecar.podAnnotations" . | nindent 8 }}
=====================================================================================================
*/}}
{{- define "jwt-sidecar.scope" -}}
{{- $v := .Values -}}
{{- if hasKey .Values "jwt-sidecar" -}}
{{- $v = index .Values "jwt-sidecar" -}}
{{- else if hasKey .Values "jwtSidecar" -}}
{{- $v = .Values.jwtSidecar -}}
{{- end -}}
{{- if not (and (kindIs "map" $v) (hasKey $v "sidecar")) -}}
{{- fail "jwt-sidecar: cannot find this chart's values; add jwt-sidecar as a dependency or pass (dict \"Values\" <its values> \"Release\" .Release)" -}}
{{- end -}}
{{- toJson (dict "Values" $v "Release" (dict "Name" .Release.Name "Namespace" .Release.Namespace)) -}}
{{- end }}

{{/* The sidecar container, whatever nativeSidecar says (place it yourself). */}}
{{- define "jwt-sidecar.container" -}}
{{- include "jwt-sidecar._container" (include "jwt-sidecar.scope" . | fromJson) -}}
{{- end }}

{{/* The sidecar container when it is a regular container (nativeSidecar: false), else nothing. */}}
{{- define "jwt-sidecar.containers" -}}
{{- $ctx := include "jwt-sidecar.scope" . | fromJson -}}
{{- if not $ctx.Values.sidecar.nativeSidecar -}}
{{- include "jwt-sidecar._container" $ctx -}}
{{- end -}}
{{- end }}

{{/* The sidecar as a native sidecar init container (nativeSidecar: true), else nothing. */}}
{{- define "jwt-sidecar.initContainers" -}}
{{- $ctx := include "jwt-sidecar.scope" . | fromJson -}}
{{- if $ctx.Values.sidecar.nativeSidecar -}}
{{- include "jwt-sidecar._container" $ctx -}}
{{- end -}}
{{- end }}

{{/* The config and /tmp volumes (list items). */}}
{{- define "jwt-sidecar.volumes" -}}
{{- include "jwt-sidecar._volumes" (include "jwt-sidecar.scope" . | fromJson) -}}
{{- end }}

{{/*
"true" unless sidecar.config.reload turns live reload off. With reload the pods apply a ConfigMap edit
themselves (the kubelet updates the mounted file), so the pod template must not change with the config.
*/}}
{{- define "jwt-sidecar.reloads" -}}
{{- $cfg := .Values.sidecar.config | default dict -}}
{{- if or (not (hasKey $cfg "reload")) (not (has (lower (toString (get $cfg "reload"))) (list "false" "0" "no" "off"))) -}}
true
{{- end -}}
{{- end }}

{{/*
Pod annotation for the config (mapping entry). Reload off: checksum/jwt-sidecar-config, so a config change
rolls the pods. Reload on: a fixed marker instead, so a config change reaches the running pods with no rollout.
*/}}
{{- define "jwt-sidecar.podAnnotations" -}}
{{- $ctx := include "jwt-sidecar.scope" . | fromJson -}}
{{- if include "jwt-sidecar.reloads" $ctx -}}
jwt-sidecar/config-reload: live
{{- else -}}
checksum/jwt-sidecar-config: {{ include "jwt-sidecar.configYaml" $ctx | sha256sum }}
{{- end -}}
{{- end }}

{{/* A number: ceil(limits.drain_timeout) + margin, or sidecar.terminationGracePeriodSeconds. */}}
{{- define "jwt-sidecar.terminationGracePeriodSeconds" -}}
{{- include "jwt-sidecar._terminationGracePeriodSeconds" (include "jwt-sidecar.scope" . | fromJson) -}}
{{- end }}

{{/*
=====================================================================================================
Monitoring: PromQL label matchers shared by all alerts.
=====================================================================================================
*/}}
{{- define "jwt-sidecar.promSelector" -}}
{{- if .Values.metrics.prometheusRule.selector -}}
{{- .Values.metrics.prometheusRule.selector -}}
{{- else if eq .Values.mode "embedded" -}}
{{- printf "namespace=%q" .Release.Namespace -}}
{{- else -}}
{{- printf "namespace=%q,job=%q" .Release.Namespace (include "jwt-sidecar.metricsServiceName" .) -}}
{{- end -}}
{{- end }}

#!/usr/bin/env bash
# The field's alternative to the operator, as a user would script it after
# writing a new bundle: restart Dapr's control plane in order, each rolled out
# before the next, then the Dapr applications in waves of WAVE, each wave
# rolled out before the next. 'make bench-scale' times it against a rotation.
#
# usage: restart-by-kubectl.sh WAVE APPS_FILE
#   APPS_FILE has one "namespace name" line per application Deployment.
# KUBECTL (default: kubectl) and KUBECONFIG come from the environment.
set -euo pipefail
wave=${1:?usage: restart-by-kubectl.sh WAVE APPS_FILE}
apps_file=${2:?usage: restart-by-kubectl.sh WAVE APPS_FILE}
kubectl=${KUBECTL:-kubectl}
ns=${DAPR_NAMESPACE:-dapr-system}
timeout=10m

for w in deployment/dapr-sentry deployment/dapr-sidecar-injector deployment/dapr-operator \
	statefulset/dapr-placement-server statefulset/dapr-scheduler-server; do
	"$kubectl" -n "$ns" rollout restart "$w" >/dev/null
	"$kubectl" -n "$ns" rollout status "$w" --timeout="$timeout" >/dev/null
done

mapfile -t apps <"$apps_file"
for ((i = 0; i < ${#apps[@]}; i += wave)); do
	pids=()
	for app in "${apps[@]:i:wave}"; do
		read -r app_ns app_name <<<"$app"
		{
			"$kubectl" -n "$app_ns" rollout restart "deployment/$app_name" >/dev/null &&
				"$kubectl" -n "$app_ns" rollout status "deployment/$app_name" --timeout="$timeout" >/dev/null
		} &
		pids+=($!)
	done
	for pid in "${pids[@]}"; do
		wait "$pid"
	done
done

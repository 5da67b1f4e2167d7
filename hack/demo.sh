#!/usr/bin/env bash
# The demo of 'make demo', run once the local cluster, the Dapr fixture on
# Dapr's own Sentry and injector ('fixture --real-dapr') and the operator are
# up: the operator takes over the CA Dapr's Sentry made at install with a
# trust-overlap rotation, then a Git-style same-key rotation by changing
# spec.trigger; all the while a sidecar on Dapr's own mTLS code in each
# application pod calls every other, and the demo fails if one call does.
# Nothing is torn down.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export KUBECONFIG="$root/bin/local/kubeconfig"
kubectl="$root/bin/k8s/assets/kubectl"
ns=dapr-system
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
calls() { head -2 "$root/bin/local/calls.txt"; }
field() { "$kubectl" -n "$ns" get mtlsrotation dapr -o jsonpath="$1"; }

say "Dapr control plane and applications, before any rotation: Dapr's own Sentry and injector run them"
"$kubectl" get pods -A -l 'app in (dapr-sentry,dapr-sidecar-injector,dapr-operator,dapr-placement-server,dapr-scheduler-server)'
"$kubectl" -n "$ns" get secret dapr-trust-bundle -o go-template='dapr-trust-bundle Secret, as Dapr'"'"'s Sentry wrote it at install: {{range $k, $v := .data}}{{$k}} {{end}}{{"\n"}}'
echo "Sidecars on Dapr's mTLS code (pkg/security), one per application pod, calling each other:"
calls

say "Applying config/samples/mtls_v1alpha1_mtlsrootrotation.yaml (trigger 2026-11-26) with root.keyPolicy Rotate:"
echo "Sentry threw its root key away, so the operator takes its CA over with a trust overlap (Overlap, Switch, Prune)"
sed 's/keyPolicy: Reuse .*/keyPolicy: Rotate/' "$root/config/samples/mtls_v1alpha1_mtlsrootrotation.yaml" | "$kubectl" apply -f -
"$kubectl" -n "$ns" wait mtlsrotation/dapr --for=jsonpath='{.status.lastCompletedRotation.trigger}'=2026-11-26 --timeout=600s >/dev/null
"$kubectl" -n "$ns" wait mtlsrotation/dapr --for=condition=Ready --timeout=60s >/dev/null
"$kubectl" -n "$ns" get mtlsrotations
root_key_1=$(field '{.status.root.publicKeySHA256}')
root_fp_1=$(field '{.status.root.sha256Fingerprint}')
issuer_fp_1=$(field '{.status.issuer.sha256Fingerprint}')
echo "root certificate SHA-256: $root_fp_1"
echo "root public key  SHA-256: $root_key_1"
echo "issuer certificate SHA-256: $issuer_fp_1"
calls

say "A Git commit changes spec.trigger and sets root.keyPolicy back to Reuse: a same-key rotation"
"$kubectl" -n "$ns" patch mtlsrotation dapr --type merge -p '{"spec":{"trigger":"2026-11-26-second","root":{"keyPolicy":"Reuse"}}}'
"$kubectl" -n "$ns" wait mtlsrotation/dapr --for=jsonpath='{.status.lastCompletedRotation.trigger}'=2026-11-26-second --timeout=300s >/dev/null
"$kubectl" -n "$ns" get mtlsrotations -o wide
root_key_2=$(field '{.status.root.publicKeySHA256}')
root_fp_2=$(field '{.status.root.sha256Fingerprint}')
issuer_fp_2=$(field '{.status.issuer.sha256Fingerprint}')
echo "root certificate SHA-256: $root_fp_2 ($( [[ "$root_fp_2" != "$root_fp_1" ]] && echo "renewed" || echo "UNCHANGED"))"
echo "root public key  SHA-256: $root_key_2 ($( [[ "$root_key_2" == "$root_key_1" ]] && echo "unchanged: same root key" || echo "CHANGED"))"
echo "issuer certificate SHA-256: $issuer_fp_2 ($( [[ "$issuer_fp_2" != "$issuer_fp_1" ]] && echo "new issuer" || echo "UNCHANGED"))"
[[ "$root_key_2" == "$root_key_1" && "$issuer_fp_2" != "$issuer_fp_1" && "$root_fp_2" != "$root_fp_1" ]]

say "Live calls between the applications' sidecars through both rotations (Dapr's own mTLS code, SVIDs from Dapr's Sentry)"
cat "$root/bin/local/calls.txt"
failed=$(sed -n 's/^calls [0-9]*, failed \([0-9]*\),.*/\1/p' "$root/bin/local/calls.txt")
[[ "$failed" == 0 ]] || { echo "calls failed during the rotations" >&2; exit 1; }

say "Expiry: the Root expires and Issuer expires columns, and the metrics the operator serves"
"$kubectl" -n "$ns" get mtlsrotations dapr -o custom-columns='NAME:.metadata.name,ROOT EXPIRES:.status.root.notAfter,ISSUER EXPIRES:.status.issuer.notAfter,EXPIRING SOON:.status.conditions[?(@.type=="ExpiringSoon")].reason'
metrics_addr=$(cat "$root/bin/local/metrics-addr")
{ curl -fsS "http://$metrics_addr/metrics" 2>/dev/null || wget -qO- "http://$metrics_addr/metrics"; } |
	grep -E '^(mtls_rotator_certificate_expiration_timestamp_seconds|mtls_rotator_rotations_total)' || true
echo "(Unix seconds; now is $(date +%s))"

say "mtls-rotator status (the binary's own view, like 'dapr mtls expiry' for root and issuer)"
"$root/bin/mtls-rotator" status

say "Events of the rotations"
"$kubectl" -n "$ns" get events --field-selector involvedObject.kind=MTLSRootRotation --sort-by=.lastTimestamp \
	-o custom-columns=TYPE:.type,REASON:.reason,MESSAGE:.message

say "Done"
echo "The cluster and the operator are still running: export KUBECONFIG=$KUBECONFIG and use $kubectl."
echo "Operator log: $root/bin/local/logs/mtls-rotator.log. Stop everything with: make cluster-down"

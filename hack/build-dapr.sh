#!/usr/bin/env bash
# Builds Dapr's own control-plane binaries (sentry, injector) from the Dapr
# module on the Go module proxy, for the e2e suite and the demo, into a store
# keyed by version:
#   bin/dapr/<version>/sentry
#   bin/dapr/<version>/injector
#   bin/dapr/<version>/sidecar      e2e/dapr/sidecar on that release's pkg/security
#   bin/dapr/<version>/crds/        Dapr's CRDs (its Configuration sets Sentry's TTLs)
# A version already in the store is not rebuilt; its sidecar is, when
# e2e/dapr/sidecar/main.go changed. Dapr never enters the operator's go.mod:
# each version is built in a throwaway wrapper module that requires it (and
# carries upstream's replace directives), as the Kubernetes binaries are.
#
#   DAPR_VERSIONS=v1.18.3,v1.17.5 hack/build-dapr.sh
# The Makefile's DAPR_VERSION pins the release 'make test' runs; it passes it here.
set -euo pipefail

: "${DAPR_VERSIONS:?name the Dapr releases to build, as 'make dapr' does (DAPR_VERSIONS=v1.18.3)}"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
store="${DAPR_BIN_DIR:-$root/bin/dapr}"
work="$store/work"
mkdir -p "$store" "$work"

export CGO_ENABLED=0 GOFLAGS="-buildvcs=false -mod=mod" GOTOOLCHAIN=local

started=$(date +%s)
step() { printf '[build-dapr %3ss] %s\n' "$(( $(date +%s) - started ))" "$*"; }

IFS=',' read -ra versions <<<"$DAPR_VERSIONS"
for version in "${versions[@]}"; do
	version="v${version#v}"
	out="$store/$version"
	sidecar_src="$(sha256sum "$root/e2e/dapr/sidecar/main.go" | cut -c1-16)"
	if [[ -x "$out/sentry" && -x "$out/injector" && -x "$out/sidecar" && "$(cat "$out/sidecar.src" 2>/dev/null)" == "$sidecar_src" ]]; then
		continue
	fi
	d="$work/$version"
	rm -rf "$d" && mkdir -p "$d/sidecar"
	upstream="$(go mod download -json "github.com/dapr/dapr@$version")"
	upstream_mod="$(sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p' <<<"$upstream")"
	upstream_dir="$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p' <<<"$upstream")"
	[[ -f "$upstream_mod" ]] || { echo "build-dapr: cannot download github.com/dapr/dapr@$version" >&2; exit 1; }
	{
		echo "module localbuild/dapr"
		echo
		grep -E '^go [0-9]' "$upstream_mod"
		echo
		# Upstream's replace directives, which a dependency's go.mod does not
		# carry over: its build resolves what Dapr's release resolved.
		awk '/^replace \($/ { inblock = 1; print; next } inblock { print; if ($0 == ")") inblock = 0; next } /^replace / { print }' "$upstream_mod"
	} >"$d/go.mod"
	cp "$root/e2e/dapr/sidecar/main.go" "$d/sidecar/"
	targets=(./sidecar)
	if [[ ! -x "$out/sentry" || ! -x "$out/injector" ]]; then
		step "building Dapr $version (sentry, injector, sidecar); about a minute or two a version on 2 cores, several from empty Go caches"
		targets+=(github.com/dapr/dapr/cmd/sentry github.com/dapr/dapr/cmd/injector)
	else
		step "building the sidecar stand-in on Dapr $version"
	fi
	# The sidecar's own imports (gRPC, jwx) resolve at the versions Dapr's
	# requirements select: Dapr is required first, -mod=mod adds the rest.
	(cd "$d" \
		&& { go get "github.com/dapr/dapr@$version" "github.com/dapr/dapr/cmd/sentry@$version" "github.com/dapr/dapr/cmd/injector@$version" >get.log 2>&1 || { cat get.log >&2; false; }; } \
		&& step "compiling on Dapr $version" \
		&& mkdir -p "$out.tmp" \
		&& go build -trimpath -ldflags "-s -w -X github.com/dapr/dapr/pkg/buildinfo.version=${version#v}" \
			-o "$out.tmp/" "${targets[@]}")
	mkdir -p "$out/crds"
	mv "$out.tmp"/* "$out/" && rmdir "$out.tmp"
	install -m 0644 "$upstream_dir/charts/dapr/crds/configuration.yaml" "$out/crds/"
	echo "$sidecar_src" >"$out/sidecar.src"
	rm -rf "$d"
	step "Dapr $version: $(du -sh "$out" | cut -f1) in $out"
done

#!/usr/bin/env bash
# Builds the binaries the local cluster, envtest and the chart tests (helm) need from the Go module proxy
# (nothing else is downloaded) into a cache keyed by version:
#   bin/k8s/store/<name>-<version>   the binaries
#   bin/k8s/assets/<name>            symlinks to the pinned versions (KUBEBUILDER_ASSETS)
#   bin/k8s/assets/kwok-stages.yaml  kwok Stage configs shipped in the kwok module
#   bin/k8s/assets/argo-rollouts-crds/  the CRDs of the Argo Rollouts module, for its controller
# A binary already in the store is not rebuilt.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.37.2}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
# The newest Argo Rollouts whose go.mod accepts this machine's Go (v1.10 asks for 1.26.10).
ARGO_ROLLOUTS_VERSION="${ARGO_ROLLOUTS_VERSION:-v1.9.2}"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin_dir="${BIN_DIR:-$root/bin/k8s}"
store="$bin_dir/store"
assets="$bin_dir/assets"
work="$bin_dir/work"
mkdir -p "$store" "$assets" "$work"

export CGO_ENABLED=0 GOFLAGS="-buildvcs=false -mod=mod" GOTOOLCHAIN=local

started=$(date +%s)
step() { printf '[build-binaries %3ss] %s\n' "$(( $(date +%s) - started ))" "$*"; }

missing=()
for name in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
	[[ -x "$store/$name-$K8S_VERSION" ]] || missing+=("$name")
done
need_etcd=0; [[ -x "$store/etcd-$ETCD_VERSION" ]] || need_etcd=1
need_kwok=0; [[ -x "$store/kwok-$KWOK_VERSION" && -f "$store/kwok-stages-$KWOK_VERSION.yaml" ]] || need_kwok=1
need_helm=0; [[ -x "$store/helm-$HELM_VERSION" ]] || need_helm=1
need_argo=0; [[ -x "$store/argo-rollouts-controller-$ARGO_ROLLOUTS_VERSION" && -d "$store/argo-rollouts-crds-$ARGO_ROLLOUTS_VERSION" ]] || need_argo=1

todo=$(( ${#missing[@]} + need_etcd + need_kwok + need_helm + need_argo ))
if (( todo > 0 )); then
	step "building $todo binaries from the Go module proxy; from empty caches this takes about 15 minutes and 3 GB of memory on 2 cores"
fi

if (( need_etcd )); then
	step "building etcd $ETCD_VERSION"
	d="$work/etcd-$ETCD_VERSION"
	rm -rf "$d" && mkdir -p "$d"
	cat >"$d/main.go" <<'GO'
// Command etcd runs the etcd server from the etcd module.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
	(cd "$d" && go mod init localbuild/etcd >/dev/null 2>&1 \
		&& go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null \
		&& go mod tidy >/dev/null \
		&& go build -trimpath -ldflags "-s -w" -o "$store/etcd-$ETCD_VERSION.tmp" .)
	mv "$store/etcd-$ETCD_VERSION.tmp" "$store/etcd-$ETCD_VERSION"
	rm -rf "$d"
fi

if (( ${#missing[@]} > 0 )); then
	d="$work/kubernetes-$K8S_VERSION"
	rm -rf "$d" && mkdir -p "$d"
	step "preparing a wrapper module for k8s.io/kubernetes $K8S_VERSION"
	upstream_mod="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
	[[ -f "$upstream_mod" ]] || { echo "build-binaries: cannot download k8s.io/kubernetes@$K8S_VERSION" >&2; exit 1; }
	staging_version="v0.${K8S_VERSION#v1.}"
	{
		echo "module localbuild/kubernetes"
		echo
		grep -E '^go [0-9]' "$upstream_mod"
		grep -E '^godebug ' "$upstream_mod" || true
		echo
		echo "require k8s.io/kubernetes $K8S_VERSION"
		echo
		# Upstream points its staging modules at ./staging; point each one it requires at the
		# published module of the same release instead.
		awk -v v="$staging_version" '
			/^require[[:space:]]*\(/ { inreq = 1; next }
			inreq && /^\)/ { inreq = 0; next }
			inreq && $1 ~ /^k8s\.io\// { required[$1] = 1 }
			/=>[[:space:]]*\.\/staging\// { staged[$1] = 1; if ($1 == "replace") staged[$2] = 1 }
			END { for (m in staged) if (m != "replace" && (m in required)) printf "replace %s => %s %s\n", m, m, v }
		' "$upstream_mod" | sort
	} >"$d/go.mod"
	echo "package tools" >"$d/tools.go"
	(cd "$d" && go mod download k8s.io/kubernetes >/dev/null)
	version_pkg_flags() {
		local minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
		for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
			printf -- '-X %s.gitVersion=%s -X %s.gitMajor=1 -X %s.gitMinor=%s -X %s.gitTreeState=clean ' \
				"$pkg" "$K8S_VERSION" "$pkg" "$pkg" "$minor" "$pkg"
		done
	}
	ldflags="-s -w $(version_pkg_flags)"
	for name in "${missing[@]}"; do
		step "building $name $K8S_VERSION"
		(cd "$d" && go get "k8s.io/kubernetes/cmd/$name@$K8S_VERSION" >/dev/null 2>&1 || true)
		(cd "$d" && go build -trimpath -ldflags "$ldflags" -o "$store/$name-$K8S_VERSION.tmp" "k8s.io/kubernetes/cmd/$name")
		mv "$store/$name-$K8S_VERSION.tmp" "$store/$name-$K8S_VERSION"
	done
	rm -rf "$d"
fi

if (( need_kwok )); then
	step "building kwok $KWOK_VERSION"
	GOBIN="$work/kwok-bin" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
	mv "$work/kwok-bin/kwok" "$store/kwok-$KWOK_VERSION"
	kwok_dir="$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
	# The Stage configs that make fake nodes Ready and fake pods run, become Ready
	# and go away when deleted, concatenated into one kwok --config file.
	stages_out="$store/kwok-stages-$KWOK_VERSION.yaml.tmp"
	: >"$stages_out"
	for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
		pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
		[[ -f "$kwok_dir/kustomize/stage/$f" ]] || { echo "build-binaries: kwok module has no stage $f" >&2; exit 1; }
		{ echo "---"; cat "$kwok_dir/kustomize/stage/$f"; } >>"$stages_out"
	done
	mv "$stages_out" "$store/kwok-stages-$KWOK_VERSION.yaml"
	rm -rf "$work/kwok-bin"
fi

if (( need_helm )); then
	step "building helm $HELM_VERSION"
	GOBIN="$work/helm-bin" go install -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
		"helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
	mv "$work/helm-bin/helm" "$store/helm-$HELM_VERSION"
	rm -rf "$work/helm-bin"
fi

if (( need_argo )); then
	step "building the Argo Rollouts controller $ARGO_ROLLOUTS_VERSION"
	# Its go.mod pins Kubernetes modules with replace directives, which only
	# its own module honours: build inside a copy of it.
	argo_dir="$(go mod download -json "github.com/argoproj/argo-rollouts@$ARGO_ROLLOUTS_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
	[[ -d "$argo_dir" ]] || { echo "build-binaries: cannot download github.com/argoproj/argo-rollouts@$ARGO_ROLLOUTS_VERSION" >&2; exit 1; }
	d="$work/argo-rollouts-$ARGO_ROLLOUTS_VERSION"
	rm -rf "$d" && cp -r "$argo_dir" "$d" && chmod -R u+w "$d"
	(cd "$d" && go build -trimpath -ldflags "-s -w" -o "$store/argo-rollouts-controller-$ARGO_ROLLOUTS_VERSION.tmp" ./cmd/rollouts-controller)
	crds="$store/argo-rollouts-crds-$ARGO_ROLLOUTS_VERSION"
	rm -rf "$crds.tmp" && mkdir -p "$crds.tmp" && cp "$d"/manifests/crds/*-crd.yaml "$crds.tmp/"
	mv "$store/argo-rollouts-controller-$ARGO_ROLLOUTS_VERSION.tmp" "$store/argo-rollouts-controller-$ARGO_ROLLOUTS_VERSION"
	rm -rf "$crds" && mv "$crds.tmp" "$crds"
	rm -rf "$d"
fi

for name in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
	ln -sfn "../store/$name-$K8S_VERSION" "$assets/$name"
done
ln -sfn "../store/etcd-$ETCD_VERSION" "$assets/etcd"
ln -sfn "../store/kwok-$KWOK_VERSION" "$assets/kwok"
ln -sfn "../store/kwok-stages-$KWOK_VERSION.yaml" "$assets/kwok-stages.yaml"
ln -sfn "../store/helm-$HELM_VERSION" "$assets/helm"
ln -sfn "../store/argo-rollouts-controller-$ARGO_ROLLOUTS_VERSION" "$assets/argo-rollouts-controller"
ln -sfn "../store/argo-rollouts-crds-$ARGO_ROLLOUTS_VERSION" "$assets/argo-rollouts-crds"
rmdir "$work" 2>/dev/null || true
step "binaries ready in $assets"

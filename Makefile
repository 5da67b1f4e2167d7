# mtls-rotator Makefile. Everything is built from the Go module proxy; see README.md.

SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec

GO ?= go
GO_MIN_MINOR := 26
CONTROLLER_GEN_VERSION ?= v0.23.0

BIN := $(CURDIR)/bin
ASSETS := $(BIN)/k8s/assets
LOCAL_DIR := $(BIN)/local
KUBECONFIG_LOCAL := $(LOCAL_DIR)/kubeconfig
CONTROLLER_GEN := $(BIN)/controller-gen-$(CONTROLLER_GEN_VERSION)
KUBECTL := $(ASSETS)/kubectl
TEST_FLAGS ?=

export GOTOOLCHAIN := local
export KUBEBUILDER_ASSETS := $(ASSETS)
export CERT_MANAGER_CONTROLLER := $(BIN)/cert-manager-controller
# Dapr's own binaries the e2e suite runs (hack/build-dapr.sh); the newest release by default.
DAPR_VERSION ?= v1.18.3
export DAPR_BIN := $(BIN)/dapr/$(DAPR_VERSION)

# Refuse to run with a missing or too old Go, before anything else.
GO_VERSION := $(shell $(GO) env GOVERSION 2>/dev/null)
ifeq ($(GO_VERSION),)
$(error Go is not installed or not on PATH: mtls-rotator needs Go 1.$(GO_MIN_MINOR) or newer)
endif
GO_OK := $(shell echo "$(GO_VERSION)" | sed -E 's/^go([0-9]+)\.([0-9]+).*/\1 \2/' | awk '{ print ($$1 > 1 || ($$1 == 1 && $$2 >= $(GO_MIN_MINOR))) ? "yes" : "no" }')
ifneq ($(GO_OK),yes)
$(error $(GO_VERSION) is too old: mtls-rotator needs Go 1.$(GO_MIN_MINOR) or newer)
endif

.PHONY: all
all: build

##@ Development

.PHONY: generate
generate: $(CONTROLLER_GEN) ## Generate DeepCopy methods.
	$(CONTROLLER_GEN) object:headerFile=hack/boilerplate.go.txt paths=./api/...

.PHONY: manifests
manifests: $(CONTROLLER_GEN) ## Generate the CRD and the RBAC role from markers.
	$(CONTROLLER_GEN) crd rbac:roleName=mtls-rotator-manager paths=./api/... paths=./controllers/... \
		output:crd:artifacts:config=config/crd/bases output:rbac:artifacts:config=config/rbac
	@# The grant evictUnmanagedPods needs, a role of its own that an install opts into.
	$(CONTROLLER_GEN) rbac:roleName=mtls-rotator-evictor paths=./internal/eviction/... output:rbac:artifacts:config=config/eviction
	@# The Helm chart renders the same CRD, RBAC rules and alerts.
	@mkdir -p charts/mtls-rotator/files/crds
	cp config/crd/bases/mtls.rotator.dev_mtlsrotations.yaml charts/mtls-rotator/files/crds/
	cp config/rbac/role.yaml charts/mtls-rotator/files/role.yaml
	cp config/eviction/role.yaml charts/mtls-rotator/files/eviction-role.yaml
	cp config/prometheus/rule.yaml charts/mtls-rotator/files/prometheus-rule.yaml
	cp config/admission/policy.yaml charts/mtls-rotator/files/admission-policy.yaml

.PHONY: fmt
fmt: ## go fmt.
	$(GO) fmt ./...

.PHONY: vet
vet: ## go vet.
	$(GO) vet ./...

.PHONY: build
build: ## Build the operator binary into bin/.
	$(GO) build -o $(BIN)/mtls-rotator .

.PHONY: run
run: ## Run the operator in the foreground against the local cluster (bin/local/kubeconfig).
	@test -f $(KUBECONFIG_LOCAL) || { echo "no local cluster: run 'make cluster-up' first" >&2; exit 1; }
	KUBECONFIG=$(KUBECONFIG_LOCAL) $(GO) run . --metrics-addr=127.0.0.1:0 --health-addr=127.0.0.1:0

##@ Tests

.PHONY: test
test: binaries cert-manager-controller dapr ## Run every test (unit and e2e on a local cluster) with -race.
	$(GO) test -race -count=1 -timeout=40m $(TEST_FLAGS) ./...

.PHONY: e2e
e2e: binaries cert-manager-controller dapr ## Run only the e2e suites on a local cluster.
	$(GO) test -race -count=1 -timeout=40m $(TEST_FLAGS) ./e2e/...

# make test-dapr DAPR_VERSIONS=v1.18.3,v1.17.5,v1.16.5
DAPR_VERSIONS ?= $(DAPR_VERSION)
# The e2e tests that run Dapr's own binaries.
DAPR_TESTS := TestDaprSentry|TestRollbackRestoresWhatDaprsSentryGenerated|TestRotationsUnderDaprsOwnInjector|TestTakeOverWhatDaprsSentryGenerated|TestPodsNoRestartReachesHoldTheGatesUnderDaprsInjector|TestManualRotationWithoutOverlapFailsCalls

.PHONY: test-dapr
test-dapr: binaries cert-manager-controller ## Run the e2e tests that run Dapr's own binaries on each of DAPR_VERSIONS (built once each).
	DAPR_VERSIONS=$(DAPR_VERSIONS) hack/build-dapr.sh
	@IFS=',' read -ra versions <<<"$(DAPR_VERSIONS)"; failed=(); for v in "$${versions[@]}"; do v="v$${v#v}"; \
		echo "== Dapr $$v"; \
		DAPR_BIN=$(BIN)/dapr/$$v $(GO) test -race -count=1 -timeout=20m -run '$(DAPR_TESTS)' $(TEST_FLAGS) ./e2e/ || failed+=("$$v"); \
	done; \
	if (( $${#failed[@]} )); then echo "Dapr versions that failed: $${failed[*]}" >&2; exit 1; fi; echo "Dapr versions that passed: $(DAPR_VERSIONS)"

.PHONY: bench
bench: ## Run the benchmarks.
	$(GO) test -run='^$$' -bench=. -benchmem ./...

# make fuzz FUZZTIME=1m
FUZZTIME ?= 30s

.PHONY: fuzz
fuzz: ## Run every fuzz target for FUZZTIME each (not in 'make test'); a failing input lands in the package's testdata/fuzz.
	@grep -rHo --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*' . | sort | while IFS=: read -r file fn; do \
		target=$${fn#func }; dir=$$(dirname "$$file"); \
		echo "== $$target in $$dir for $(FUZZTIME)"; \
		$(GO) test -run='^$$' -fuzz="^$$target$$" -fuzztime=$(FUZZTIME) "$$dir" || exit 1; \
	done

# make bench-scale APPS=100,300,1000 FOREIGN=10000 WAVE=10 KEY_POLICY=Reuse OPERATOR_POLL=2s
APPS ?= 100,300,1000
FOREIGN ?= 10000
WAVE ?= 10
KEY_POLICY ?= Reuse
OPERATOR_POLL ?= 2s
BENCH_RESULTS ?= bench-results

.PHONY: bench-scale
bench-scale: binaries cert-manager-controller localcluster build ## Time a kubectl restart script against a rotation on a fresh local cluster (not in 'make test'; see README).
	@if [[ -f $(BIN)/bench-scale/state.json ]]; then echo "a benchmark cluster is running in $(BIN)/bench-scale: '$(BIN)/localcluster --dir $(BIN)/bench-scale down' first" >&2; exit 1; fi
	$(GO) run ./e2e/cmd/benchscale --dir $(BIN)/bench-scale --apps $(APPS) --foreign $(FOREIGN) --wave $(WAVE) \
		--key-policy $(KEY_POLICY) --operator-poll $(OPERATOR_POLL) --results $(BENCH_RESULTS)

##@ Local cluster

.PHONY: binaries
binaries: ## Build etcd, kube-*, kubectl and kwok from the Go module proxy into bin/k8s (once).
	hack/build-binaries.sh

.PHONY: dapr
dapr: ## Build Dapr's sentry, injector and the sidecar stand-in on its pkg/security (DAPR_VERSION) from the Go module proxy into bin/dapr (once).
	DAPR_VERSIONS=$(DAPR_VERSION) hack/build-dapr.sh

.PHONY: cert-manager-controller
cert-manager-controller: ## Build the cert-manager controllers program.
	$(GO) build -o $(CERT_MANAGER_CONTROLLER) ./e2e/cmd/cert-manager-controller

.PHONY: localcluster
localcluster:
	$(GO) build -o $(BIN)/localcluster ./e2e/cmd/localcluster

.PHONY: cluster-up
cluster-up: binaries cert-manager-controller localcluster ## Start the local cluster in the background.
	$(BIN)/localcluster --dir $(LOCAL_DIR) up

.PHONY: cluster-down
cluster-down: localcluster ## Stop the local cluster and remove its state.
	$(BIN)/localcluster --dir $(LOCAL_DIR) down

.PHONY: fixture
fixture: localcluster ## Install the Dapr fixture into the running local cluster (FIXTURE_FLAGS=--real-dapr: on Dapr's own Sentry and injector).
	$(BIN)/localcluster --dir $(LOCAL_DIR) fixture --apps 10 $(FIXTURE_FLAGS)

.PHONY: operator
operator: build localcluster ## Run the operator in the background on the local cluster, under its generated RBAC.
	$(BIN)/localcluster --dir $(LOCAL_DIR) operator --binary $(BIN)/mtls-rotator

.PHONY: demo
demo: ## Local cluster, Dapr's own Sentry and injector, sidecars on its mTLS code, the operator; a takeover, then a same-key rotation, with live call counts. Left running.
	@if [[ -f $(LOCAL_DIR)/state.json ]]; then echo "a local cluster is already running; 'make cluster-down' first for a fresh demo" >&2; exit 1; fi
	$(MAKE) dapr
	$(MAKE) cluster-up
	$(MAKE) fixture FIXTURE_FLAGS=--real-dapr
	$(MAKE) operator
	hack/demo.sh

$(CONTROLLER_GEN):
	GOBIN=$(BIN)/tmp-controller-gen $(GO) install sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_GEN_VERSION)
	mv $(BIN)/tmp-controller-gen/controller-gen $@ && rmdir $(BIN)/tmp-controller-gen

.PHONY: help
help: ## Show the targets.
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z_-]+:.*?##/ { printf "  %-24s %s\n", $$1, $$2 } /^##@/ { printf "\n%s\n", substr($$0, 5) }' $(MAKEFILE_LIST)

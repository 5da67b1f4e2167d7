package v1alpha1

// Condition reasons of MTLSRootRotation, besides the meta package's.
const (
	// RootKeyUnknownReason: the installed anchors were not made with our root
	// key, so a Reuse rotation cannot keep every handshake working.
	RootKeyUnknownReason = "RootKeyUnknown"
	// ConflictReason: another MTLSRootRotation already manages the same bundle.
	ConflictReason = "Conflict"
	// TargetNotFoundReason: the Secret or ConfigMap Sentry reads does not exist.
	TargetNotFoundReason = "TargetNotFound"
	// WorkloadNotFoundReason: a required control-plane workload does not exist.
	WorkloadNotFoundReason = "WorkloadNotFound"
	// RolloutTimeoutReason: a workload did not roll out within its timeout.
	RolloutTimeoutReason = "RolloutTimeout"
	// PodsNotConvergedReason: a phase waits for Dapr pods that do not trust
	// the new root (or may still use the old issuer), named in the message.
	PodsNotConvergedReason = "PodsNotConverged"
	// InvalidSpecReason: a field the CRD's validation cannot check (a label
	// selector) is wrong; nothing is done until the spec changes.
	InvalidSpecReason = "InvalidSpec"
	// DryRunMidRotationReason: spec.dryRun was set while a rotation is in
	// flight; it is held until dryRun is false.
	DryRunMidRotationReason = "DryRunMidRotation"
	// RestartsDeferredReason: a same-key rotation published and defers the
	// application restarts (spec.applications.lazy); the mesh works meanwhile.
	RestartsDeferredReason = "RestartsDeferred"
	// InjectorStaleReason: the first application a phase restarted (its
	// canary) got other trust anchors from Dapr's sidecar injector than the
	// phase published; no other application is restarted.
	InjectorStaleReason = "InjectorStale"
	// DaprConfigurationUnknownReason: Dapr's Configurations could not be
	// read, so whether WorkflowHistorySigning is on (which decides, with
	// spec.root.retired.policy Auto, whether retired roots stay) is not known;
	// no rotation starts until it is.
	DaprConfigurationUnknownReason = "DaprConfigurationUnknown"
	// UpdateStrategyUnsupportedReason: a workload to restart has an update
	// strategy (OnDelete, or a StatefulSet partition) under which a restart
	// of its pod template never replaces its pods; nothing is restarted.
	UpdateStrategyUnsupportedReason = "UpdateStrategyUnsupported"
	// EvictionNotGrantedReason: spec.applications.evictUnmanagedPods is set,
	// but the operator's ServiceAccount was not granted pods/eviction (an
	// opt-in of the install: config/eviction, or the chart's
	// eviction.enabled).
	EvictionNotGrantedReason = "EvictionNotGranted"
	// InjectorNotVerifiedReason: the canary's new pods were admitted without
	// a Dapr sidecar, so what the injector hands out is not known; no other
	// application is restarted.
	InjectorNotVerifiedReason = "InjectorNotVerified"
	// UnmanagedPodsEvictedReason: Dapr pods no workload restart reaches were
	// evicted to open a gate (spec.applications.evictUnmanagedPods).
	UnmanagedPodsEvictedReason = "UnmanagedPodsEvicted"
	// InvalidBundleReason: the issued bundle would be refused by Sentry.
	InvalidBundleReason = "InvalidBundle"
	// KeyPolicyChangeDeferredReason: spec.root.keyPolicy changed while a
	// rotation with the other policy runs; it applies to the next rotation.
	KeyPolicyChangeDeferredReason = "KeyPolicyChangeDeferred"
	// TrustBundleDriftCondition is True when the Secret or ConfigMap Sentry
	// reads holds content the operator did not publish.
	TrustBundleDriftCondition = "TrustBundleDrift"
	// TrustBundleDriftReason: see TrustBundleDriftCondition.
	TrustBundleDriftReason = "TrustBundleDrift"
	// InvalidPrivateKeyReason: the brought root key cannot be used.
	InvalidPrivateKeyReason = "InvalidPrivateKey"
	// RolledBackReason: a control-plane workload did not roll out after a
	// publish; the previous bundle was restored and the workload restarted on it.
	RolledBackReason = "RolledBack"
	// IssuerCANotSelfSignedReason: the CA of spec.issuer.issuerRef is not a
	// self-signed root, which Dapr Sentry refuses as a trust anchor.
	IssuerCANotSelfSignedReason = "IssuerCANotSelfSigned"
	// IssuerRefChangeDeferredReason: spec.issuer.issuerRef changed while a
	// rotation that already published runs; it applies to the next rotation.
	IssuerRefChangeDeferredReason = "IssuerRefChangeDeferred"
	// ExpiringSoonCondition is True while the published root or issuer
	// expires within spec.expiryWarning (or has expired).
	ExpiringSoonCondition = "ExpiringSoon"
	// ExpiringSoonReason: see ExpiringSoonCondition.
	ExpiringSoonReason = "ExpiringSoon"
	// RenewalIneffectiveReason: an automatic renewal left the certificate it
	// renewed still within spec.renewBefore; no other starts on its own.
	RenewalIneffectiveReason = "RenewalIneffective"
	// MTLSDisabledReason: Dapr's Configuration turns mTLS off.
	MTLSDisabledReason = "MTLSDisabled"
	// SuspendedReason: spec.suspend is true.
	SuspendedReason = "Suspended"
)

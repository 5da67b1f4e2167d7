package v1alpha1

import (
	"github.com/fluxcd/pkg/apis/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// MTLSRootRotationStatus is the observed state of an MTLSRootRotation. It holds
// all the progress of a rotation, so that a restarted operator resumes it.
type MTLSRootRotationStatus struct {
	meta.ReconcileRequestStatus `json:",inline"`

	// ObservedGeneration is the last generation of the spec the operator acted on.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Conditions hold Ready, Reconciling and Stalled in kstatus semantics.
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// Rotation is the rotation in flight, or the last one when none is.
	// +optional
	Rotation *RotationStatus `json:"rotation,omitempty"`

	// Root describes the root certificate currently published: the newest
	// trust anchor.
	// +optional
	Root *CertificateStatus `json:"root,omitempty"`

	// IssuerRoot describes the trust anchor the published issuer chains to,
	// when that is not root: in an overlap bundle, the old root until the
	// Switch phase, or an installed bundle whose issuer an older anchor
	// signed. Its expiry cuts the mesh off as root's would, so it is watched
	// as root is.
	// +optional
	IssuerRoot *CertificateStatus `json:"issuerRoot,omitempty"`

	// Issuer describes the issuer certificate currently published.
	// +optional
	Issuer *CertificateStatus `json:"issuer,omitempty"`

	// PublishedBundleHash is the content hash of the bundle last published;
	// the Secret holding anything else is drift.
	// +optional
	PublishedBundleHash string `json:"publishedBundleHash,omitempty"`

	// RootKeyGeneration counts the root private keys this object has made: a
	// Rotate rotation starts a new one in a new Secret.
	// +optional
	RootKeyGeneration int32 `json:"rootKeyGeneration,omitempty"`

	// TrustAnchors is the number of root certificates currently published.
	// +optional
	TrustAnchors int32 `json:"trustAnchors,omitempty"`

	// RetiredRootsKept is how many of them are neither the newest root nor
	// the one the issuer chains to: roots retired from signing and still
	// trusted. spec.root.retired keeps them for signed workflow histories;
	// otherwise the old root between a Rotate rotation's Switch and Prune
	// phases, or the extra anchors of an install, are counted.
	// +optional
	RetiredRootsKept int32 `json:"retiredRootsKept,omitempty"`

	// Applications is the application restart progress of the current rotation.
	// +optional
	Applications *ApplicationsStatus `json:"applications,omitempty"`

	// Plan is what the next rotation would do, computed when spec.dryRun is true.
	// +optional
	Plan *RotationPlan `json:"plan,omitempty"`

	// LastCompletedRotation is the last rotation that finished.
	// +optional
	LastCompletedRotation *CompletedRotation `json:"lastCompletedRotation,omitempty"`

	// NextRenewal is when the next automatic renewal falls due (spec.renewBefore).
	// +optional
	NextRenewal *metav1.Time `json:"nextRenewal,omitempty"`

	// DaprConfiguration is what the Dapr Configuration daprsystem in this
	// namespace says of mTLS, as last read.
	// +optional
	DaprConfiguration *DaprConfigurationStatus `json:"daprConfiguration,omitempty"`

	// Convergence is which trust anchors the Dapr sidecar pods that run hold,
	// read from the pods themselves, against the root published last.
	// +optional
	Convergence *ConvergenceStatus `json:"convergence,omitempty"`
}

// DaprConfigurationStatus is the mTLS settings of Dapr's system Configuration.
type DaprConfigurationStatus struct {
	// Name of the system Configuration; empty when there is none (Dapr's
	// defaults apply) and only WorkflowHistorySigning is reported.
	Name string `json:"name"`
	// MTLSEnabled is spec.mtls.enabled; false means sidecars do not use the
	// certificates this object rotates.
	MTLSEnabled bool `json:"mtlsEnabled"`
	// WorkloadCertTTL is spec.mtls.workloadCertTTL (Dapr's default is 24h).
	// +optional
	WorkloadCertTTL string `json:"workloadCertTTL,omitempty"`
	// AllowedClockSkew is spec.mtls.allowedClockSkew (Dapr's default is 15m).
	// +optional
	AllowedClockSkew string `json:"allowedClockSkew,omitempty"`
	// WorkflowHistorySigning names the Dapr Configurations of the cluster
	// that turn the WorkflowHistorySigning feature on (spec.features), as
	// namespace/name (the first five, and how many more); applications name
	// theirs with dapr.io/config. Retired roots are then kept
	// (spec.root.retired).
	// +optional
	WorkflowHistorySigning string `json:"workflowHistorySigning,omitempty"`
}

// RotationStep is a step of a rotation.
// +kubebuilder:validation:Enum=Issuing;Verifying;Publishing;RestartingControlPlane;RestartingApplications;RollingBack;Completed;RolledBack
type RotationStep string

const (
	// StepIssuing renews the root (same key), then the issuer, through cert-manager.
	StepIssuing RotationStep = "Issuing"
	// StepVerifying proves the new bundle against the installed one before anything is written.
	StepVerifying RotationStep = "Verifying"
	// StepPublishing writes the Secret and the ConfigMap Sentry reads.
	StepPublishing RotationStep = "Publishing"
	// StepRestartingControlPlane restarts the control-plane workloads in order.
	StepRestartingControlPlane RotationStep = "RestartingControlPlane"
	// StepRestartingApplications restarts the Dapr applications in waves.
	StepRestartingApplications RotationStep = "RestartingApplications"
	// StepCompleted marks a finished rotation.
	StepCompleted RotationStep = "Completed"
	// StepRollingBack restores the bundle the last publish replaced, after a
	// control-plane workload failed to roll out on it, and restarts that
	// workload on it.
	StepRollingBack RotationStep = "RollingBack"
	// StepRolledBack marks a rotation that ended by restoring the bundle its
	// last publish replaced; it does not start again until spec.trigger changes.
	StepRolledBack RotationStep = "RolledBack"
)

// RotationStatus is the progress of one rotation.
type RotationStatus struct {
	// ID identifies the rotation; restart annotations carry it, so that a
	// replayed step restarts nothing twice.
	ID string `json:"id"`
	// Trigger is the spec.trigger value that started the rotation.
	// +optional
	Trigger string `json:"trigger,omitempty"`
	// SpecHash is a hash of the spec the rotation was planned from.
	// +optional
	SpecHash string `json:"specHash,omitempty"`
	// KeyPolicy is the root key policy the rotation runs with.
	// +optional
	KeyPolicy KeyPolicy `json:"keyPolicy,omitempty"`
	// DeferredKeyPolicy is a key policy the spec asked for while this rotation
	// ran: refused for it, applied to the next rotation.
	// +optional
	DeferredKeyPolicy KeyPolicy `json:"deferredKeyPolicy,omitempty"`
	// IssuerRef is the external issuer the rotation issues from (none: a root
	// of its own), pinned at its start: a change of spec.issuer.issuerRef
	// replaces a rotation that has published nothing, and otherwise applies to
	// the next one.
	// +optional
	IssuerRef *IssuerReference `json:"issuerRef,omitempty"`
	// IssuerRefChangeDeferred is true once a change of spec.issuer.issuerRef
	// was refused for this rotation (and announced).
	// +optional
	IssuerRefChangeDeferred bool `json:"issuerRefChangeDeferred,omitempty"`
	// RollingBack names the control-plane workload whose failed rollout the
	// rotation rolls back; recorded before the bundle is restored, so that a
	// restarted operator finishes the rollback, and kept afterwards.
	// +optional
	RollingBack string `json:"rollingBack,omitempty"`
	// Phase is the trust-overlap phase of a Rotate rotation: Overlap (old and
	// new roots trusted, old issuer), Switch (new issuer) or Prune (new root only).
	// +optional
	Phase RotationPhase `json:"phase,omitempty"`
	// KeepsRetiredRoots is decided as the rotation starts (spec.root.retired
	// and the Dapr Configuration): the roots it retires stay in the trust
	// anchors, so a Rotate rotation ends with its Switch phase, both roots
	// trusted, and a renewal keeps the replaced root certificate.
	// +optional
	KeepsRetiredRoots bool `json:"keepsRetiredRoots,omitempty"`
	// Cause is what started the rotation: Trigger (spec.trigger, or a first
	// issuance) or Renewal (spec.renewBefore).
	// +optional
	Cause RotationCause `json:"cause,omitempty"`
	// Renews is what a Renewal rotation renews: Issuer (the trust anchors
	// stay; applications are not restarted) or Root (root and issuer).
	// +optional
	Renews string `json:"renews,omitempty"`
	// Step is the current step.
	Step RotationStep `json:"step"`
	// StartedAt is when the rotation started.
	StartedAt metav1.Time `json:"startedAt"`
	// Message says what the rotation is doing or waiting for.
	// +optional
	Message string `json:"message,omitempty"`
	// RootRevision and IssuerRevision are the cert-manager Certificate revisions
	// the rotation issued and waits for.
	// +optional
	RootRevision int32 `json:"rootRevision,omitempty"`
	// +optional
	IssuerRevision int32 `json:"issuerRevision,omitempty"`
	// WaitingFor names what the current step waits for (a workload, a wave);
	// WaitingSince is when that wait began, for the rollout timeouts.
	// +optional
	WaitingFor string `json:"waitingFor,omitempty"`
	// +optional
	WaitingSince *metav1.Time `json:"waitingSince,omitempty"`
	// DeferredUntil is, with spec.applications.lazy, when the applications
	// that have not converged by their owners' redeploys are restarted:
	// restartBefore ahead of the expiry of the previous root certificate,
	// recorded before the wait starts.
	// +optional
	DeferredUntil *metav1.Time `json:"deferredUntil,omitempty"`
	// Canary is the application a phase restarts first, alone: the anchors
	// its new pods got from Dapr's sidecar injector decide whether any other
	// application restarts.
	// +optional
	Canary *CanaryStatus `json:"canary,omitempty"`
	// Steps records when each step started and finished, in order.
	// +listType=atomic
	// +optional
	Steps []StepStatus `json:"steps,omitempty"`
}

// CanaryStatus is what the first application a phase restarted showed of
// Dapr's sidecar injector.
type CanaryStatus struct {
	// RestartID is the restart (rotation id, and phase) it was chosen for.
	RestartID string `json:"restartID"`
	// Workload is the application restarted first, as "Kind namespace/name".
	Workload string `json:"workload"`
	// Pod is the pod, injected after that restart, whose trust anchors were
	// the ones published: the evidence the other applications restart on.
	// +optional
	Pod string `json:"pod,omitempty"`
	// VerifiedAt is when that pod was observed.
	// +optional
	VerifiedAt *metav1.Time `json:"verifiedAt,omitempty"`
}

// RotationCause is what started a rotation.
// +kubebuilder:validation:Enum=Trigger;Renewal
type RotationCause string

const (
	// CauseTrigger: spec.trigger changed, or the object was created.
	CauseTrigger RotationCause = "Trigger"
	// CauseRenewal: a published certificate fell within spec.renewBefore.
	CauseRenewal RotationCause = "Renewal"
)

// RotationPhase is a phase of a trust-overlap (Rotate) rotation.
// +kubebuilder:validation:Enum=Overlap;Switch;Prune
type RotationPhase string

const (
	// PhaseOverlap publishes the installed anchors plus the new root, with the
	// installed issuer, and restarts everything so every pod trusts both.
	PhaseOverlap RotationPhase = "Overlap"
	// PhaseSwitch publishes the new issuer, still with both anchors, and
	// restarts everything so every certificate comes from the new issuer.
	PhaseSwitch RotationPhase = "Switch"
	// PhasePrune publishes the new root alone and restarts everything.
	PhasePrune RotationPhase = "Prune"
)

// StepStatus records the times of one step.
type StepStatus struct {
	// Name of the step.
	Name RotationStep `json:"name"`
	// Phase the step belonged to, for a Rotate rotation.
	// +optional
	Phase RotationPhase `json:"phase,omitempty"`
	// StartedAt is when the step started.
	StartedAt metav1.Time `json:"startedAt"`
	// FinishedAt is when the step finished.
	// +optional
	FinishedAt *metav1.Time `json:"finishedAt,omitempty"`
}

// CertificateStatus describes a published certificate without its body.
type CertificateStatus struct {
	// NotBefore is the start of validity.
	NotBefore metav1.Time `json:"notBefore"`
	// NotAfter is the end of validity.
	NotAfter metav1.Time `json:"notAfter"`
	// SerialNumber in hexadecimal.
	SerialNumber string `json:"serialNumber"`
	// Subject is the distinguished name.
	// +optional
	Subject string `json:"subject,omitempty"`
	// SHA256Fingerprint is the SHA-256 of the certificate (DER), hex with colons.
	SHA256Fingerprint string `json:"sha256Fingerprint"`
	// PublicKeySHA256 is the SHA-256 of the public key (SubjectPublicKeyInfo DER),
	// hex with colons; it stays the same across same-key renewals.
	PublicKeySHA256 string `json:"publicKeySHA256"`
}

// ApplicationsStatus is the application restart progress of a rotation.
type ApplicationsStatus struct {
	// Total is the number of applications the rotation restarts.
	Total int32 `json:"total"`
	// Restarted is the number fully rolled out after their restart.
	Restarted int32 `json:"restarted"`
	// Skipped is the number not restarted in the current phase: every pod
	// of theirs held what the phase needs already (redeployed by its owner
	// since the publish, say).
	// +optional
	Skipped int32 `json:"skipped,omitempty"`
	// Progress is (Restarted+Skipped)/Total, for kubectl.
	// +optional
	Progress string `json:"progress,omitempty"`
}

// RotationPlan is what a rotation would do, computed without side effects.
type RotationPlan struct {
	// ComputedAt is when the plan was computed.
	ComputedAt metav1.Time `json:"computedAt"`
	// KeyPolicy the rotation would run with.
	KeyPolicy KeyPolicy `json:"keyPolicy"`
	// Phases a Rotate rotation would run (none for Reuse).
	// +optional
	Phases []RotationPhase `json:"phases,omitempty"`
	// Certificates cert-manager would issue, in order.
	// +optional
	Certificates []string `json:"certificates,omitempty"`
	// ControlPlane lists the control-plane workloads in restart order; missing
	// optional ones are marked skipped.
	// +optional
	ControlPlane []string `json:"controlPlane,omitempty"`
	// Applications is how many Dapr applications would be restarted, per
	// phase: every one selected, as none of their pods can hold anchors not
	// issued yet (with restartsDeferredUntil, at most that many: those their
	// owners have not redeployed by then).
	Applications int32 `json:"applications"`
	// Waves is how many groups of maxConcurrent that is, per phase (the
	// restarts run as a sliding window: the next starts as soon as one has
	// rolled out).
	Waves int32 `json:"waves"`
	// RestartsDeferredUntil is, with spec.applications.lazy, from when the
	// applications would be restarted: only those their owners have not
	// redeployed by then.
	// +optional
	RestartsDeferredUntil *metav1.Time `json:"restartsDeferredUntil,omitempty"`
	// FirstWaves lists the applications of the first groups, in restart
	// order (at most 10 groups).
	// +optional
	FirstWaves []PlannedWave `json:"firstWaves,omitempty"`
	// Blockers are what would stop the rotation now (a missing workload, say).
	// +optional
	Blockers []string `json:"blockers,omitempty"`
	// KeepsRetiredRoots says the rotation would keep the roots it retires in
	// the trust anchors (spec.root.retired), and why.
	// +optional
	KeepsRetiredRoots string `json:"keepsRetiredRoots,omitempty"`
}

// PlannedWave is one wave of application restarts.
type PlannedWave struct {
	// Applications as Kind namespace/name.
	Applications []string `json:"applications"`
}

// CompletedRotation records a finished rotation.
type CompletedRotation struct {
	// ID of the rotation.
	ID string `json:"id"`
	// Trigger that started it.
	// +optional
	Trigger string `json:"trigger,omitempty"`
	// Cause is what started it: Trigger or Renewal.
	// +optional
	Cause RotationCause `json:"cause,omitempty"`
	// FinishedAt is when it completed.
	FinishedAt metav1.Time `json:"finishedAt"`
}

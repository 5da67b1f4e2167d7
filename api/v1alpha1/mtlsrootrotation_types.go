package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// MTLSRootRotationKind is the kind of MTLSRootRotation objects.
const MTLSRootRotationKind = "MTLSRootRotation"

// MTLSRootRotationSpec declares the trust material of one Dapr control plane:
// how its root and issuer certificates are made, where Dapr Sentry reads them,
// and what must restart, in which order, after they change.
// +kubebuilder:validation:XValidation:rule="!has(self.issuer) || !has(self.root) || has(self.issuer.issuerRef) || !has(self.issuer.duration) || !has(self.root.duration) || duration(self.issuer.duration) <= duration(self.root.duration)",message="issuer.duration must not exceed root.duration: an issuer cannot outlive the root that signs it"
// +kubebuilder:validation:XValidation:rule="!has(self.renewBefore) || !has(self.issuer) || !has(self.issuer.duration) || duration(self.renewBefore) < duration(self.issuer.duration)",message="renewBefore must be shorter than issuer.duration: a renewed issuer would be due again at once"
// +kubebuilder:validation:XValidation:rule="!has(self.issuer) || !has(self.root) || !has(self.issuer.issuerRef) || !has(self.root.privateKeySecretRef)",message="issuer.issuerRef and root.privateKeySecretRef cannot be used together: with an external issuer the root and its key belong to that issuer's CA"
// +kubebuilder:validation:XValidation:rule="!has(self.applications) || !has(self.applications.lazy) || ((!has(self.root) || !has(self.root.keyPolicy) || self.root.keyPolicy == 'Reuse') && (!has(self.issuer) || !has(self.issuer.issuerRef)))",message="applications.lazy needs a rotation that keeps the root key: root.keyPolicy Reuse and no issuer.issuerRef"
type MTLSRootRotationSpec struct {
	// TrustDomain is the SPIFFE trust domain of the Dapr control plane
	// (Dapr's global.mtls.controlPlaneTrustDomain).
	// +kubebuilder:default="cluster.local"
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:XValidation:rule="self.size() <= 64",message="trustDomain must be at most 64 characters: it is the issuer certificate's common name, which X.509 bounds at 64"
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$')",message="trustDomain must be a SPIFFE trust domain: lowercase letters, digits, '.', '-' and '_', starting and ending with a letter or digit"
	// +optional
	TrustDomain string `json:"trustDomain,omitempty"`

	// Root configures the root certificate, the trust anchor every Dapr sidecar holds.
	// +kubebuilder:default={}
	// +optional
	Root RootSpec `json:"root,omitempty"`

	// Issuer configures the issuer certificate Sentry signs workload certificates with.
	// +kubebuilder:default={}
	// +optional
	Issuer IssuerSpec `json:"issuer,omitempty"`

	// Target names the Secret and ConfigMap Dapr Sentry reads, in this object's namespace.
	// +kubebuilder:default={}
	// +optional
	Target TargetSpec `json:"target,omitempty"`

	// ControlPlane lists the Dapr control-plane workloads restarted, one at a
	// time and in this order, after the trust bundle changes.
	// +kubebuilder:default={}
	// +optional
	ControlPlane ControlPlaneSpec `json:"controlPlane,omitempty"`

	// Applications selects the Dapr-enabled workloads restarted, in bounded
	// waves, after the control plane, so that their sidecars pick up the new
	// trust anchors.
	// +kubebuilder:default={}
	// +optional
	Applications ApplicationsSpec `json:"applications,omitempty"`

	// Trigger is an opaque string; changing it starts a new rotation, so that one
	// Git commit is one rotation. Creating the object on an install whose bundle
	// is empty performs the first issuance whatever its value.
	// +kubebuilder:validation:MaxLength=253
	// +optional
	Trigger string `json:"trigger,omitempty"`

	// ExpiryWarning is how long before the published root or issuer expires
	// the object gets an ExpiringSoon condition and a Warning event (Dapr
	// Sentry no longer warns). Defaults to 30 days.
	// +kubebuilder:default="720h"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('0s')",message="expiryWarning must not be negative"
	// +optional
	ExpiryWarning *metav1.Duration `json:"expiryWarning,omitempty"`

	// RenewBefore, when set, starts a same-key rotation on its own when the
	// published issuer or root expires within it. An issuer falling due
	// renews the issuer alone: the trust anchors stay, so only the control
	// plane restarts, and applications pick up certificates of the new
	// issuer as theirs renew (keep it above Dapr's workloadCertTTL). A root
	// falling due renews both and restarts everything. The root of an
	// external issuer is only reported. Unset: renewals wait for a new trigger.
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1m')",message="renewBefore must be at least 1m"
	// +optional
	RenewBefore *metav1.Duration `json:"renewBefore,omitempty"`

	// DryRun computes the plan of the next rotation (phases, certificates to
	// issue, workloads to restart in order, application waves) into
	// status.plan and an event, and changes nothing else.
	// +optional
	DryRun bool `json:"dryRun,omitempty"`

	// Suspend tells the operator to leave this rotation alone: nothing is issued,
	// written or restarted while it is true. A rotation in flight resumes where
	// it stopped when Suspend is cleared.
	// +optional
	Suspend bool `json:"suspend,omitempty"`
}

// KeyPolicy says what a rotation does with the root private key.
// +kubebuilder:validation:Enum=Reuse;Rotate
type KeyPolicy string

const (
	// KeyPolicyReuse keeps the root private key: the renewed root has the same
	// public key and subject, so certificates signed under the old root keep
	// verifying and no trust overlap is needed.
	KeyPolicyReuse KeyPolicy = "Reuse"
	// KeyPolicyRotate makes a new root key, which needs a trust-overlap rotation.
	KeyPolicyRotate KeyPolicy = "Rotate"
)

// RootSpec configures the root certificate.
// +kubebuilder:validation:XValidation:rule="!has(self.privateKeySecretRef) || !has(self.keyPolicy) || self.keyPolicy == 'Reuse'",message="root.privateKeySecretRef brings a root key to keep: it needs keyPolicy Reuse"
type RootSpec struct {
	// Duration is the validity of the root certificate; at least one hour.
	// Defaults to one year, as Dapr's own root.
	// +kubebuilder:default="8760h"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1h')",message="root.duration must be at least 1h"
	// +optional
	Duration *metav1.Duration `json:"duration,omitempty"`

	// PrivateKey is the algorithm and size of the root key.
	// +kubebuilder:default={}
	// +optional
	PrivateKey PrivateKeySpec `json:"privateKey,omitempty"`

	// Subject of the root certificate. The common name defaults to the trust domain.
	// +optional
	Subject *Subject `json:"subject,omitempty"`

	// PrivateKeySecretRef names a Secret in this namespace holding an existing
	// root private key (PEM: SEC1 EC, PKCS#1 RSA or PKCS#8, as openssl and step
	// write them) to sign the root with instead of a generated one. It must
	// match privateKey's algorithm and size. The Secret is read, never modified.
	// +optional
	PrivateKeySecretRef *KeySecretRef `json:"privateKeySecretRef,omitempty"`

	// KeyPolicy is Reuse (keep the root private key; the default and Dapr's own
	// advice) or Rotate (a new key through a trust-overlap rotation).
	// +kubebuilder:default=Reuse
	// +optional
	KeyPolicy KeyPolicy `json:"keyPolicy,omitempty"`

	// Retired says whether root certificates a rotation retires stay in the
	// trust anchors. Dapr's WorkflowHistorySigning feature (1.18) verifies a
	// stored workflow history against the current trust anchors at the time
	// it was signed: a history signed under a root no longer among them, or
	// before a renewed root certificate's start, fails to load.
	// +kubebuilder:default={}
	// +optional
	Retired RetiredRootsSpec `json:"retired,omitempty"`
}

// RetiredRootsPolicy says when retired root certificates are kept.
// +kubebuilder:validation:Enum=Auto;Keep;Drop
type RetiredRootsPolicy string

const (
	// RetiredRootsAuto keeps them while Dapr's Configuration has the
	// WorkflowHistorySigning feature on, as the rotation starts.
	RetiredRootsAuto RetiredRootsPolicy = "Auto"
	// RetiredRootsKeep keeps them whatever the Configuration says.
	RetiredRootsKeep RetiredRootsPolicy = "Keep"
	// RetiredRootsDrop never keeps them: for a new key that replaces a
	// compromised one, which must not stay trusted.
	RetiredRootsDrop RetiredRootsPolicy = "Drop"
)

// RetiredRootsSpec is how retired root certificates are kept.
type RetiredRootsSpec struct {
	// Policy is Auto (the default), Keep or Drop. A kept root of a retired
	// key stays trusted for mTLS until it expires; a renewed certificate of
	// the same key adds no trust.
	// +kubebuilder:default=Auto
	// +optional
	Policy RetiredRootsPolicy `json:"policy,omitempty"`

	// KeepAfterExpiry is how long a kept root stays after its own expiry (an
	// expired root verifies histories signed while it was valid, and no
	// handshake): set it to the longest time a signed workflow history is
	// kept. Defaults to one year.
	// +kubebuilder:default="8760h"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('0s')",message="root.retired.keepAfterExpiry must not be negative"
	// +optional
	KeepAfterExpiry *metav1.Duration `json:"keepAfterExpiry,omitempty"`
}

// KeySecretRef names a key of a Secret in the MTLSRootRotation's namespace.
type KeySecretRef struct {
	// Name of the Secret.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +required
	Name string `json:"name"`
	// Key in the Secret's data holding the PEM private key.
	// +kubebuilder:default="ca.key"
	// +kubebuilder:validation:MaxLength=253
	// +optional
	Key string `json:"key,omitempty"`
}

// IssuerSpec configures the issuer certificate.
type IssuerSpec struct {
	// Duration is the validity of the issuer certificate; at least one hour and
	// no longer than the root's. Defaults to one year.
	// +kubebuilder:default="8760h"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1h')",message="issuer.duration must be at least 1h"
	// +optional
	Duration *metav1.Duration `json:"duration,omitempty"`

	// PrivateKey is the algorithm and size of the issuer key.
	// +kubebuilder:default={}
	// +optional
	PrivateKey PrivateKeySpec `json:"privateKey,omitempty"`

	// IssuerRef names an existing cert-manager Issuer (in this namespace) or
	// ClusterIssuer (an organisation CA, Vault, ...) that signs the Dapr issuer
	// certificate directly, instead of a root this object makes; spec.root is
	// then not used. The trust anchors are that issuer's CA, which must be a
	// self-signed root (Dapr Sentry requires it): an issuer whose CA is an
	// intermediate is refused. Two control planes pointing at the same CA
	// trust each other's workloads.
	// +optional
	IssuerRef *IssuerReference `json:"issuerRef,omitempty"`
}

// IssuerReference names a cert-manager issuer.
type IssuerReference struct {
	// Name of the issuer.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +required
	Name string `json:"name"`
	// Kind is Issuer (in this namespace) or ClusterIssuer.
	// +kubebuilder:default=Issuer
	// +kubebuilder:validation:Enum=Issuer;ClusterIssuer
	// +optional
	Kind string `json:"kind,omitempty"`
	// Group is the API group of the issuer: cert-manager.io for cert-manager's
	// own, another for an external issuer (step-issuer, AWS PCA, ...).
	// +kubebuilder:default="cert-manager.io"
	// +kubebuilder:validation:MaxLength=253
	// +optional
	Group string `json:"group,omitempty"`
}

// KeyAlgorithm is a private key algorithm Dapr Sentry accepts.
// +kubebuilder:validation:Enum=ECDSA;RSA;Ed25519
type KeyAlgorithm string

const (
	// ECDSA keys; size 256 (P-256, the default), 384 or 521.
	ECDSA KeyAlgorithm = "ECDSA"
	// RSA keys; size 2048 (the default) or more.
	RSA KeyAlgorithm = "RSA"
	// Ed25519 keys; no size.
	Ed25519 KeyAlgorithm = "Ed25519"
)

// PrivateKeySpec is the algorithm and size of a private key.
// +kubebuilder:validation:XValidation:rule="self.algorithm != 'RSA' || !has(self.size) || self.size >= 2048",message="RSA keys must be at least 2048 bits"
// +kubebuilder:validation:XValidation:rule="self.algorithm != 'ECDSA' || !has(self.size) || self.size in [256, 384, 521]",message="ECDSA key size must be 256, 384 or 521"
// +kubebuilder:validation:XValidation:rule="self.algorithm != 'Ed25519' || !has(self.size)",message="Ed25519 keys have no size"
type PrivateKeySpec struct {
	// Algorithm is ECDSA (default), RSA or Ed25519.
	// +kubebuilder:default=ECDSA
	// +optional
	Algorithm KeyAlgorithm `json:"algorithm,omitempty"`

	// Size in bits: 256 (default), 384 or 521 for ECDSA; 2048 (default) or more for RSA.
	// +kubebuilder:validation:Maximum=8192
	// +optional
	Size int32 `json:"size,omitempty"`
}

// Subject is the distinguished name of a certificate.
type Subject struct {
	// CommonName; defaults to the trust domain.
	// +kubebuilder:validation:MaxLength=64
	// +optional
	CommonName string `json:"commonName,omitempty"`
	// Organizations.
	// +kubebuilder:validation:MaxItems=8
	// +kubebuilder:validation:items:MaxLength=64
	// +optional
	Organizations []string `json:"organizations,omitempty"`
	// OrganizationalUnits.
	// +kubebuilder:validation:MaxItems=8
	// +kubebuilder:validation:items:MaxLength=64
	// +optional
	OrganizationalUnits []string `json:"organizationalUnits,omitempty"`
	// Countries.
	// +kubebuilder:validation:MaxItems=8
	// +kubebuilder:validation:items:MaxLength=64
	// +optional
	Countries []string `json:"countries,omitempty"`
}

// TargetSpec names where Dapr Sentry reads its credentials.
type TargetSpec struct {
	// SecretName is the Secret holding the root, the issuer certificate and its key.
	// +kubebuilder:default=dapr-trust-bundle
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",message="target.secretName must be a valid Kubernetes object name"
	// +optional
	SecretName string `json:"secretName,omitempty"`

	// ConfigMapName is the ConfigMap holding the trust anchors (the root), which
	// sidecars are injected with. It must hold exactly the Secret's root.
	// +kubebuilder:default=dapr-trust-bundle
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",message="target.configMapName must be a valid Kubernetes object name"
	// +optional
	ConfigMapName string `json:"configMapName,omitempty"`

	// Keys are the data keys, as Dapr's global.issuerFilenames sets them.
	// +kubebuilder:default={}
	// +optional
	Keys TargetKeys `json:"keys,omitempty"`
}

// TargetKeys are the data keys of the trust bundle.
// +kubebuilder:validation:XValidation:rule="!has(self.ca) || !has(self.issuerCert) || !has(self.issuerKey) || (self.ca != self.issuerCert && self.ca != self.issuerKey && self.issuerCert != self.issuerKey)",message="target.keys must be three different key names"
type TargetKeys struct {
	// CA is the key of the trust anchors, in the Secret and in the ConfigMap.
	// +kubebuilder:default="ca.crt"
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self.matches('^[-._a-zA-Z0-9]+$')",message="keys.ca must consist of alphanumerics, '-', '_' or '.'"
	// +optional
	CA string `json:"ca,omitempty"`
	// IssuerCert is the key of the issuer certificate chain in the Secret.
	// +kubebuilder:default="issuer.crt"
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self.matches('^[-._a-zA-Z0-9]+$')",message="keys.issuerCert must consist of alphanumerics, '-', '_' or '.'"
	// +optional
	IssuerCert string `json:"issuerCert,omitempty"`
	// IssuerKey is the key of the issuer private key in the Secret.
	// +kubebuilder:default="issuer.key"
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self.matches('^[-._a-zA-Z0-9]+$')",message="keys.issuerKey must consist of alphanumerics, '-', '_' or '.'"
	// +optional
	IssuerKey string `json:"issuerKey,omitempty"`
}

// MTLSRootRotation declares the root and issuer certificates of a Dapr control
// plane; the operator issues them through cert-manager, publishes them to Dapr
// Sentry and restarts the control plane and the Dapr applications in order.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:path=mtlsrotations,singular=mtlsrotation,shortName=mtlsrot,categories=dapr
// +kubebuilder:printcolumn:name="Ready",type="string",JSONPath=".status.conditions[?(@.type==\"Ready\")].status"
// +kubebuilder:printcolumn:name="Step",type="string",JSONPath=".status.rotation.step"
// +kubebuilder:printcolumn:name="Root expires",type="string",JSONPath=".status.root.notAfter"
// +kubebuilder:printcolumn:name="Issuer expires",type="string",JSONPath=".status.issuer.notAfter"
// +kubebuilder:printcolumn:name="Apps",type="string",JSONPath=".status.applications.progress"
// +kubebuilder:printcolumn:name="Converged",type="string",JSONPath=".status.convergence.progress"
// +kubebuilder:printcolumn:name="Age",type="date",JSONPath=".metadata.creationTimestamp"
// +kubebuilder:printcolumn:name="Next renewal",type="string",JSONPath=".status.nextRenewal",priority=1
// +kubebuilder:printcolumn:name="Status",type="string",JSONPath=".status.conditions[?(@.type==\"Ready\")].message",priority=1
// +kubebuilder:validation:XValidation:rule="size(self.metadata.name) <= 63",message="metadata.name must be at most 63 characters: it is the value of the owner label on the objects the operator makes"
type MTLSRootRotation struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +kubebuilder:default={}
	// +optional
	Spec MTLSRootRotationSpec `json:"spec,omitempty"`

	// +kubebuilder:default:={"observedGeneration":-1}
	// +optional
	Status MTLSRootRotationStatus `json:"status,omitempty"`
}

// GetConditions returns the status conditions of the object.
func (in *MTLSRootRotation) GetConditions() []metav1.Condition {
	return in.Status.Conditions
}

// SetConditions sets the status conditions on the object.
func (in *MTLSRootRotation) SetConditions(conditions []metav1.Condition) {
	in.Status.Conditions = conditions
}

// MTLSRootRotationList is a list of MTLSRootRotation objects.
// +kubebuilder:object:root=true
type MTLSRootRotationList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []MTLSRootRotation `json:"items"`
}

func init() {
	SchemeBuilder.Register(&MTLSRootRotation{}, &MTLSRootRotationList{})
}

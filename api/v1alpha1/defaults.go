package v1alpha1

import (
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The defaults the CRD applies, for objects that did not pass through the API
// server's defaulting (unit tests, fake clients).
const (
	DefaultTrustDomain         = "cluster.local"
	DefaultBundleName          = "dapr-trust-bundle"
	DefaultCAKey               = "ca.crt"
	DefaultIssuerCertKey       = "issuer.crt"
	DefaultIssuerKeyKey        = "issuer.key"
	DefaultCertificateDuration = 8760 * time.Hour
	DefaultRolloutTimeout      = 10 * time.Minute
	DefaultMaxConcurrent       = 5
	DefaultECDSAKeySize        = 256
	DefaultRSAKeySize          = 2048
	DaprEnabledAnnotation      = "dapr.io/enabled"
	DaprEnabledAnnotationValue = "true"
)

// DefaultControlPlane is Dapr's control plane in restart order.
func DefaultControlPlane() []ControlPlaneWorkload {
	return []ControlPlaneWorkload{
		{Kind: Deployment, Name: "dapr-sentry"},
		{Kind: Deployment, Name: "dapr-sidecar-injector"},
		{Kind: Deployment, Name: "dapr-operator"},
		{Kind: StatefulSet, Name: "dapr-placement-server"},
		{Kind: StatefulSet, Name: "dapr-scheduler-server", Optional: true},
	}
}

func durationOr(d *metav1.Duration, def time.Duration) time.Duration {
	if d == nil || d.Duration <= 0 {
		return def
	}
	return d.Duration
}

func stringOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// GetTrustDomain returns the trust domain.
func (s *MTLSRootRotationSpec) GetTrustDomain() string {
	return stringOr(s.TrustDomain, DefaultTrustDomain)
}

// DefaultExpiryWarning is spec.expiryWarning's default.
const DefaultExpiryWarning = 720 * time.Hour

// GetExpiryWarning returns how long before expiry to warn.
func (s *MTLSRootRotationSpec) GetExpiryWarning() time.Duration {
	if s.ExpiryWarning == nil {
		return DefaultExpiryWarning
	}
	return max(s.ExpiryWarning.Duration, 0)
}

// GetRenewBefore returns how long before expiry to renew on its own; zero
// when automatic renewal is off.
func (s *MTLSRootRotationSpec) GetRenewBefore() time.Duration {
	if s.RenewBefore == nil {
		return 0
	}
	return max(s.RenewBefore.Duration, 0)
}

// GetDuration returns the root validity.
func (r *RootSpec) GetDuration() time.Duration {
	return durationOr(r.Duration, DefaultCertificateDuration)
}

// GetKeyPolicy returns the root key policy.
func (r *RootSpec) GetKeyPolicy() KeyPolicy {
	if r.KeyPolicy == "" {
		return KeyPolicyReuse
	}
	return r.KeyPolicy
}

// GetKeepAfterExpiry is spec.root.retired.keepAfterExpiry, defaulted to a year.
func (r *RetiredRootsSpec) GetKeepAfterExpiry() time.Duration {
	if r.KeepAfterExpiry == nil {
		return 365 * 24 * time.Hour
	}
	return r.KeepAfterExpiry.Duration
}

// GetPolicy is spec.root.retired.policy, defaulted to Auto.
func (r *RetiredRootsSpec) GetPolicy() RetiredRootsPolicy {
	if r.Policy == "" {
		return RetiredRootsAuto
	}
	return r.Policy
}

// GetDuration returns the issuer validity.
func (i *IssuerSpec) GetDuration() time.Duration {
	return durationOr(i.Duration, DefaultCertificateDuration)
}

// External reports whether an existing issuer signs the Dapr issuer.
func (i *IssuerSpec) External() bool { return i.IssuerRef != nil }

// GetKind returns the kind of the referenced issuer.
func (r *IssuerReference) GetKind() string { return stringOr(r.Kind, "Issuer") }

// GetGroup returns the API group of the referenced issuer.
func (r *IssuerReference) GetGroup() string { return stringOr(r.Group, "cert-manager.io") }

// GetAlgorithm returns the key algorithm.
func (k *PrivateKeySpec) GetAlgorithm() KeyAlgorithm {
	if k.Algorithm == "" {
		return ECDSA
	}
	return k.Algorithm
}

// GetSize returns the key size in bits; 0 for Ed25519.
func (k *PrivateKeySpec) GetSize() int {
	switch {
	case k.GetAlgorithm() == Ed25519:
		return 0
	case k.Size != 0:
		return int(k.Size)
	case k.GetAlgorithm() == RSA:
		return DefaultRSAKeySize
	default:
		return DefaultECDSAKeySize
	}
}

// GetSecretName returns the name of the Secret Sentry reads.
func (t *TargetSpec) GetSecretName() string { return stringOr(t.SecretName, DefaultBundleName) }

// GetConfigMapName returns the name of the trust-anchor ConfigMap.
func (t *TargetSpec) GetConfigMapName() string { return stringOr(t.ConfigMapName, DefaultBundleName) }

// GetCA returns the key of the trust anchors.
func (k *TargetKeys) GetCA() string { return stringOr(k.CA, DefaultCAKey) }

// GetIssuerCert returns the key of the issuer certificate.
func (k *TargetKeys) GetIssuerCert() string { return stringOr(k.IssuerCert, DefaultIssuerCertKey) }

// GetIssuerKey returns the key of the issuer private key.
func (k *TargetKeys) GetIssuerKey() string { return stringOr(k.IssuerKey, DefaultIssuerKeyKey) }

// GetWorkloads returns the control-plane workloads in restart order.
func (c *ControlPlaneSpec) GetWorkloads() []ControlPlaneWorkload {
	if len(c.Workloads) == 0 {
		return DefaultControlPlane()
	}
	return c.Workloads
}

// GetRolloutTimeout returns the per-workload rollout timeout.
func (c *ControlPlaneSpec) GetRolloutTimeout() time.Duration {
	return durationOr(c.RolloutTimeout, DefaultRolloutTimeout)
}

// RestartEnabled says whether applications are restarted.
func (a *ApplicationsSpec) RestartEnabled() bool { return a.Restart == nil || *a.Restart }

// GetMaxConcurrent returns the wave size.
func (a *ApplicationsSpec) GetMaxConcurrent() int {
	if a.MaxConcurrent < 1 {
		return DefaultMaxConcurrent
	}
	return int(a.MaxConcurrent)
}

// GetRolloutTimeout returns the per-wave rollout timeout.
func (a *ApplicationsSpec) GetRolloutTimeout() time.Duration {
	return durationOr(a.RolloutTimeout, DefaultRolloutTimeout)
}

// DefaultLazyRestartBefore is how long before the previous root certificate
// expires a lazy rotation restarts the applications that have not converged.
const DefaultLazyRestartBefore = 7 * 24 * time.Hour

// GetRestartBefore returns the margin of a lazy rotation.
func (l *LazyRestartSpec) GetRestartBefore() time.Duration {
	return durationOr(l.RestartBefore, DefaultLazyRestartBefore)
}

package controllers

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/fluxcd/pkg/runtime/conditions"
	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/bundle"
	"github.com/mtls-rotator/mtls-rotator/internal/expiry"
	"github.com/mtls-rotator/mtls-rotator/internal/pki"
	"github.com/mtls-rotator/mtls-rotator/internal/rotation"
)

// DaprConfigurationName is the Configuration Dapr's control plane reads its
// mTLS settings from, in its namespace.
const DaprConfigurationName = "daprsystem"

var daprConfigurationGVK = schema.GroupVersionKind{Group: "dapr.io", Version: "v1alpha1", Kind: "Configuration"}

// observeInstalled describes in status the root and issuer installed when
// nothing was published yet (an install Sentry or Helm filled), so that their
// expiry is shown and watched from the start.
func observeInstalled(obj *rotatorv1.MTLSRootRotation, t *target) {
	if obj.Status.PublishedBundleHash != "" {
		return
	}
	installed := bundle.FromSecret(t.Secret.Data, keysOf(obj))
	anchors, err1 := pki.ParseCertificates(installed.TrustAnchors)
	chain, err2 := pki.ParseCertificates(installed.IssuerChain)
	if err1 != nil || err2 != nil {
		return
	}
	describeBundle(&obj.Status, &pki.ParsedBundle{Anchors: anchors, Chain: chain})
}

// markExpiry sets or clears the ExpiringSoon condition, with one Warning
// event whenever the set of expiring certificates grows, and records when the
// next automatic renewal falls due.
func (r *MTLSRootRotationReconciler) markExpiry(obj *rotatorv1.MTLSRootRotation, s expiry.State) {
	obj.Status.NextRenewal = nil
	if !s.RenewAt.IsZero() {
		obj.Status.NextRenewal = &metav1.Time{Time: s.RenewAt}
	}
	if len(s.Expiring) == 0 {
		conditions.Delete(obj, rotatorv1.ExpiringSoonCondition)
		return
	}
	names := make([]string, 0, len(s.Expiring))
	for _, c := range s.Expiring {
		names = append(names, c.Name)
	}
	reason := expiringReason(names)
	msg := expiry.Describe(s.Expiring, r.now().Time)
	if obj.Spec.GetRenewBefore() == 0 {
		msg += "; change spec.trigger to renew (or set spec.renewBefore to renew on its own)"
	}
	announced := conditions.IsTrue(obj, rotatorv1.ExpiringSoonCondition) &&
		covers(conditions.GetReason(obj, rotatorv1.ExpiringSoonCondition), reason)
	conditions.MarkTrue(obj, rotatorv1.ExpiringSoonCondition, reason, "%s", msg)
	if !announced {
		r.EventRecorder.Eventf(obj, nil, corev1.EventTypeWarning, rotatorv1.ExpiringSoonReason, "Monitor", "%s", msg)
	}
}

// expiringReason names what expires: RootExpiringSoon, IssuerExpiringSoon
// or RootAndIssuerExpiringSoon.
func expiringReason(names []string) string {
	root, issuer := false, false
	for _, n := range names {
		root = root || n == "root" || n == "previous root"
		issuer = issuer || n == "issuer"
	}
	switch {
	case root && issuer:
		return "RootAndIssuer" + rotatorv1.ExpiringSoonReason
	case root:
		return "Root" + rotatorv1.ExpiringSoonReason
	}
	return "Issuer" + rotatorv1.ExpiringSoonReason
}

// covers reports whether the reason already announced covers the new one.
func covers(announced, reason string) bool {
	if announced == reason || announced == "RootAndIssuer"+rotatorv1.ExpiringSoonReason {
		return true
	}
	return false
}

// readDaprConfiguration reports in status what Dapr's system Configuration
// says of mTLS, with a Warning when it turns mTLS off or renews workload
// certificates too slowly for spec.renewBefore, and which Configurations of
// the cluster turn WorkflowHistorySigning on (applications name theirs with
// dapr.io/config); each is announced once per change. A cluster without any
// of them (or without the CRD) reports nothing.
func (p *pass) readDaprConfiguration(ctx context.Context, obj *rotatorv1.MTLSRootRotation) error {
	list := &unstructured.UnstructuredList{}
	list.SetGroupVersionKind(daprConfigurationGVK.GroupVersion().WithKind(daprConfigurationGVK.Kind + "List"))
	err := p.reader().List(ctx, list)
	if apimeta.IsNoMatchError(err) {
		obj.Status.DaprConfiguration = nil
		return nil
	}
	if err != nil {
		return fmt.Errorf("listing Dapr Configurations: %w", err)
	}
	observed := observeDaprConfigurations(list.Items, obj.Namespace)
	previous := obj.Status.DaprConfiguration
	obj.Status.DaprConfiguration = observed
	if observed == nil {
		return nil
	}
	if previous == nil || previous.Name != observed.Name || previous.MTLSEnabled != observed.MTLSEnabled ||
		previous.WorkloadCertTTL != observed.WorkloadCertTTL || previous.AllowedClockSkew != observed.AllowedClockSkew {
		if !observed.MTLSEnabled {
			p.event(corev1.EventTypeWarning, rotatorv1.MTLSDisabledReason, "Monitor",
				"Dapr Configuration %s/%s has mTLS disabled: sidecars do not use the certificates this object rotates", obj.Namespace, DaprConfigurationName)
		}
		if warning := renewBeforeWarning(obj.Spec.GetRenewBefore(), observed); warning != "" {
			p.event(corev1.EventTypeWarning, "RenewBeforeTooShort", "Monitor", "%s", warning)
		}
	}
	if on := observed.WorkflowHistorySigning; on != "" && (previous == nil || previous.WorkflowHistorySigning != on) {
		p.event(corev1.EventTypeNormal, "WorkflowHistorySigning", "Monitor",
			"%s is on in Dapr Configuration %s: %s", WorkflowHistorySigningFeature, on, describeRetention(&obj.Spec.Root.Retired, observed))
	}
	return nil
}

// WorkflowHistorySigningFeature is the Dapr 1.18 feature that signs stored
// workflow histories; they are verified against the current trust anchors at
// the time they were signed.
const WorkflowHistorySigningFeature = "WorkflowHistorySigning"

// describeRetention says whether a rotation started now would keep the
// roots it retires, and for how long.
func describeRetention(retired *rotatorv1.RetiredRootsSpec, dapr *rotatorv1.DaprConfigurationStatus) string {
	keeps, why := rotation.KeepsRetiredRoots(retired, dapr)
	if !keeps {
		return fmt.Sprintf("rotations drop the roots they retire (%s)", why)
	}
	return fmt.Sprintf("rotations keep the roots they retire in the trust anchors until %s after each expires (%s), so that signed workflow histories still verify",
		retired.GetKeepAfterExpiry(), why)
}

// maxNamedConfigurations bounds the Configurations status names.
const maxNamedConfigurations = 5

// observeDaprConfigurations describes the system Configuration of namespace
// and names the Configurations that turn WorkflowHistorySigning on; nil when
// there is neither.
func observeDaprConfigurations(items []unstructured.Unstructured, namespace string) *rotatorv1.DaprConfigurationStatus {
	var observed *rotatorv1.DaprConfigurationStatus
	var signing []string
	for i := range items {
		u := &items[i]
		if u.GetNamespace() == namespace && u.GetName() == DaprConfigurationName {
			enabled, _, _ := unstructured.NestedBool(u.Object, "spec", "mtls", "enabled")
			ttl, _, _ := unstructured.NestedString(u.Object, "spec", "mtls", "workloadCertTTL")
			skew, _, _ := unstructured.NestedString(u.Object, "spec", "mtls", "allowedClockSkew")
			observed = &rotatorv1.DaprConfigurationStatus{Name: DaprConfigurationName, MTLSEnabled: enabled, WorkloadCertTTL: ttl, AllowedClockSkew: skew}
		}
		if featureEnabled(u, WorkflowHistorySigningFeature) {
			signing = append(signing, u.GetNamespace()+"/"+u.GetName())
		}
	}
	if len(signing) == 0 {
		return observed
	}
	if observed == nil {
		// No system Configuration: Dapr's defaults, mTLS on.
		observed = &rotatorv1.DaprConfigurationStatus{MTLSEnabled: true}
	}
	slices.Sort(signing)
	named := strings.Join(signing[:min(len(signing), maxNamedConfigurations)], ", ")
	if more := len(signing) - maxNamedConfigurations; more > 0 {
		named += fmt.Sprintf(" and %d more", more)
	}
	observed.WorkflowHistorySigning = named
	return observed
}

// featureEnabled reports whether the Configuration's spec.features turns
// the named feature on.
func featureEnabled(u *unstructured.Unstructured, name string) bool {
	features, _, _ := unstructured.NestedSlice(u.Object, "spec", "features")
	for _, f := range features {
		if m, ok := f.(map[string]any); ok && m["name"] == name {
			on, _ := m["enabled"].(bool)
			return on
		}
	}
	return false
}

// renewBeforeWarning says why renewBefore is too short for Dapr's workload
// certificates, or "": an issuer renewal restarts no application, so the old
// issuer must outlive every workload certificate it signed.
func renewBeforeWarning(renewBefore time.Duration, c *rotatorv1.DaprConfigurationStatus) string {
	if renewBefore == 0 {
		return ""
	}
	life, allowance := daprCertLifetime(c)
	if renewBefore > life+allowance {
		return ""
	}
	return strings.TrimSpace(fmt.Sprintf(
		"spec.renewBefore %s does not exceed Dapr's workloadCertTTL %s plus allowedClockSkew %s: workload certificates signed just before an issuer renewal could outlive the old issuer; renew earlier",
		renewBefore, life, allowance))
}

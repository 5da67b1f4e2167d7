package e2e

import (
	"context"
	"testing"
	"time"

	cmapiutil "github.com/cert-manager/cert-manager/pkg/api/util"
	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"github.com/fluxcd/cli-utils/pkg/kstatus/status"
	"github.com/fluxcd/pkg/runtime/conditions"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/e2e/fixture"
	"github.com/mtls-rotator/mtls-rotator/internal/health"
	"github.com/mtls-rotator/mtls-rotator/internal/pki"
	"github.com/mtls-rotator/mtls-rotator/internal/pki/pkitest"
	"github.com/mtls-rotator/mtls-rotator/internal/restart"
	"github.com/mtls-rotator/mtls-rotator/internal/rotation"
)

// setSystemConfiguration replaces Dapr's daprsystem Configuration.
func setSystemConfiguration(ctx context.Context, t *testing.T, mtls bool) {
	t.Helper()
	g := NewWithT(t)
	want := fixture.SystemConfiguration(mtls)
	current := &unstructured.Unstructured{}
	current.SetGroupVersionKind(want.GroupVersionKind())
	g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(want), current)).To(Succeed())
	current.Object["spec"] = want.Object["spec"]
	g.Expect(k8sClient.Update(ctx, current)).To(Succeed())
}

// hourIssuerRenewedBefore is a spec with a one-hour issuer renewed on its own
// renewBefore ahead of its expiry.
func hourIssuerRenewedBefore(renewBefore time.Duration) rotatorv1.MTLSRootRotationSpec {
	return rotatorv1.MTLSRootRotationSpec{
		Trigger:     "a",
		Issuer:      rotatorv1.IssuerSpec{Duration: &metav1.Duration{Duration: time.Hour}},
		RenewBefore: &metav1.Duration{Duration: renewBefore},
	}
}

// TestShortLivedIssuerRenewsItself: with spec.renewBefore the operator renews
// an issuer about to expire on its own, at the moment it falls due (no other
// event wakes it), with the same root: the trust anchors stay, so only the
// control plane restarts. ExpiringSoon appears, and clears when the warning
// window no longer covers the issuer.
func TestShortLivedIssuerRenewsItself(t *testing.T) {
	g := NewWithT(t)
	freshBundle(t)
	startOperator(t)
	key := newRotation(t, "short", hourIssuerRenewedBefore(59*time.Minute+30*time.Second))
	first := waitRotationCompleted(t, key, "a")
	g.Expect(first.Status.LastCompletedRotation.Cause).To(Equal(rotatorv1.CauseTrigger))
	g.Expect(first.Status.NextRenewal).NotTo(BeNil())
	g.Expect(first.Status.NextRenewal.Time).To(BeTemporally("~", first.Status.Issuer.NotAfter.Add(-(59*time.Minute + 30*time.Second)), time.Second))
	g.Expect(first.Status.DaprConfiguration).To(Equal(&rotatorv1.DaprConfigurationStatus{
		Name: "daprsystem", MTLSEnabled: true, WorkloadCertTTL: "24h", AllowedClockSkew: "15m",
	}))
	expiring := conditions.Get(first, rotatorv1.ExpiringSoonCondition)
	g.Expect(expiring).NotTo(BeNil(), "an issuer of one hour is inside the 30-day warning")
	g.Expect(expiring.Reason).To(Equal("IssuerExpiringSoon"))
	g.Expect(expiring.Message).To(MatchRegexp(`^issuer certificate expires at \S+Z$`))
	g.Expect(kstatusOf(t, first)).To(Equal(status.CurrentStatus), "expiring soon is not a failure")
	argo := argoHealthOf(t, key)
	g.Expect(argo.Status).To(Equal(health.Healthy))
	g.Expect(argo.Message).To(MatchRegexp(`completed at .*; issuer certificate expires at`))

	var renewed *rotatorv1.MTLSRootRotation
	g.Eventually(func(g Gomega) {
		renewed = getRotation(t, key)
		last := renewed.Status.LastCompletedRotation
		g.Expect(last).NotTo(BeNil())
		g.Expect(last.Cause).To(Equal(rotatorv1.CauseRenewal))
		g.Expect(conditions.IsReady(renewed)).To(BeTrue())
	}).WithTimeout(2 * time.Minute).WithPolling(500 * time.Millisecond).Should(Succeed())
	rot := renewed.Status.Rotation
	g.Expect(renewed.Generation).To(Equal(int64(1)), "the operator never writes the spec")
	g.Expect(rot.Renews).To(Equal("Issuer"))
	g.Expect(rot.Trigger).To(Equal("a"), "recorded with the trigger it renews under")
	g.Expect(rot.KeyPolicy).To(Equal(rotatorv1.KeyPolicyReuse))
	g.Expect(renewed.Status.Root.SHA256Fingerprint).To(Equal(first.Status.Root.SHA256Fingerprint), "the root is the same certificate")
	g.Expect(renewed.Status.Issuer.SerialNumber).NotTo(Equal(first.Status.Issuer.SerialNumber))
	g.Expect(renewed.Status.Issuer.NotAfter.After(first.Status.Issuer.NotAfter.Time)).To(BeTrue())
	sentry, _, err := readControlPlane(t.Context(), sentryWorkload)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(restart.RestartedFor(sentry, rotation.RestartID(rot))).To(BeTrue(), "the control plane restarts")
	g.Expect(restartedApps(t, rotation.RestartID(rot))).To(BeEmpty(), "applications keep their anchors")

	events := eventsFor(t, key)
	g.Expect(events["RenewalDue"]).NotTo(BeEmpty())
	g.Expect(events["RenewalDue"][0].Message).To(ContainSubstring("renewing the issuer with the same key"))
	g.Expect(events["RenewBeforeTooShort"]).To(HaveLen(1), "announced once")
	g.Expect(events[rotatorv1.ExpiringSoonReason]).To(HaveLen(1))
	g.Expect(events[rotatorv1.ExpiringSoonReason][0].Type).To(Equal(corev1.EventTypeWarning))
	g.Expect(events[rotatorv1.ExpiringSoonReason][0].Count).To(BeNumerically("<=", 1), "not repeated on every pass")

	// A warning window shorter than the issuer's remaining life clears it;
	// Dapr's Configuration turning mTLS off is reported.
	setSystemConfiguration(t.Context(), t, false)
	t.Cleanup(func() { setSystemConfiguration(context.Background(), t, true) })
	obj := getRotation(t, key)
	obj.Spec.ExpiryWarning = &metav1.Duration{Duration: 30 * time.Minute}
	obj.Spec.RenewBefore = nil
	updateRotation(t, obj)
	g.Eventually(func(g Gomega) {
		now := getRotation(t, key)
		g.Expect(now.Status.ObservedGeneration).To(Equal(now.Generation))
		g.Expect(conditions.Has(now, rotatorv1.ExpiringSoonCondition)).To(BeFalse())
		g.Expect(now.Status.NextRenewal).To(BeNil())
		g.Expect(now.Status.DaprConfiguration.MTLSEnabled).To(BeFalse())
	}).WithTimeout(30 * time.Second).Should(Succeed())
	g.Expect(eventsFor(t, key)[rotatorv1.MTLSDisabledReason]).To(HaveLen(1))
}

// TestIssuerRenewalFollowsARootCertManagerRenewed: cert-manager renewed the
// root certificate on its own (it does at two thirds of its life); the next
// issuer renewal publishes it, so it restarts the applications too: their
// anchors must follow.
func TestIssuerRenewalFollowsARootCertManagerRenewed(t *testing.T) {
	g := NewWithT(t)
	freshBundle(t)
	startOperator(t)
	key := newRotation(t, "follow", hourIssuerRenewedBefore(59*time.Minute+40*time.Second))
	first := waitRotationCompleted(t, key, "a")

	// What cert-manager does on its own at two thirds of the root's life.
	crt := &cmapi.Certificate{}
	g.Expect(k8sClient.Get(t.Context(), types.NamespacedName{Namespace: key.Namespace, Name: "follow-root"}, crt)).To(Succeed())
	cmapiutil.SetCertificateCondition(crt, crt.Generation, cmapi.CertificateConditionIssuing, cmmeta.ConditionTrue,
		"Renewing", "Renewing certificate as renewal was scheduled")
	g.Expect(k8sClient.Status().Update(t.Context(), crt)).To(Succeed())

	var renewed *rotatorv1.MTLSRootRotation
	g.Eventually(func(g Gomega) {
		renewed = getRotation(t, key)
		g.Expect(renewed.Status.LastCompletedRotation.Cause).To(Equal(rotatorv1.CauseRenewal))
	}).WithTimeout(2 * time.Minute).WithPolling(500 * time.Millisecond).Should(Succeed())
	rot := renewed.Status.Rotation
	g.Expect(rot.Renews).To(Equal("Issuer"))
	g.Expect(renewed.Status.Root.SHA256Fingerprint).NotTo(Equal(first.Status.Root.SHA256Fingerprint), "cert-manager's root is published")
	g.Expect(renewed.Status.Root.PublicKeySHA256).To(Equal(first.Status.Root.PublicKeySHA256))
	g.Expect(restartedApps(t, rotation.RestartID(rot))).NotTo(BeEmpty(), "the applications get the new anchors")
	g.Expect(renewed.Status.Applications.Restarted).To(Equal(renewed.Status.Applications.Total))
}

// TestIneffectiveRenewalDoesNotLoop: a renewBefore that leaves a renewed
// issuer due again at once (here: it takes longer to roll out than the
// margin) stops after one automatic renewal, Stalled, instead of restarting
// the control plane in a loop.
func TestIneffectiveRenewalDoesNotLoop(t *testing.T) {
	g := NewWithT(t)
	freshBundle(t)
	startOperator(t)
	key := newRotation(t, "loop", hourIssuerRenewedBefore(59*time.Minute+59*time.Second))
	obj := waitStalled(t, key, rotatorv1.RenewalIneffectiveReason)
	g.Expect(obj.Status.LastCompletedRotation.Cause).To(Equal(rotatorv1.CauseRenewal))
	g.Expect(conditions.GetMessage(obj, "Stalled")).To(ContainSubstring("lower spec.renewBefore or lengthen the certificate"))
	id := obj.Status.LastCompletedRotation.ID
	g.Consistently(func() string { return getRotation(t, key).Status.Rotation.ID }).
		WithTimeout(5*time.Second).WithPolling(250*time.Millisecond).Should(Equal(id), "no further renewal starts")
	g.Expect(eventCount(t, key, "RotationStarted")).To(Equal(int32(2)), "the first issuance and one renewal")
	g.Expect(eventsFor(t, key)[rotatorv1.RenewalIneffectiveReason]).To(HaveLen(1))
}

// TestExpiryWatchesTheRootTheIssuerChainsTo: in an installed bundle of two
// anchors whose issuer the older one signed, that older root expiring cuts
// the mesh off, though the newest anchor lives on: it is shown in
// status.issuerRoot and reported as expiring.
func TestExpiryWatchesTheRootTheIssuerChainsTo(t *testing.T) {
	g := NewWithT(t)
	freshBundle(t)
	old := pkitest.NewRoot(t, pkitest.Options{Validity: 90 * time.Minute}) // made an hour ago
	newest := pkitest.NewRoot(t, pkitest.Options{Validity: 365 * 24 * time.Hour})
	issuer := pkitest.NewIssuer(t, old, pkitest.Options{Validity: 24 * time.Hour})
	anchors := append(old.CertPEM(), newest.CertPEM()...)
	setBundle(t,
		map[string][]byte{"ca.crt": anchors, "issuer.crt": issuer.CertPEM(), "issuer.key": issuer.KeyPEM(t)},
		map[string]string{"ca.crt": string(anchors)})
	startOperator(t)
	key := newRotation(t, "two-anchors", rotatorv1.MTLSRootRotationSpec{ExpiryWarning: &metav1.Duration{Duration: time.Hour}})

	g.Eventually(func(g Gomega) {
		obj := getRotation(t, key)
		g.Expect(obj.Status.Root).NotTo(BeNil())
		g.Expect(obj.Status.Root.SHA256Fingerprint).To(Equal(pki.Fingerprint(newest.Cert)))
		g.Expect(obj.Status.IssuerRoot).NotTo(BeNil())
		g.Expect(obj.Status.IssuerRoot.SHA256Fingerprint).To(Equal(pki.Fingerprint(old.Cert)))
		expiring := conditions.Get(obj, rotatorv1.ExpiringSoonCondition)
		g.Expect(expiring).NotTo(BeNil())
		g.Expect(expiring.Reason).To(Equal("RootExpiringSoon"))
		g.Expect(expiring.Message).To(HavePrefix("root certificate expires at " + old.Cert.NotAfter.UTC().Format(time.RFC3339) + ";"))
	}).WithTimeout(30 * time.Second).Should(Succeed())
}

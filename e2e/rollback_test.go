package e2e

import (
	"bytes"
	"testing"
	"time"

	"github.com/fluxcd/cli-utils/pkg/kstatus/status"
	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/controllers"
	"github.com/mtls-rotator/mtls-rotator/e2e/fixture"
	"github.com/mtls-rotator/mtls-rotator/internal/health"
	"github.com/mtls-rotator/mtls-rotator/internal/restart"
	"github.com/mtls-rotator/mtls-rotator/internal/rotation"
)

// expectRolledBack checks a rotation that rolled back because Sentry's new pods
// never became ready: the bundle is what it was byte for byte, Sentry was
// restarted on it, nothing after Sentry and no application was restarted, and
// an unchanged trigger does not start the rotation again.
func expectRolledBack(t *testing.T, key types.NamespacedName, before *corev1.Secret, beforeCM *corev1.ConfigMap) *rotatorv1.MTLSRootRotation {
	t.Helper()
	g := NewWithT(t)
	obj := waitStalled(t, key, rotatorv1.RolledBackReason)
	// Conditions are patched before the rest of the status.
	g.Eventually(func() rotatorv1.RotationStep {
		obj = getRotation(t, key)
		return obj.Status.Rotation.Step
	}).WithTimeout(10 * time.Second).Should(Equal(rotatorv1.StepRolledBack))
	rot := obj.Status.Rotation
	g.Expect(rot.RollingBack).To(Equal("Deployment dapr-system/dapr-sentry"), "the rollback was recorded before the restore")
	msg := conditions.GetMessage(obj, meta.StalledCondition)
	g.Expect(msg).To(ContainSubstring("control-plane workload Deployment dapr-system/dapr-sentry did not roll out within 3s"))
	g.Expect(msg).To(ContainSubstring("the bundle it replaced was restored to Secret dapr-system/dapr-trust-bundle and ConfigMap dapr-system/dapr-trust-bundle"))
	g.Expect(msg).To(ContainSubstring("change spec.trigger to rotate again"))
	g.Expect(kstatusOf(t, obj)).To(Equal(status.FailedStatus))
	checkConditions(t, obj)
	argo := argoHealthOf(t, key)
	g.Expect(argo.Status).To(Equal(health.Degraded))
	g.Expect(argo.Message).To(HavePrefix("RolledBack: control-plane workload Deployment dapr-system/dapr-sentry did not roll out"))

	after, afterCM := readBundle(t)
	for k := range before.Data { // Sentry's JWT key and JWKS too, when it made them
		g.Expect(bytes.Equal(after.Data[k], before.Data[k])).To(BeTrue(), "Secret key %s restored byte for byte", k)
	}
	for k := range beforeCM.Data {
		g.Expect(afterCM.Data[k]).To(Equal(beforeCM.Data[k]), "ConfigMap key %s restored byte for byte", k)
	}
	g.Expect(obj.Status.PublishedBundleHash).To(Equal(after.Annotations[controllers.BundleHashAnnotation]))

	annotations, _, err := readControlPlane(t.Context(), sentryWorkload)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(annotations[restart.Annotation]).To(Equal(rotation.RestartID(rot)+"-rollback"), "Sentry restarted on the restored bundle")
	injector, _, err := readControlPlane(t.Context(), fixture.Workload{Kind: "Deployment", Name: fixture.SidecarInjector})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(restart.RestartedFor(injector, rotation.RestartID(rot))).To(BeFalse(), "nothing after the stuck workload is restarted")
	g.Expect(restartedApps(t, rotation.RestartID(rot))).To(BeEmpty(), "applications are untouched")

	g.Consistently(func(g Gomega) {
		now := getRotation(t, key)
		g.Expect(now.Status.Rotation.ID).To(Equal(rot.ID))
		g.Expect(now.Status.Rotation.Step).To(Equal(rotatorv1.StepRolledBack), "an unchanged trigger does not start again")
		s, cm := readBundle(t)
		g.Expect(s.ResourceVersion).To(Equal(after.ResourceVersion))
		g.Expect(cm.ResourceVersion).To(Equal(afterCM.ResourceVersion))
	}).WithTimeout(3 * time.Second).WithPolling(250 * time.Millisecond).Should(Succeed())
	g.Expect(eventsFor(t, key)[rotatorv1.RolledBackReason]).To(HaveLen(1))
	g.Expect(eventsFor(t, key)[rotatorv1.RolledBackReason][0].Count).To(BeNumerically("<=", 1), "one Warning, not one per pass")
	return obj
}

// rotateWithShortRollouts is a Rotate spec whose control-plane rollouts time
// out after 3 s.
func rotateWithShortRollouts() rotatorv1.MTLSRootRotationSpec {
	return rotatorv1.MTLSRootRotationSpec{
		Trigger:      "a",
		Root:         rotatorv1.RootSpec{KeyPolicy: rotatorv1.KeyPolicyRotate},
		ControlPlane: rotatorv1.ControlPlaneSpec{RolloutTimeout: &metav1.Duration{Duration: 3 * time.Second}},
	}
}

func TestRollbackRestoresTheReplacedBundle(t *testing.T) {
	g := NewWithT(t)
	freshBundle(t)
	startOperator(t)
	key := newRotation(t, "rollback", rotatorv1.MTLSRootRotationSpec{
		Trigger:      "a",
		ControlPlane: rotatorv1.ControlPlaneSpec{RolloutTimeout: &metav1.Duration{Duration: 3 * time.Second}},
	})
	waitRotationCompleted(t, key, "a")
	before, beforeCM := readBundle(t)

	holdSentry(t)
	obj := getRotation(t, key)
	obj.Spec.Trigger = "b"
	updateRotation(t, obj)
	rolledBack := expectRolledBack(t, key, before, beforeCM)
	g.Expect(rolledBack.Status.LastCompletedRotation.Trigger).To(Equal("a"))

	recoverWorkload(t, fixture.ControlPlaneNamespace, fixture.Sentry)
	obj = getRotation(t, key)
	obj.Spec.Trigger = "c"
	updateRotation(t, obj)
	done := waitRotationCompleted(t, key, "c")
	g.Expect(done.Status.Rotation.ID).NotTo(Equal(rolledBack.Status.Rotation.ID))
	g.Expect(kstatusOf(t, done)).To(Equal(status.CurrentStatus))
}

func TestRollbackOfAnOverlapRestoresSentrysBundle(t *testing.T) {
	g := NewWithT(t)
	freshBundle(t)
	installSentryBundle(t)
	before, beforeCM := readBundle(t)
	holdSentry(t)
	startOperator(t)
	key := newRotation(t, "rollback-rotate", rotateWithShortRollouts())
	rolledBack := expectRolledBack(t, key, before, beforeCM)
	g.Expect(rolledBack.Status.Rotation.Phase).To(Equal(rotatorv1.PhaseOverlap))
	g.Expect(rolledBack.Status.TrustAnchors).To(Equal(int32(1)), "status describes the restored bundle")

	// Another attempt makes yet another key and, once complete, drops the one
	// the rolled-back attempt made.
	recoverWorkload(t, fixture.ControlPlaneNamespace, fixture.Sentry)
	obj := getRotation(t, key)
	obj.Spec.Trigger = "b"
	updateRotation(t, obj)
	done := waitRotationCompleted(t, key, "b")
	g.Expect(done.Status.RootKeyGeneration).To(Equal(int32(3)))
	g.Eventually(func() bool {
		err := k8sClient.Get(t.Context(), types.NamespacedName{Namespace: key.Namespace, Name: "rollback-rotate-root-g2"}, &corev1.Secret{})
		return apierrors.IsNotFound(err)
	}).WithTimeout(10*time.Second).Should(BeTrue(), "the rolled-back attempt's key is deleted")
	s, _ := readBundle(t)
	g.Expect(parseOne(t, s.Data["ca.crt"]).PublicKey).NotTo(Equal(parseOne(t, before.Data["ca.crt"]).PublicKey))
}

// TestRollbackNeverRestoresAnExpiredIssuer: the bundle a publish replaced held
// an issuer that has expired, so restoring it would leave the mesh cut off;
// the new bundle stays and the rotation waits for Sentry to recover.
func TestRollbackNeverRestoresAnExpiredIssuer(t *testing.T) {
	g := NewWithT(t)
	freshBundle(t)
	root, expired := installExpiredSentryBundle(t)
	holdSentry(t)
	startOperator(t)
	key := newRotation(t, "expired-rollback", rotateWithShortRollouts())

	obj := waitStalled(t, key, rotatorv1.RolloutTimeoutReason)
	g.Expect(conditions.GetMessage(obj, meta.StalledCondition)).To(ContainSubstring("holds an issuer that expired at"))
	g.Expect(conditions.GetMessage(obj, meta.StalledCondition)).To(ContainSubstring("the new bundle stays"))
	s, _ := readBundle(t)
	g.Expect(s.Data["issuer.crt"]).NotTo(Equal(expired.CertPEM()), "the expired issuer is not restored")
	g.Expect(bundleIn(t, fixture.ControlPlaneNamespace).Anchors[0].Raw).NotTo(Equal(root.Cert.Raw))

	recoverWorkload(t, fixture.ControlPlaneNamespace, fixture.Sentry)
	done := waitRotationCompleted(t, key, "a")
	g.Expect(done.Status.Rotation.Step).To(Equal(rotatorv1.StepCompleted))
}

// settledWithSentryHeld completes a first rotation of name, whose one-hour
// issuer falls due for renewal 30 s after it is issued, on an operator with a
// test clock, then holds Sentry's new pods unready: the renewal's rollout
// will not end before rolloutTimeout.
func settledWithSentryHeld(t *testing.T, name string, rolloutTimeout time.Duration) (types.NamespacedName, *rotatorv1.MTLSRootRotation, *testClock) {
	t.Helper()
	freshBundle(t)
	clock := &testClock{}
	startOperatorWith(t, operatorOptions{clock: clock})
	spec := hourIssuerRenewedBefore(59*time.Minute + 30*time.Second)
	spec.ControlPlane.RolloutTimeout = &metav1.Duration{Duration: rolloutTimeout}
	key := newRotation(t, name, spec)
	first := waitRotationCompleted(t, key, "a")
	holdSentry(t)
	return key, first, clock
}

// passTo moves the operator's clock a second past at and wakes the object,
// as its own wake-up at that moment would.
func passTo(t *testing.T, key types.NamespacedName, clock *testClock, at time.Time, token string) {
	t.Helper()
	clock.setAhead(time.Until(at) + time.Second)
	requestReconcile(t, key, token)
}

// TestRolledBackRenewalIsTriedAgain: an automatic renewal of the issuer
// rolls back (Sentry's new pods never become ready), restoring an issuer
// that still has most of an hour; the object holds, saying when it tries
// again (halfway to that issuer's expiry), and then renews without anyone
// changing spec.trigger. The waits pass on the operator's clock, moved ahead.
func TestRolledBackRenewalIsTriedAgain(t *testing.T) {
	g := NewWithT(t)
	key, first, clock := settledWithSentryHeld(t, "retried", 3*time.Second)
	passTo(t, key, clock, first.Status.NextRenewal.Time, "renewal due")

	held := waitStalled(t, key, rotatorv1.RolledBackReason)
	rot := held.Status.Rotation
	g.Expect(rot.Cause).To(Equal(rotatorv1.CauseRenewal))
	msg := conditions.GetMessage(held, meta.StalledCondition)
	g.Expect(msg).To(MatchRegexp(`the renewal is tried again at \S+Z`))
	retryAt, ok := rotation.RenewalRetryAt(&held.Status)
	g.Expect(ok).To(BeTrue())
	g.Expect(msg).To(ContainSubstring(retryAt.UTC().Format(time.RFC3339)))
	now := clock.now()()
	g.Expect(retryAt).To(BeTemporally("~", now.Add(first.Status.Issuer.NotAfter.Sub(now)/2), time.Minute), "halfway to the restored issuer's expiry")
	g.Consistently(func() string { return getRotation(t, key).Status.Rotation.ID }).
		WithTimeout(3*time.Second).WithPolling(250*time.Millisecond).Should(Equal(rot.ID), "held until then")
	g.Expect(eventsFor(t, key)[rotatorv1.RolledBackReason]).To(HaveLen(1), "said once, with the retry, not once per pass")

	recoverWorkload(t, fixture.ControlPlaneNamespace, fixture.Sentry)
	passTo(t, key, clock, retryAt, "retry due")
	g.Eventually(func(g Gomega) {
		obj := getRotation(t, key)
		g.Expect(obj.Status.LastCompletedRotation).NotTo(BeNil())
		g.Expect(obj.Status.LastCompletedRotation.ID).NotTo(Equal(first.Status.LastCompletedRotation.ID))
		g.Expect(obj.Status.LastCompletedRotation.Cause).To(Equal(rotatorv1.CauseRenewal))
		g.Expect(obj.Spec.Trigger).To(Equal("a"), "nobody changed the trigger")
	}).WithTimeout(2 * time.Minute).Should(Succeed())
	g.Expect(getRotation(t, key).Status.Issuer.SerialNumber).NotTo(Equal(first.Status.Issuer.SerialNumber), "a renewed issuer")
}

// TestRollbackNeverRestoresAnIssuerAboutToExpire: an automatic renewal of the
// issuer fails on Sentry's rollout late in the old issuer's life (the
// operator's clock is moved to 30 s before its expiry once the renewal has
// published): restoring it would leave less than another attempt needs, so
// the new bundle stays, and the renewal completes once Sentry recovers.
func TestRollbackNeverRestoresAnIssuerAboutToExpire(t *testing.T) {
	g := NewWithT(t)
	key, first, clock := settledWithSentryHeld(t, "late", 30*time.Minute) // the clock's move ends the rollout's wait
	old, _ := readBundle(t)
	passTo(t, key, clock, first.Status.NextRenewal.Time, "renewal due")

	g.Eventually(func(g Gomega) {
		rot := getRotation(t, key).Status.Rotation
		g.Expect(rot.Cause).To(Equal(rotatorv1.CauseRenewal))
		g.Expect(rot.Step).To(Equal(rotatorv1.StepRestartingControlPlane))
		// The pass that restarted Sentry is over (the step is recorded
		// before it acts): its rollout is timed from before the clock moves.
		g.Expect(rot.WaitingFor).To(Equal("Deployment dapr-system/dapr-sentry"))
	}).WithTimeout(time.Minute).Should(Succeed())
	// Woken at once: no event follows the clock's move (Sentry's rollout
	// may have nothing left to report), as the pass's own wake-up would.
	passTo(t, key, clock, first.Status.Issuer.NotAfter.Add(-31*time.Second), "late")

	obj := waitStalled(t, key, rotatorv1.RolloutTimeoutReason)
	msg := conditions.GetMessage(obj, meta.StalledCondition)
	g.Expect(msg).To(ContainSubstring("sooner than another attempt as long as this one"))
	g.Expect(msg).To(ContainSubstring("the new bundle stays"))
	s, _ := readBundle(t)
	g.Expect(s.Data["issuer.crt"]).NotTo(Equal(old.Data["issuer.crt"]), "the issuer about to expire is not restored")

	recoverWorkload(t, fixture.ControlPlaneNamespace, fixture.Sentry)
	g.Eventually(func(g Gomega) {
		done := getRotation(t, key).Status.LastCompletedRotation
		g.Expect(done.Cause).To(Equal(rotatorv1.CauseRenewal))
	}).WithTimeout(time.Minute).Should(Succeed())
}

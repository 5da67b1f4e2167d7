package e2e

import (
	"testing"
	"time"

	"github.com/fluxcd/cli-utils/pkg/kstatus/status"
	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	. "github.com/onsi/gomega"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
)

// TestDriftIsReportedNotOverwritten: Sentry regenerating its CA (or Helm or
// Argo CD re-applying old data) is reported, never fought in a loop; a new
// rotation is the way out.
func TestDriftIsReportedNotOverwritten(t *testing.T) {
	g := NewWithT(t)
	freshBundle(t)
	startOperator(t)
	key := newRotation(t, "drifty", rotatorv1.MTLSRootRotationSpec{Trigger: "a"})
	waitRotationCompleted(t, key, "a")

	// Sentry regenerates a CA and writes it to both.
	root := installSentryBundle(t)

	obj := waitStalled(t, key, rotatorv1.TrustBundleDriftReason)
	// The Secret and the ConfigMap change one after the other; the drift
	// settles on the Secret's keys once both have.
	g.Eventually(func(g Gomega) {
		obj = getRotation(t, key)
		msg := conditions.GetMessage(obj, rotatorv1.TrustBundleDriftCondition)
		g.Expect(msg).To(ContainSubstring("[ca.crt issuer.crt issuer.key] differ"))
		g.Expect(msg).NotTo(ContainSubstring("ConfigMap"))
	}).WithTimeout(30 * time.Second).Should(Succeed())
	g.Expect(conditions.IsTrue(obj, rotatorv1.TrustBundleDriftCondition)).To(BeTrue())
	g.Expect(conditions.GetMessage(obj, meta.StalledCondition)).To(ContainSubstring("it is not overwritten"))
	g.Expect(kstatusOf(t, obj)).To(Equal(status.FailedStatus))

	// A settled drift is reported once, however often it is looked at.
	warnings := func() int32 { return eventCount(t, key, rotatorv1.TrustBundleDriftReason) }
	var settled int32
	g.Eventually(func(g Gomega) {
		settled = warnings()
		g.Expect(settled).To(BeNumerically(">=", 1))
		g.Consistently(warnings).WithTimeout(time.Second).WithPolling(100*time.Millisecond).Should(Equal(settled), "the Warnings settle")
	}).WithTimeout(20 * time.Second).Should(Succeed())
	requestReconcile(t, key, "look-again")
	g.Consistently(warnings).WithTimeout(3*time.Second).WithPolling(200*time.Millisecond).
		Should(Equal(settled), "no new Warning for the same drift")

	drifted, driftedCM := readBundle(t)
	g.Consistently(func(g Gomega) {
		now, nowCM := readBundle(t)
		g.Expect(now.ResourceVersion).To(Equal(drifted.ResourceVersion), "the drifted Secret is not overwritten")
		g.Expect(nowCM.ResourceVersion).To(Equal(driftedCM.ResourceVersion))
	}).WithTimeout(3 * time.Second).Should(Succeed())

	// Only the ConfigMap re-applied with old data: named too.
	driftedCM.Data["ca.crt"] = ""
	g.Expect(k8sClient.Update(t.Context(), driftedCM)).To(Succeed())
	g.Eventually(func() string {
		return conditions.GetMessage(getRotation(t, key), rotatorv1.TrustBundleDriftCondition)
	}).WithTimeout(30 * time.Second).Should(ContainSubstring("ConfigMap dapr-system/dapr-trust-bundle ca.crt differs from the Secret's"))

	// The way out: take the regenerated CA over with a new key.
	driftedCM.Data["ca.crt"] = string(root.CertPEM())
	g.Expect(k8sClient.Update(t.Context(), driftedCM)).To(Succeed())
	obj = getRotation(t, key)
	obj.Spec.Trigger, obj.Spec.Root.KeyPolicy = "b", rotatorv1.KeyPolicyRotate
	updateRotation(t, obj)
	done := waitRotationCompleted(t, key, "b")
	g.Expect(conditions.Has(done, rotatorv1.TrustBundleDriftCondition)).To(BeFalse())
	g.Expect(kstatusOf(t, done)).To(Equal(status.CurrentStatus))
}

package e2e

import (
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/e2e/fixture"
)

// TestKeyPolicyChangeDuringARotationIsRefused: asking for Rotate while a Reuse
// rotation runs changes nothing in that rotation; it is refused with one
// Warning and applies to the next rotation.
func TestKeyPolicyChangeDuringARotationIsRefused(t *testing.T) {
	g := NewWithT(t)
	freshBundle(t)
	// Keep the rotation in flight: the sidecar injector's new pods stay unready.
	testInjector.HoldUnready(fixture.ControlPlaneNamespace, fixture.SidecarInjector)
	t.Cleanup(func() { testInjector.Release(fixture.ControlPlaneNamespace, fixture.SidecarInjector) })
	startOperator(t)
	key := newRotation(t, "steady", rotatorv1.MTLSRootRotationSpec{Trigger: "a"})
	g.Eventually(func() rotatorv1.RotationStep {
		if r := getRotation(t, key).Status.Rotation; r != nil {
			return r.Step
		}
		return ""
	}).WithTimeout(time.Minute).Should(Equal(rotatorv1.StepRestartingControlPlane))

	obj := getRotation(t, key)
	obj.Spec.Root.KeyPolicy = rotatorv1.KeyPolicyRotate
	updateRotation(t, obj)
	g.Eventually(func(g Gomega) {
		warnings := eventsFor(t, key)[rotatorv1.KeyPolicyChangeDeferredReason]
		g.Expect(warnings).To(HaveLen(1))
		g.Expect(warnings[0].Type).To(Equal(corev1.EventTypeWarning))
		g.Expect(warnings[0].Message).To(ContainSubstring("keyPolicy Rotate refused"))
	}).WithTimeout(30 * time.Second).Should(Succeed())
	r := getRotation(t, key).Status.Rotation
	g.Expect(r.KeyPolicy).To(Equal(rotatorv1.KeyPolicyReuse), "the running rotation keeps its policy")
	g.Expect(r.Phase).To(BeEmpty())
	g.Expect(getRotation(t, key).Status.RootKeyGeneration).To(BeNumerically("<=", 1), "no new key was started")

	recoverWorkload(t, fixture.ControlPlaneNamespace, fixture.SidecarInjector)
	done := waitRotationCompleted(t, key, "a")
	g.Expect(done.Status.Rotation.KeyPolicy).To(Equal(rotatorv1.KeyPolicyReuse))
	g.Expect(eventsFor(t, key)[rotatorv1.KeyPolicyChangeDeferredReason][0].Count).To(BeNumerically("<=", 1))

	// The next rotation runs with the new policy.
	done.Spec.Trigger = "b"
	updateRotation(t, done)
	next := waitRotationCompleted(t, key, "b")
	g.Expect(next.Status.Rotation.KeyPolicy).To(Equal(rotatorv1.KeyPolicyRotate))
}

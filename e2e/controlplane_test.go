package e2e

import (
	"testing"
	"time"

	"github.com/fluxcd/cli-utils/pkg/kstatus/status"
	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
)

func controlPlaneWith(extra rotatorv1.ControlPlaneWorkload) []rotatorv1.ControlPlaneWorkload {
	ws := rotatorv1.DefaultControlPlane()
	return append(ws[:2], append([]rotatorv1.ControlPlaneWorkload{extra}, ws[2:]...)...)
}

func TestMissingOptionalWorkloadIsSkippedWithAnEvent(t *testing.T) {
	g := NewWithT(t)
	freshBundle(t)
	startOperator(t)
	key := newRotation(t, "older-dapr", rotatorv1.MTLSRootRotationSpec{
		Trigger: "a",
		ControlPlane: rotatorv1.ControlPlaneSpec{Workloads: controlPlaneWith(
			rotatorv1.ControlPlaneWorkload{Kind: rotatorv1.StatefulSet, Name: "dapr-legacy-placement", Optional: true})},
	})
	waitRotationCompleted(t, key, "a")
	g.Eventually(func(g Gomega) {
		skipped := eventsFor(t, key)["WorkloadSkipped"]
		g.Expect(skipped).To(HaveLen(1))
		g.Expect(skipped[0].Type).To(Equal(corev1.EventTypeNormal))
		g.Expect(skipped[0].Message).To(ContainSubstring("StatefulSet dapr-system/dapr-legacy-placement does not exist; skipped"))
	}).WithTimeout(20 * time.Second).Should(Succeed())
}

func TestMissingRequiredWorkloadStallsBeforeApplications(t *testing.T) {
	g := NewWithT(t)
	freshBundle(t)
	startOperator(t)
	key := newRotation(t, "broken-cp", rotatorv1.MTLSRootRotationSpec{
		Trigger: "a",
		ControlPlane: rotatorv1.ControlPlaneSpec{Workloads: controlPlaneWith(
			rotatorv1.ControlPlaneWorkload{Kind: rotatorv1.Deployment, Name: "dapr-missing"})},
	})

	// While it works, kstatus reports InProgress.
	sawInProgress := false
	g.Eventually(func(g Gomega) {
		obj := getRotation(t, key)
		if kstatusOf(t, obj) == status.InProgressStatus {
			sawInProgress = true
		}
		g.Expect(conditions.IsStalled(obj)).To(BeTrue())
	}).WithTimeout(2 * time.Minute).WithPolling(20 * time.Millisecond).Should(Succeed())
	g.Expect(sawInProgress).To(BeTrue(), "kstatus must report InProgress while rotating")

	obj := waitStalled(t, key, rotatorv1.WorkloadNotFoundReason)
	g.Expect(conditions.GetMessage(obj, meta.StalledCondition)).To(And(
		ContainSubstring("Deployment dapr-system/dapr-missing does not exist"), ContainSubstring("no application was restarted")))
	g.Expect(kstatusOf(t, obj)).To(Equal(status.FailedStatus))
	g.Expect(restartedApps(t, obj.Status.Rotation.ID)).To(BeEmpty())
	g.Eventually(func(g Gomega) {
		warnings := eventsFor(t, key)[rotatorv1.WorkloadNotFoundReason]
		g.Expect(warnings).To(HaveLen(1), "one Warning, not a flood")
		g.Expect(warnings[0].Type).To(Equal(corev1.EventTypeWarning))
	}).WithTimeout(20 * time.Second).Should(Succeed())
	// Another pass over the same stall must not warn again.
	requestReconcile(t, key, "again")
	g.Consistently(func(g Gomega) {
		warnings := eventsFor(t, key)[rotatorv1.WorkloadNotFoundReason]
		g.Expect(warnings).To(HaveLen(1))
		g.Expect(warnings[0].Count).To(BeNumerically("<=", 1), "the same stall is reported once")
	}).WithTimeout(3 * time.Second).WithPolling(200 * time.Millisecond).Should(Succeed())
}

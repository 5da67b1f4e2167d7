package e2e

import (
	"testing"
	"time"

	"github.com/fluxcd/cli-utils/pkg/kstatus/status"
	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/convergence"
	"github.com/mtls-rotator/mtls-rotator/internal/restart"
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

// TestApplicationsOfAnotherControlPlaneAreLeftToIt: in a cluster with a Dapr
// control plane per tenant, a rotation of one control plane restarts its
// own applications and not those another control plane's injector
// injected (their pods say which), though no selector leaves them out.
func TestApplicationsOfAnotherControlPlaneAreLeftToIt(t *testing.T) {
	g := NewWithT(t)
	freshBundle(t)
	const tenantControlPlane = "tenant-system"
	secondControlPlane(t, tenantControlPlane)
	tenantApps := createNamespace(t, "tenant-apps")
	testInjector.ServeFor(tenantApps, tenantControlPlane)
	t.Cleanup(func() { testInjector.ServeFor(tenantApps, "") })
	mine, theirs := appDeployment(createNamespace(t, "own-apps"), "own", true), appDeployment(tenantApps, "tenants", true)
	for _, d := range []*appsv1.Deployment{mine, theirs} {
		g.Expect(k8sClient.Create(t.Context(), d)).To(Succeed())
		waitDeploymentRolledOut(t, d.Namespace, d.Name)
	}
	pods := &corev1.PodList{}
	g.Expect(k8sClient.List(t.Context(), pods, client.InNamespace(tenantApps))).To(Succeed())
	g.Expect(pods.Items).To(HaveLen(1))
	observed, _ := convergence.Observe(&pods.Items[0])
	g.Expect(observed.ControlPlane).To(Equal(tenantControlPlane), "the tenant's pod was injected by its own control plane")

	startOperator(t)
	key := newRotation(t, "own-control-plane", rotatorv1.MTLSRootRotationSpec{Trigger: "a", Applications: rotatorv1.ApplicationsSpec{MaxConcurrent: 5}})
	id := waitRotationCompleted(t, key, "a").Status.LastCompletedRotation.ID
	restartedFor := func(d *appsv1.Deployment) bool {
		annotations, _, err := readWorkload(t.Context(), workloadRef{Kind: "Deployment", Namespace: d.Namespace, Name: d.Name})
		g.Expect(err).NotTo(HaveOccurred())
		return restart.RestartedFor(annotations, id)
	}
	g.Expect(restartedFor(mine)).To(BeTrue(), "an application of this control plane is restarted")
	g.Expect(restartedFor(theirs)).To(BeFalse(), "one of another control plane is not")
	g.Expect(k8sClient.Get(t.Context(), client.ObjectKeyFromObject(theirs), theirs)).To(Succeed())
	g.Expect(theirs.Generation).To(Equal(int64(1)), "nor written at all")
}

package e2e

import (
	"testing"
	"time"

	"github.com/fluxcd/cli-utils/pkg/kstatus/status"
	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/e2e/fixture"
	"github.com/mtls-rotator/mtls-rotator/internal/restart"
)

func TestControlPlaneRolloutTimeoutStallsBeforeApplications(t *testing.T) {
	g := NewWithT(t)
	freshBundle(t)
	holdUnready(t, fixture.ControlPlaneNamespace, fixture.SidecarInjector)
	startOperator(t)
	key := newRotation(t, "stuck-cp", rotatorv1.MTLSRootRotationSpec{
		Trigger:      "a",
		ControlPlane: rotatorv1.ControlPlaneSpec{RolloutTimeout: &metav1.Duration{Duration: 3 * time.Second}},
	})

	obj := waitStalled(t, key, rotatorv1.RolloutTimeoutReason)
	msg := conditions.GetMessage(obj, meta.StalledCondition)
	g.Expect(msg).To(ContainSubstring("Deployment dapr-system/dapr-sidecar-injector did not roll out within 3s"))
	g.Expect(msg).To(ContainSubstring("no application was restarted"))
	g.Expect(msg).To(ContainSubstring("the bundle was empty before rotation"), "a first issuance has nothing to roll back to")
	g.Expect(kstatusOf(t, obj)).To(Equal(status.FailedStatus))
	checkConditions(t, obj)
	id := obj.Status.Rotation.ID
	g.Expect(restartedApps(t, id)).To(BeEmpty(), "applications are untouched")
	daprOperator, _, err := readControlPlane(t.Context(), fixture.Workload{Kind: "Deployment", Name: fixture.Operator})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(restart.RestartedFor(daprOperator, id)).To(BeFalse(), "nothing after the stuck workload is restarted")

	recoverWorkload(t, fixture.ControlPlaneNamespace, fixture.SidecarInjector)
	done := waitRotationCompleted(t, key, "a")
	g.Expect(kstatusOf(t, done)).To(Equal(status.CurrentStatus))
}

func TestApplicationRolloutTimeoutStopsFurtherWaves(t *testing.T) {
	g := NewWithT(t)
	freshBundle(t)
	var held fixture.App
	for _, app := range daprApps() {
		if held.Name == "" || app.Namespace < held.Namespace || (app.Namespace == held.Namespace && app.Name < held.Name) {
			held = app // the first in wave order
		}
	}
	holdUnready(t, held.Namespace, held.Name)
	startOperator(t)
	key := newRotation(t, "stuck-app", rotatorv1.MTLSRootRotationSpec{
		Trigger: "a",
		Applications: rotatorv1.ApplicationsSpec{
			MaxConcurrent: 1, RolloutTimeout: &metav1.Duration{Duration: 3 * time.Second},
		},
	})

	obj := waitStalled(t, key, rotatorv1.RolloutTimeoutReason)
	g.Expect(conditions.GetMessage(obj, meta.StalledCondition)).To(ContainSubstring("Deployment " + held.Namespace + "/" + held.Name))
	g.Expect(conditions.GetMessage(obj, meta.StalledCondition)).To(ContainSubstring("no further application is restarted until they do"))
	g.Expect(restartedApps(t, obj.Status.Rotation.ID)).To(Equal([]string{held.Name}), "no wave after the stuck one")
	g.Consistently(func() []string { return restartedApps(t, obj.Status.Rotation.ID) }).
		WithTimeout(2 * time.Second).Should(Equal([]string{held.Name}))

	recoverWorkload(t, held.Namespace, held.Name)
	done := waitRotationCompleted(t, key, "a")
	g.Expect(done.Status.Applications.Restarted).To(Equal(done.Status.Applications.Total))
}

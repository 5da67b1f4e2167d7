package e2e

import (
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	. "github.com/onsi/gomega"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/e2e/fixture"
	"github.com/mtls-rotator/mtls-rotator/internal/restart"
)

func waitPlan(t *testing.T, key types.NamespacedName) *rotatorv1.MTLSRootRotation {
	t.Helper()
	var obj *rotatorv1.MTLSRootRotation
	NewWithT(t).Eventually(func(g Gomega) {
		obj = getRotation(t, key)
		g.Expect(obj.Status.Plan).NotTo(BeNil())
		g.Expect(conditions.IsReady(obj)).To(BeTrue())
		g.Expect(obj.Status.ObservedGeneration).To(Equal(obj.Generation))
	}).WithTimeout(time.Minute).WithPolling(100 * time.Millisecond).Should(Succeed())
	return obj
}

func TestDryRunPlansAndTouchesNothing(t *testing.T) {
	g := NewWithT(t)
	freshBundle(t)
	startOperator(t)
	before, beforeCM := readBundle(t)
	templates := workloadTemplates(t)
	key := newRotation(t, "planner", rotatorv1.MTLSRootRotationSpec{
		Trigger: "a", DryRun: true, Root: rotatorv1.RootSpec{KeyPolicy: rotatorv1.KeyPolicyRotate},
		Applications: rotatorv1.ApplicationsSpec{MaxConcurrent: 2},
	})
	obj := waitPlan(t, key)
	p := obj.Status.Plan
	g.Expect(p.KeyPolicy).To(Equal(rotatorv1.KeyPolicyRotate))
	g.Expect(p.Phases).To(Equal([]rotatorv1.RotationPhase{rotatorv1.PhasePrune}), "an empty bundle has nothing to overlap")
	g.Expect(p.ControlPlane).To(Equal([]string{
		"Deployment dapr-system/dapr-sentry", "Deployment dapr-system/dapr-sidecar-injector", "Deployment dapr-system/dapr-operator",
		"StatefulSet dapr-system/dapr-placement-server", "StatefulSet dapr-system/dapr-scheduler-server",
	}))
	apps := len(daprApps())
	g.Expect(p.Applications).To(Equal(int32(apps)))
	g.Expect(p.Waves).To(Equal(int32((apps + 1) / 2)))
	g.Expect(p.FirstWaves[0].Applications).To(HaveLen(2))
	g.Expect(p.Blockers).To(BeEmpty())
	g.Expect(conditions.GetMessage(obj, meta.ReadyCondition)).To(ContainSubstring("dry run"))
	g.Expect(obj.Status.Rotation).To(BeNil())
	g.Eventually(func() bool { return len(eventsFor(t, key)["RotationPlanned"]) == 1 }).WithTimeout(20 * time.Second).Should(BeTrue())

	// Nothing was touched.
	bundleUnchanged(t, before, beforeCM)
	err := k8sClient.Get(t.Context(), types.NamespacedName{Namespace: key.Namespace, Name: "planner-root"}, &cmapi.Certificate{})
	g.Expect(apierrors.IsNotFound(err)).To(BeTrue(), "no Certificate is created by a dry run")
	g.Expect(workloadTemplates(t)).To(Equal(templates), "no workload is restarted by a dry run")
}

func TestDryRunNamesWhatWouldStopARotation(t *testing.T) {
	g := NewWithT(t)
	freshBundle(t)
	installSentryBundle(t)
	startOperator(t)
	key := newRotation(t, "planner", rotatorv1.MTLSRootRotationSpec{Trigger: "a", DryRun: true})
	obj := waitPlan(t, key)
	g.Expect(obj.Status.Plan.Blockers).To(ContainElement(ContainSubstring(rotatorv1.RootKeyUnknownReason)))
	g.Expect(conditions.GetMessage(obj, meta.ReadyCondition)).To(ContainSubstring("it would stop"))

	// The advice taken: the Rotate plan overlaps the installed root.
	obj.Spec.Root.KeyPolicy = rotatorv1.KeyPolicyRotate
	updateRotation(t, obj)
	g.Eventually(func(g Gomega) {
		p := getRotation(t, key).Status.Plan
		g.Expect(p.KeyPolicy).To(Equal(rotatorv1.KeyPolicyRotate))
		g.Expect(p.Phases).To(HaveLen(3))
		g.Expect(p.Blockers).To(BeEmpty())
	}).WithTimeout(time.Minute).Should(Succeed())
}

// workloadTemplates returns the restart annotation of every fixture
// workload's pod template, control plane included.
func workloadTemplates(t *testing.T) map[string]string {
	t.Helper()
	g := NewWithT(t)
	out := map[string]string{}
	for _, app := range fixtureOpts.AppList() {
		annotations, _, err := readWorkload(t.Context(), appRef(app))
		g.Expect(err).NotTo(HaveOccurred())
		out[app.Namespace+"/"+app.Name] = annotations[restart.Annotation]
	}
	for _, w := range fixture.ControlPlane {
		annotations, _, err := readControlPlane(t.Context(), w)
		g.Expect(err).NotTo(HaveOccurred())
		out[w.Name] = annotations[restart.Annotation]
	}
	return out
}

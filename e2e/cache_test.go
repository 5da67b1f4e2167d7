package e2e

import (
	"testing"

	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/e2e/fixture"
	"github.com/mtls-rotator/mtls-rotator/internal/restart"
)

// appDeployment is a Deployment of one replica called name in namespace,
// whose pod template enables Dapr when dapr is true.
func appDeployment(namespace, name string, dapr bool) *appsv1.Deployment {
	template := fixture.DaprPodTemplate(name)
	if !dapr {
		template.Annotations = nil
	}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec: appsv1.DeploymentSpec{Replicas: ptr.To[int32](1), Template: template,
			Selector: &metav1.LabelSelector{MatchLabels: template.Labels}},
	}
}

// setDapr enables or disables Dapr in a Deployment's pod template, as its
// owner would, and waits for it to roll out.
func setDapr(t *testing.T, d *appsv1.Deployment, dapr bool) {
	t.Helper()
	g := NewWithT(t)
	g.Expect(k8sClient.Get(t.Context(), client.ObjectKeyFromObject(d), d)).To(Succeed())
	patch := client.MergeFrom(d.DeepCopy())
	d.Spec.Template.Annotations = appDeployment(d.Namespace, d.Name, dapr).Spec.Template.Annotations
	g.Expect(k8sClient.Patch(t.Context(), d, patch)).To(Succeed())
	waitDeploymentRolledOut(t, d.Namespace, d.Name)
}

// TestWorkloadsThatEnableOrDisableDaprLater: the operator caches a workload
// whose pod template does not enable Dapr as its identity alone. One that
// enables Dapr later is restarted by the next rotation; one that stops is
// left alone by it.
func TestWorkloadsThatEnableOrDisableDaprLater(t *testing.T) {
	g := NewWithT(t)
	freshBundle(t)
	startOperator(t)
	ns := createNamespace(t, "late-dapr")
	late, quit := appDeployment(ns, "late", false), appDeployment(ns, "quit", true)
	for _, d := range []*appsv1.Deployment{late, quit} {
		g.Expect(k8sClient.Create(t.Context(), d)).To(Succeed())
		waitDeploymentRolledOut(t, ns, d.Name)
	}
	restartedFor := func(d *appsv1.Deployment, id string) bool {
		annotations, _, err := readWorkload(t.Context(), workloadRef{Kind: "Deployment", Namespace: ns, Name: d.Name})
		g.Expect(err).NotTo(HaveOccurred())
		return restart.RestartedFor(annotations, id)
	}

	key := newRotation(t, "late-dapr", rotatorv1.MTLSRootRotationSpec{Trigger: "one", Applications: rotatorv1.ApplicationsSpec{MaxConcurrent: 5}})
	first := waitRotationCompleted(t, key, "one").Status.LastCompletedRotation.ID
	g.Expect(restartedFor(quit, first)).To(BeTrue(), "a Dapr application is restarted")
	g.Expect(restartedFor(late, first)).To(BeFalse(), "a workload without Dapr is not")

	setDapr(t, late, true)
	setDapr(t, quit, false)
	obj := getRotation(t, key)
	obj.Spec.Trigger = "two"
	updateRotation(t, obj)
	second := waitRotationCompleted(t, key, "two").Status.LastCompletedRotation.ID
	g.Expect(restartedFor(late, second)).To(BeTrue(), "a workload that enabled Dapr since is restarted")
	g.Expect(restartedFor(quit, second)).To(BeFalse(), "one that disabled it is not")
}

package e2e

import (
	"testing"
	"time"

	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/mtls-rotator/mtls-rotator/e2e/fixture"
)

const restartedAtAnnotation = "kubectl.kubernetes.io/restartedAt"

// TestRestartPatchRollsOutDeployment proves that kube-controller-manager, the
// scheduler and kwok carry a pod-template restart of a Deployment to completion:
// a new ReplicaSet whose pods are all available, and none of the old pods left.
func TestRestartPatchRollsOutDeployment(t *testing.T) {
	g := NewWithT(t)
	ctx := t.Context()
	ns := createNamespace(t, "rollout-deploy")
	labels := map[string]string{"app": "web"}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](3),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: testPodTemplate(labels),
		},
	}
	g.Expect(k8sClient.Create(ctx, d)).To(Succeed())
	waitDeploymentRolledOut(t, ns, "web")
	oldPods := podNames(t, ns, labels)
	g.Expect(oldPods).To(HaveLen(3))

	patchRestartedAt(t, d, "2026-11-26T00:00:00Z")
	waitDeploymentRolledOut(t, ns, "web")
	g.Eventually(func(g Gomega) {
		pods := &corev1.PodList{}
		g.Expect(k8sClient.List(ctx, pods, client.InNamespace(ns), client.MatchingLabels(labels))).To(Succeed())
		g.Expect(pods.Items).To(HaveLen(3))
		for _, p := range pods.Items {
			g.Expect(oldPods).NotTo(ContainElement(p.Name), "old pod %s is still there", p.Name)
			g.Expect(p.Annotations).To(HaveKeyWithValue(restartedAtAnnotation, "2026-11-26T00:00:00Z"))
		}
	}).WithTimeout(30 * time.Second).Should(Succeed())

	sets := &appsv1.ReplicaSetList{}
	g.Expect(k8sClient.List(ctx, sets, client.InNamespace(ns))).To(Succeed())
	g.Expect(sets.Items).To(HaveLen(2), "the restart makes exactly one new ReplicaSet")
}

// TestRestartPatchRollsOutStatefulSet proves the same for a StatefulSet: the
// current revision catches up with the update revision.
func TestRestartPatchRollsOutStatefulSet(t *testing.T) {
	g := NewWithT(t)
	ctx := t.Context()
	ns := createNamespace(t, "rollout-sts")
	labels := map[string]string{"app": "placement"}
	s := &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: "placement", Namespace: ns},
		Spec: appsv1.StatefulSetSpec{
			Replicas:    ptr.To[int32](2),
			ServiceName: "placement",
			Selector:    &metav1.LabelSelector{MatchLabels: labels},
			Template:    testPodTemplate(labels),
		},
	}
	g.Expect(k8sClient.Create(ctx, s)).To(Succeed())
	firstRevision := waitStatefulSetRolledOut(t, ns, "placement")

	patchRestartedAt(t, s, "2026-11-26T00:00:00Z")
	revision := waitStatefulSetRolledOut(t, ns, "placement")
	g.Expect(revision).NotTo(Equal(firstRevision), "the restart makes a new revision")
	g.Eventually(func(g Gomega) {
		pods := &corev1.PodList{}
		g.Expect(k8sClient.List(ctx, pods, client.InNamespace(ns), client.MatchingLabels(labels))).To(Succeed())
		g.Expect(pods.Items).To(HaveLen(2))
		for _, p := range pods.Items {
			g.Expect(p.Labels).To(HaveKeyWithValue(appsv1.StatefulSetRevisionLabel, revision))
			g.Expect(p.DeletionTimestamp).To(BeNil())
		}
	}).WithTimeout(30 * time.Second).Should(Succeed())
}

func testPodTemplate(labels map[string]string) corev1.PodTemplateSpec {
	return corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: labels},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: ptr.To[int64](1),
			Containers:                    []corev1.Container{{Name: "main", Image: "fixture.invalid/main:1"}},
		},
	}
}

// restart sets the kubectl restart annotation on a workload's pod template.
func patchRestartedAt(t *testing.T, obj client.Object, value string) {
	t.Helper()
	patch := []byte(`{"spec":{"template":{"metadata":{"annotations":{"` + restartedAtAnnotation + `":"` + value + `"}}}}}`)
	NewWithT(t).Expect(k8sClient.Patch(t.Context(), obj, client.RawPatch(types.MergePatchType, patch))).To(Succeed())
}

func waitDeploymentRolledOut(t *testing.T, ns, name string) {
	t.Helper()
	NewWithT(t).Eventually(func(g Gomega) {
		d := &appsv1.Deployment{}
		g.Expect(k8sClient.Get(t.Context(), types.NamespacedName{Namespace: ns, Name: name}, d)).To(Succeed())
		g.Expect(fixture.DeploymentRolledOut(d)).To(BeTrue(), "Deployment %s/%s status %+v", ns, name, d.Status)
	}).WithTimeout(60 * time.Second).WithPolling(100 * time.Millisecond).Should(Succeed())
}

func waitStatefulSetRolledOut(t *testing.T, ns, name string) string {
	t.Helper()
	var revision string
	NewWithT(t).Eventually(func(g Gomega) {
		s := &appsv1.StatefulSet{}
		g.Expect(k8sClient.Get(t.Context(), types.NamespacedName{Namespace: ns, Name: name}, s)).To(Succeed())
		g.Expect(fixture.StatefulSetRolledOut(s)).To(BeTrue(), "StatefulSet %s/%s status %+v", ns, name, s.Status)
		revision = s.Status.UpdateRevision
	}).WithTimeout(60 * time.Second).WithPolling(100 * time.Millisecond).Should(Succeed())
	return revision
}

func podNames(t *testing.T, ns string, labels map[string]string) []string {
	t.Helper()
	pods := &corev1.PodList{}
	NewWithT(t).Expect(k8sClient.List(t.Context(), pods, client.InNamespace(ns), client.MatchingLabels(labels))).To(Succeed())
	names := make([]string, 0, len(pods.Items))
	for _, p := range pods.Items {
		names = append(names, p.Name)
	}
	return names
}

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
	"github.com/mtls-rotator/mtls-rotator/internal/restart"
)

// TestRestartPatchRollsOutDeployment proves that kube-controller-manager, the
// scheduler and kwok carry a pod-template restart of a Deployment (the
// operator's restart.Patch) to completion: a new ReplicaSet whose pods are all
// available, and none of the old pods left.
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

	restartWorkload(t, workloadRef{Kind: "Deployment", Namespace: ns, Name: "web"}, "2026-11-26T00:00:00Z")
	waitDeploymentRolledOut(t, ns, "web")
	g.Eventually(func(g Gomega) {
		pods := &corev1.PodList{}
		g.Expect(k8sClient.List(ctx, pods, client.InNamespace(ns), client.MatchingLabels(labels))).To(Succeed())
		g.Expect(pods.Items).To(HaveLen(3))
		for _, p := range pods.Items {
			g.Expect(oldPods).NotTo(ContainElement(p.Name), "old pod %s is still there", p.Name)
			g.Expect(p.Annotations).To(HaveKeyWithValue(restart.Annotation, "2026-11-26T00:00:00Z"))
		}
	}).WithTimeout(30 * time.Second).Should(Succeed())

	sets := &appsv1.ReplicaSetList{}
	g.Expect(k8sClient.List(ctx, sets, client.InNamespace(ns))).To(Succeed())
	g.Expect(sets.Items).To(HaveLen(2), "the restart makes exactly one new ReplicaSet")
	g.Expect(restartedRevisions(ctx, g, workloadRef{Kind: "Deployment", Namespace: ns, Name: "web"}, "2026-11-26T00:00:00Z")).
		To(Equal(1), "one ReplicaSet carries the restart")
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

	restartWorkload(t, workloadRef{Kind: "StatefulSet", Namespace: ns, Name: "placement"}, "2026-11-26T00:00:00Z")
	revision := waitStatefulSetRolledOut(t, ns, "placement")
	g.Expect(revision).NotTo(Equal(firstRevision), "the restart makes a new revision")
	g.Expect(restartedRevisions(ctx, g, workloadRef{Kind: "StatefulSet", Namespace: ns, Name: "placement"}, "2026-11-26T00:00:00Z")).
		To(Equal(1), "one ControllerRevision carries the restart")
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

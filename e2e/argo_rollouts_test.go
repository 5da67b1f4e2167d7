package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/controllers"
	"github.com/mtls-rotator/mtls-rotator/e2e/fixture"
	"github.com/mtls-rotator/mtls-rotator/internal/convergence"
	"github.com/mtls-rotator/mtls-rotator/internal/restart"
)

// createArgoRollout creates a Dapr-enabled Argo Rollout of two replicas with
// a canary strategy, waits until its pods run injected, and removes it when
// the test ends.
func createArgoRollout(t *testing.T, namespace, name string) *unstructured.Unstructured {
	t.Helper()
	g, ctx := NewWithT(t), t.Context()
	tmpl, err := runtime.DefaultUnstructuredConverter.ToUnstructured(ptr.To(fixture.DaprPodTemplate(name)))
	g.Expect(err).NotTo(HaveOccurred())
	ro := &unstructured.Unstructured{Object: map[string]any{
		"metadata": map[string]any{"name": name, "namespace": namespace, "labels": map[string]any{"app": name}},
		"spec": map[string]any{
			"replicas": int64(2), "selector": map[string]any{"matchLabels": map[string]any{"app": name}},
			"template": tmpl, "strategy": map[string]any{"canary": map[string]any{}},
		},
	}}
	ro.SetGroupVersionKind(controllers.RolloutGVK)
	g.Expect(k8sClient.Create(ctx, ro)).To(Succeed())
	t.Cleanup(func() {
		_ = k8sClient.Delete(context.Background(), ro)
		NewWithT(t).Eventually(func(g Gomega) {
			pods := &corev1.PodList{}
			g.Expect(k8sClient.List(context.Background(), pods, client.InNamespace(namespace), client.MatchingLabels{"app": name})).To(Succeed())
			g.Expect(pods.Items).To(BeEmpty())
		}).WithTimeout(60*time.Second).Should(Succeed(), "the Rollout's pods leave before the next test")
	})
	g.Eventually(func(g Gomega) {
		pods := rolloutPods(t, g, namespace, name)
		g.Expect(pods).To(HaveLen(2))
		for _, p := range pods {
			g.Expect(p.Labels).To(HaveKeyWithValue(convergence.InjectedLabel, "true"))
			g.Expect(running(&p)).To(BeTrue())
		}
	}).WithTimeout(60 * time.Second).WithPolling(250 * time.Millisecond).Should(Succeed())
	return ro
}

// rolloutPods lists the live pods of an Argo Rollout.
func rolloutPods(t *testing.T, g Gomega, namespace, name string) []corev1.Pod {
	pods := &corev1.PodList{}
	g.Expect(k8sClient.List(t.Context(), pods, client.InNamespace(namespace), client.MatchingLabels{"app": name})).To(Succeed())
	var live []corev1.Pod
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil {
			live = append(live, p)
		}
	}
	return live
}

// TestArgoRolloutsAreRestartedThroughRestartAt: with Argo Rollouts' real
// controller running, a Dapr-enabled Rollout is restarted by a rotation
// through its spec.restartAt: the controller replaces every pod, no new
// revision (ReplicaSet) is made, the rotation waits until the restart is
// done, and its pods then hold the new root.
func TestArgoRolloutsAreRestartedThroughRestartAt(t *testing.T) {
	g, ctx := NewWithT(t), t.Context()
	freshBundle(t)
	createArgoRollout(t, "apps-a", "web-rollout")
	before := rolloutPods(t, g, "apps-a", "web-rollout")
	startOperator(t)
	key := newRotation(t, "argo", rotatorv1.MTLSRootRotationSpec{Trigger: "first", Applications: rotatorv1.ApplicationsSpec{MaxConcurrent: 3}})
	done := waitRotationCompleted(t, key, "first")

	ro := &unstructured.Unstructured{}
	ro.SetGroupVersionKind(controllers.RolloutGVK)
	g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: "apps-a", Name: "web-rollout"}, ro)).To(Succeed())
	g.Expect(ro.GetAnnotations()).To(HaveKeyWithValue(restart.Annotation, done.Status.LastCompletedRotation.ID))
	restartAt, _, _ := unstructured.NestedString(ro.Object, "spec", "restartAt")
	restartedAt, _, _ := unstructured.NestedString(ro.Object, "status", "restartedAt")
	g.Expect(restartAt).NotTo(BeEmpty())
	g.Expect(restartedAt).To(Equal(restartAt), "the rotation waited for Argo Rollouts to restart every pod")
	tmpl, _, _ := unstructured.NestedStringMap(ro.Object, "spec", "template", "metadata", "annotations")
	g.Expect(tmpl).NotTo(HaveKey(restart.Annotation), "the template is left alone")
	sets := &appsv1.ReplicaSetList{}
	g.Expect(k8sClient.List(ctx, sets, client.InNamespace("apps-a"), client.MatchingLabels{"app": "web-rollout"})).To(Succeed())
	g.Expect(sets.Items).To(HaveLen(1), "no new revision")

	after := rolloutPods(t, g, "apps-a", "web-rollout")
	g.Expect(after).To(HaveLen(2))
	for _, p := range after {
		for _, old := range before {
			g.Expect(p.UID).NotTo(Equal(old.UID), "pod %s was replaced", old.Name)
		}
		anchors, problem := convergence.Anchors(&p)
		g.Expect(problem).To(BeEmpty())
		g.Expect(fmt.Sprint(anchors)).To(Equal(fmt.Sprint([]string{done.Status.Root.SHA256Fingerprint})), "pod %s holds the new root", p.Name)
	}
	g.Expect(done.Status.Applications.Total).To(Equal(int32(len(daprApps()) + 1)))
}

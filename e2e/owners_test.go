package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/e2e/cluster"
	"github.com/mtls-rotator/mtls-rotator/e2e/fixture"
	"github.com/mtls-rotator/mtls-rotator/internal/convergence"
)

// ownersNamespace holds the Dapr pods of other owners than Deployments.
const ownersNamespace = "apps-b"

// otherOwners creates, next to the fixture's Deployments, one Dapr workload
// of each other owner: a Job whose pod keeps running, a ReplicaSet of its
// own, a StatefulSet and a DaemonSet. It waits until each runs an injected
// pod, and removes them when the test ends.
func otherOwners(t *testing.T) {
	t.Helper()
	g, ctx := NewWithT(t), t.Context()
	selector := func(app string) *metav1.LabelSelector {
		return &metav1.LabelSelector{MatchLabels: map[string]string{"app": app}}
	}
	objMeta := func(app string) metav1.ObjectMeta {
		return metav1.ObjectMeta{Name: app, Namespace: ownersNamespace, Labels: map[string]string{"app": app}}
	}
	jobPod := fixture.DaprPodTemplate("mixed-job")
	jobPod.Annotations[cluster.KeepRunningAnnotation] = "true"
	jobPod.Spec.RestartPolicy = corev1.RestartPolicyNever
	workloads := []client.Object{
		&batchv1.Job{ObjectMeta: objMeta("mixed-job"), Spec: batchv1.JobSpec{BackoffLimit: ptr.To[int32](20), Template: jobPod}},
		&appsv1.ReplicaSet{ObjectMeta: objMeta("mixed-rs"), Spec: appsv1.ReplicaSetSpec{
			Replicas: ptr.To[int32](1), Selector: selector("mixed-rs"), Template: fixture.DaprPodTemplate("mixed-rs")}},
		&appsv1.StatefulSet{ObjectMeta: objMeta("mixed-sts"), Spec: appsv1.StatefulSetSpec{
			Replicas: ptr.To[int32](1), Selector: selector("mixed-sts"), Template: fixture.DaprPodTemplate("mixed-sts")}},
		&appsv1.DaemonSet{ObjectMeta: objMeta("mixed-ds"), Spec: appsv1.DaemonSetSpec{
			Selector: selector("mixed-ds"), Template: fixture.DaprPodTemplate("mixed-ds")}},
	}
	for _, w := range workloads {
		g.Expect(k8sClient.Create(ctx, w)).To(Succeed())
	}
	t.Cleanup(func() {
		for _, w := range workloads {
			_ = k8sClient.Delete(context.Background(), w, client.PropagationPolicy(metav1.DeletePropagationForeground))
		}
		NewWithT(t).Eventually(func(g Gomega) {
			pods := &corev1.PodList{}
			g.Expect(k8sClient.List(context.Background(), pods, client.InNamespace(ownersNamespace))).To(Succeed())
			for _, p := range pods.Items {
				g.Expect(p.Labels["app"]).NotTo(HavePrefix("mixed-"), "pod %s still there", p.Name)
			}
		}).WithTimeout(60*time.Second).Should(Succeed(), "the other owners' pods leave before the next test")
	})
	g.Eventually(func(g Gomega) {
		for _, app := range []string{"mixed-job", "mixed-rs", "mixed-sts", "mixed-ds"} {
			pods := &corev1.PodList{}
			g.Expect(k8sClient.List(ctx, pods, client.InNamespace(ownersNamespace), client.MatchingLabels{"app": app, convergence.InjectedLabel: "true"})).To(Succeed())
			g.Expect(pods.Items).NotTo(BeEmpty(), "%s has no injected pod", app)
			g.Expect(running(&pods.Items[0])).To(BeTrue(), "%s pod %s is %s", app, pods.Items[0].Name, pods.Items[0].Status.Phase)
		}
	}).WithTimeout(60 * time.Second).WithPolling(250 * time.Millisecond).Should(Succeed())
}

// TestEveryOwnerIsObservedThroughANewKeyRotation: a new-key rotation over a
// mesh whose Dapr pods belong to Deployments, a StatefulSet, a DaemonSet, a
// Job, a ReplicaSet of its own and no one (a bare pod). While the Overlap
// phase waits on the control plane, applications.selector is narrowed to
// leave one Deployment out. The Switch gate holds, because it reads the
// pods that run, not the spec: it names the bare pod, the Job's and the
// ReplicaSet's pods and the left-out application's, and publishes nothing.
// Once the left-out application is redeployed by its owner and the opt-in
// evicts what no restart reaches, the rotation finishes; the availability
// oracle checked a pod of every owner and saw no handshake fail.
func TestEveryOwnerIsObservedThroughANewKeyRotation(t *testing.T) {
	g := NewWithT(t)
	freshBundle(t)
	installSentryBundle(t)
	restartMesh(t, time.Now().Format(time.RFC3339Nano))
	createBareDaprPod(t)
	otherOwners(t)
	o := startOracle(t)
	startOperator(t)
	holdUnready(t, fixture.ControlPlaneNamespace, fixture.Operator)
	key := newRotation(t, "owners", rotatorv1.MTLSRootRotationSpec{
		Trigger: "new-key", Root: rotatorv1.RootSpec{KeyPolicy: rotatorv1.KeyPolicyRotate}, Applications: rotatorv1.ApplicationsSpec{MaxConcurrent: 3},
	})
	g.Eventually(func(g Gomega) {
		r := getRotation(t, key).Status.Rotation
		g.Expect(r).NotTo(BeNil())
		g.Expect(r.Phase).To(Equal(rotatorv1.PhaseOverlap))
		g.Expect(r.WaitingFor).To(Equal("Deployment dapr-system/" + fixture.Operator))
	}).WithTimeout(2 * time.Minute).WithPolling(200 * time.Millisecond).Should(Succeed())

	// Mid-rotation, a commit leaves one application out of the restarts.
	left := daprApps()[1]
	obj := getRotation(t, key)
	obj.Spec.Applications.Selector = &rotatorv1.LabelSelector{MatchExpressions: []rotatorv1.LabelSelectorRequirement{
		{Key: "app", Operator: metav1.LabelSelectorOpNotIn, Values: []rotatorv1.LabelValue{rotatorv1.LabelValue(left.Name)}},
	}}
	updateRotation(t, obj)
	recoverWorkload(t, fixture.ControlPlaneNamespace, fixture.Operator)

	stalled := waitStalled(t, key, rotatorv1.PodsNotConvergedReason)
	g.Expect(stalled.Status.Rotation.Phase).To(Equal(rotatorv1.PhaseSwitch))
	msg := conditions.GetMessage(stalled, meta.StalledCondition)
	for _, held := range []string{"apps-a/bare-dapr-pod", "(Job mixed-job:", "(ReplicaSet mixed-rs:", left.Namespace + "/" + left.Name + "-"} {
		g.Expect(msg).To(ContainSubstring(held))
	}
	g.Expect(msg).NotTo(ContainSubstring("mixed-sts"), "the StatefulSet was restarted in the Overlap phase")
	g.Expect(msg).NotTo(ContainSubstring("mixed-ds"), "the DaemonSet was restarted in the Overlap phase")
	overlap, _ := readBundle(t)
	g.Consistently(func(g Gomega) {
		s, _ := readBundle(t)
		g.Expect(s.Data["issuer.crt"]).To(Equal(overlap.Data["issuer.crt"]), "the new issuer is not published")
	}).WithTimeout(3 * time.Second).WithPolling(200 * time.Millisecond).Should(Succeed())

	redeployByOwners(t, left)
	obj = getRotation(t, key)
	obj.Spec.Applications.Selector, obj.Spec.Applications.EvictUnmanagedPods = nil, true
	updateRotation(t, obj)
	done := waitRotationCompleted(t, key, "new-key")
	o.stop()
	g.Expect(publishedPhases(done)).To(Equal([]rotatorv1.RotationPhase{rotatorv1.PhaseOverlap, rotatorv1.PhaseSwitch, rotatorv1.PhasePrune}))
	g.Expect(eventsFor(t, key)).To(HaveKey(rotatorv1.UnmanagedPodsEvictedReason))
	g.Expect(done.Status.Convergence.Converged).To(Equal(done.Status.Convergence.Pods))
	moments, mixed, failures := o.report()
	t.Logf("oracle: %d moments observed, %d with pods on different issuers", moments, mixed)
	g.Expect(failures).To(BeEmpty())
	for _, prefix := range []string{"apps-a/bare-dapr-pod", ownersNamespace + "/mixed-job-", ownersNamespace + "/mixed-rs-", ownersNamespace + "/mixed-sts-0", ownersNamespace + "/mixed-ds-"} {
		g.Expect(o.checked(prefix)).To(BeTrue(), "the oracle checked %s*", prefix)
	}
}

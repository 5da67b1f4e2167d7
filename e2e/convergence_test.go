package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/e2e/fixture"
	"github.com/mtls-rotator/mtls-rotator/internal/convergence"
	"github.com/mtls-rotator/mtls-rotator/internal/pki"
)

// liveSidecarPods counts the pods the injector patched that run, as the
// cluster holds them: terminating ones too, until they exit.
func liveSidecarPods(t *testing.T, g Gomega) int32 {
	pods := &corev1.PodList{}
	g.Expect(k8sClient.List(t.Context(), pods, client.MatchingLabels{fixture.InjectedLabel: "true"})).To(Succeed())
	var n int32
	for _, p := range pods.Items {
		if p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
			n++
		}
	}
	return n
}

// convergenceOf asks for a reconciliation and returns the convergence it
// observed.
func convergenceOf(t *testing.T, g Gomega, key types.NamespacedName, token string) *rotatorv1.ConvergenceStatus {
	requestReconcile(t, key, token)
	c := getRotation(t, key).Status.Convergence
	g.Expect(c).NotTo(BeNil())
	return c
}

// createBareDaprPod makes a Dapr pod no controller owns, so no rotation
// restarts it: the injector gives it the anchors of now. It is deleted at
// the end of the test.
func createBareDaprPod(t *testing.T) *corev1.Pod {
	t.Helper()
	g, ctx := NewWithT(t), t.Context()
	bare := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "bare-dapr-pod", Namespace: "apps-a",
			Annotations: map[string]string{fixture.EnabledAnnotation: "true", fixture.AppIDAnnotation: "bare"}},
		Spec: corev1.PodSpec{TerminationGracePeriodSeconds: ptr.To[int64](1),
			Containers: []corev1.Container{{Name: "app", Image: "fixture.invalid/bare:1"}}},
	}
	g.Expect(k8sClient.Create(ctx, bare)).To(Succeed())
	t.Cleanup(func() {
		_ = k8sClient.Delete(context.Background(), bare)
		NewWithT(t).Eventually(func() bool {
			return apierrors.IsNotFound(k8sClient.Get(context.Background(), client.ObjectKeyFromObject(bare), &corev1.Pod{}))
		}).WithTimeout(30*time.Second).Should(BeTrue(), "the bare pod leaves before the next test")
	})
	g.Eventually(func(g Gomega) {
		g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(bare), bare)).To(Succeed())
		g.Expect(bare.Labels).To(HaveKeyWithValue(fixture.InjectedLabel, "true"))
		g.Expect(bare.Status.Phase).To(Equal(corev1.PodRunning))
	}).WithTimeout(30 * time.Second).Should(Succeed())
	return bare
}

// TestConvergenceIsObservedFromThePodsThatRun: status.convergence counts the
// Dapr sidecar pods that actually run, read from the anchors each was given,
// against the newest root published. A bare Dapr pod, which no rotation
// restarts, keeps the old root and is named, with its reason and when it
// loses every peer (cutOff); with evictUnmanagedPods the next same-key
// rotation evicts it, and it goes away from the report with the pod.
func TestConvergenceIsObservedFromThePodsThatRun(t *testing.T) {
	g := NewWithT(t)
	ctx := t.Context()
	freshBundle(t)
	startOperator(t)
	key := newRotation(t, "dapr", rotatorv1.MTLSRootRotationSpec{Trigger: "first", Applications: rotatorv1.ApplicationsSpec{MaxConcurrent: 3}})
	first := waitRotationCompleted(t, key, "first")
	root1 := first.Status.Root.SHA256Fingerprint

	n := 0
	g.Eventually(func(g Gomega) {
		n++
		c := convergenceOf(t, g, key, fmt.Sprintf("first-%d", n))
		live := liveSidecarPods(t, g)
		g.Expect(live).To(BeNumerically(">", 0))
		g.Expect(c.Pods).To(Equal(live), "every live Dapr pod is counted")
		g.Expect(c.Converged).To(Equal(c.Pods))
		g.Expect(c.Root).To(Equal(convergence.Short(root1)))
		g.Expect(c.TrustSets).To(Equal([]rotatorv1.TrustSetStatus{{Roots: []string{convergence.Short(root1)}, Pods: c.Pods}}))
		g.Expect(c.NotConverged).To(BeEmpty())
	}).WithTimeout(time.Minute).WithPolling(time.Second).Should(Succeed())

	bare := createBareDaprPod(t)

	// A same-key rotation renews the root certificate: every pod its
	// restarts reach converges, the bare pod does not.
	obj := getRotation(t, key)
	obj.Spec.Trigger = "second"
	updateRotation(t, obj)
	second := waitRotationCompleted(t, key, "second")
	root2 := second.Status.Root.SHA256Fingerprint
	g.Expect(root2).NotTo(Equal(root1))
	g.Eventually(func(g Gomega) {
		n++
		c := convergenceOf(t, g, key, fmt.Sprintf("second-%d", n))
		g.Expect(c.Root).To(Equal(convergence.Short(root2)))
		g.Expect(c.Pods).To(Equal(liveSidecarPods(t, g)))
		g.Expect(c.Converged).To(Equal(c.Pods - 1))
		g.Expect(c.NotConverged).To(HaveLen(1))
		bareStatus := c.NotConverged[0]
		g.Expect(bareStatus.Namespace+"/"+bareStatus.Name).To(Equal("apps-a/bare-dapr-pod"), "the pod no rotation restarts is named")
		g.Expect(bareStatus.Roots).To(Equal([]string{convergence.Short(root1)}), "with the root it holds")
		g.Expect(bareStatus.Reason).To(HavePrefix("it holds the previous certificate of the same root key ("+convergence.Short(root1)+"), which keeps verifying the new issuer's certificates until"),
			"and that it keeps working until that certificate expires")
		g.Expect(c.CutOff).NotTo(BeNil(), "it loses every peer before the published root expires")
		g.Expect(c.CutOff.At.Time).To(BeTemporally("==", first.Status.Root.NotAfter.Time), "when the root certificate it holds expires")
		g.Expect(c.CutOff.Pods).To(Equal(int32(1)))
		g.Expect(c.CutOff.First).To(Equal([]string{"apps-a/bare-dapr-pod"}))
	}).WithTimeout(time.Minute).WithPolling(time.Second).Should(Succeed())

	// mtls-rotator inspect says the same from outside the operator, and
	// exits 3 while a pod does not trust the root.
	code, out, errOut := mtlsRotator("inspect", "--kubeconfig", testCluster.Kubeconfig)
	g.Expect(code).To(Equal(3), errOut)
	g.Expect(out).To(MatchRegexp(`apps-a\s+bare-dapr-pod\s+none \(a bare pod\)\s+no\s+` + convergence.Short(root1)))
	code, out, errOut = mtlsRotator("inspect", "-o", "json", "--kubeconfig", testCluster.Kubeconfig)
	g.Expect(code).To(Equal(3), errOut)
	var report struct {
		Root         string `json:"root"`
		Pods         int32  `json:"pods"`
		Converged    int32  `json:"converged"`
		NotConverged []struct {
			Name        string `json:"name"`
			Restartable bool   `json:"restartable"`
		} `json:"notConverged"`
	}
	g.Expect(json.Unmarshal([]byte(out), &report)).To(Succeed())
	g.Expect(report.Root).To(Equal(root2))
	g.Expect(report.Converged).To(Equal(report.Pods - 1))
	g.Expect(report.NotConverged).To(HaveLen(1))
	g.Expect(report.NotConverged[0].Name).To(Equal("bare-dapr-pod"))
	g.Expect(report.NotConverged[0].Restartable).To(BeFalse())

	// Asked to, the next same-key rotation evicts it once its applications
	// are restarted.
	obj = getRotation(t, key)
	obj.Spec.Trigger, obj.Spec.Applications.EvictUnmanagedPods = "third", true
	updateRotation(t, obj)
	waitRotationCompleted(t, key, "third")
	g.Eventually(func() bool {
		return apierrors.IsNotFound(k8sClient.Get(ctx, client.ObjectKeyFromObject(bare), &corev1.Pod{}))
	}).
		WithTimeout(30*time.Second).Should(BeTrue(), "the bare pod is evicted")
	g.Expect(eventsFor(t, key)[rotatorv1.UnmanagedPodsEvictedReason]).NotTo(BeEmpty())
	g.Eventually(func(g Gomega) {
		n++
		c := convergenceOf(t, g, key, fmt.Sprintf("gone-%d", n))
		g.Expect(c.Converged).To(Equal(c.Pods))
		g.Expect(c.NotConverged).To(BeEmpty())
		g.Expect(c.CutOff).To(BeNil())
	}).WithTimeout(time.Minute).WithPolling(time.Second).Should(Succeed())
	code, out, errOut = mtlsRotator("inspect", "--kubeconfig", testCluster.Kubeconfig)
	g.Expect(code).To(Equal(0), errOut)
	g.Expect(out).To(MatchRegexp(`control plane dapr-system: (\d+) of (\d+) Dapr pods trust root`))
	g.Expect(out).NotTo(ContainSubstring("bare-dapr-pod"))
}

// rotateOverABareDaprPod starts a new-key rotation (trigger "new-key") over a
// Sentry-made bundle the whole mesh was restarted onto, next to a bare Dapr
// pod that no phase restarts.
func rotateOverABareDaprPod(t *testing.T, name string, apps rotatorv1.ApplicationsSpec) (types.NamespacedName, *corev1.Pod) {
	t.Helper()
	freshBundle(t)
	installSentryBundle(t)
	restartMesh(t, fmt.Sprint(time.Now().UnixNano()))
	bare := createBareDaprPod(t)
	startOperator(t)
	key := newRotation(t, name, rotatorv1.MTLSRootRotationSpec{
		Trigger: "new-key", Root: rotatorv1.RootSpec{KeyPolicy: rotatorv1.KeyPolicyRotate}, Applications: apps,
	})
	return key, bare
}

// TestPodsRunningWhenTheOperatorStartsAreObserved: the pods that run when
// the operator starts reach its cache with the initial list, which the API
// server streams (client-go's WatchList then transforms each twice): every
// one is still observed with the roots it trusts.
func TestPodsRunningWhenTheOperatorStartsAreObserved(t *testing.T) {
	g := NewWithT(t)
	freshBundle(t)
	first := startOperator(t)
	key := newRotation(t, "dapr", rotatorv1.MTLSRootRotationSpec{Trigger: "first", Applications: rotatorv1.ApplicationsSpec{MaxConcurrent: 3}})
	waitRotationCompleted(t, key, "first")
	first.stop()

	startOperator(t)
	n := 0
	g.Eventually(func(g Gomega) {
		n++
		c := convergenceOf(t, g, key, fmt.Sprintf("after-restart-%d", n))
		g.Expect(c.Pods).To(Equal(liveSidecarPods(t, g)))
		g.Expect(c.Converged).To(Equal(c.Pods), "not converged: %+v", c.NotConverged)
	}).WithTimeout(time.Minute).WithPolling(time.Second).Should(Succeed())
}

// TestSwitchWaitsForEveryPodThatRuns: a new-key rotation publishes the new
// issuer only once every Dapr pod that runs trusts the new root. A bare pod,
// which no phase restarts, holds the Switch (Stalled PodsNotConverged, naming
// it) with the Overlap bundle in place; deleting it lets the rotation finish
// by itself.
func TestSwitchWaitsForEveryPodThatRuns(t *testing.T) {
	g := NewWithT(t)
	key, bare := rotateOverABareDaprPod(t, "gated", rotatorv1.ApplicationsSpec{MaxConcurrent: 3})

	obj := waitStalled(t, key, rotatorv1.PodsNotConvergedReason)
	g.Expect(obj.Status.Rotation.Phase).To(Equal(rotatorv1.PhaseSwitch))
	g.Expect(obj.Status.Rotation.Step).To(Equal(rotatorv1.StepPublishing))
	g.Expect(conditions.GetMessage(obj, meta.StalledCondition)).To(ContainSubstring("apps-a/bare-dapr-pod (no owner: it does not trust root"))
	overlap, _ := readBundle(t)
	anchors, err := pki.ParseCertificates(overlap.Data["ca.crt"])
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(anchors).To(HaveLen(2), "the Overlap bundle stays")
	g.Consistently(func(g Gomega) {
		s, _ := readBundle(t)
		g.Expect(s.Data["issuer.crt"]).To(Equal(overlap.Data["issuer.crt"]), "the new issuer is not published")
	}).WithTimeout(3 * time.Second).WithPolling(200 * time.Millisecond).Should(Succeed())

	g.Expect(k8sClient.Delete(t.Context(), bare)).To(Succeed())
	done := waitRotationCompleted(t, key, "new-key")
	g.Expect(publishedPhases(done)).To(Equal([]rotatorv1.RotationPhase{rotatorv1.PhaseOverlap, rotatorv1.PhaseSwitch, rotatorv1.PhasePrune}))
	g.Expect(eventsFor(t, key)).To(HaveKey("PodsConverged"))
	g.Expect(done.Status.Convergence.Converged).To(Equal(done.Status.Convergence.Pods))
}

// TestApplicationsRedeployedByTheirOwnersAreNotRestartedAgain: a rotation
// restarts only the applications whose pods lack what the phase needs. Two
// applications their owners redeploy after the publish (while the rotation
// waits on the control plane) already hold the published anchors: they are
// skipped, and counted, and every other one is restarted once.
func TestApplicationsRedeployedByTheirOwnersAreNotRestartedAgain(t *testing.T) {
	g := NewWithT(t)
	freshBundle(t)
	startOperator(t)
	key := newRotation(t, "targeted", rotatorv1.MTLSRootRotationSpec{Trigger: "first", Applications: rotatorv1.ApplicationsSpec{MaxConcurrent: 3}})
	waitRotationCompleted(t, key, "first")

	// The next rotation publishes, then waits on the control plane.
	holdUnready(t, fixture.ControlPlaneNamespace, fixture.Operator)
	obj := getRotation(t, key)
	obj.Spec.Trigger = "second"
	updateRotation(t, obj)
	g.Eventually(func(g Gomega) {
		r := getRotation(t, key).Status.Rotation
		g.Expect(r.Trigger).To(Equal("second"))
		g.Expect(r.WaitingFor).To(Equal("Deployment dapr-system/" + fixture.Operator))
	}).WithTimeout(2 * time.Minute).WithPolling(200 * time.Millisecond).Should(Succeed())

	// Meanwhile their owners redeploy two applications, as kubectl rollout restart does.
	owned := daprApps()[:2]
	redeployByOwners(t, owned...)
	recoverWorkload(t, fixture.ControlPlaneNamespace, fixture.Operator)

	done := waitRotationCompleted(t, key, "second")
	restarted := restartedApps(t, done.Status.LastCompletedRotation.ID)
	g.Expect(restarted).To(HaveLen(len(daprApps())-len(owned)), "every other application is restarted")
	for _, app := range owned {
		g.Expect(restarted).NotTo(ContainElement(app.Name), "%s was redeployed by its owner after the publish", app.Name)
	}
	g.Expect(done.Status.Applications.Skipped).To(Equal(int32(len(owned))))
	g.Expect(done.Status.Applications.Progress).To(Equal(fmt.Sprintf("%d/%d", len(daprApps()), len(daprApps()))))
	restartEvents := eventsFor(t, key)["ApplicationsRestarted"]
	g.Expect(restartEvents[len(restartEvents)-1].Message).To(ContainSubstring(fmt.Sprintf("%d more were not restarted", len(owned))))
}

// TestUnmanagedPodsAreEvictedWhenAskedTo: with
// applications.evictUnmanagedPods, the bare Dapr pod holding the Switch gate
// is evicted through the eviction API, announced, and the rotation finishes
// without stalling.
func TestUnmanagedPodsAreEvictedWhenAskedTo(t *testing.T) {
	g := NewWithT(t)
	key, bare := rotateOverABareDaprPod(t, "evicting", rotatorv1.ApplicationsSpec{MaxConcurrent: 3, EvictUnmanagedPods: true})
	done := waitRotationCompleted(t, key, "new-key")
	g.Expect(publishedPhases(done)).To(Equal([]rotatorv1.RotationPhase{rotatorv1.PhaseOverlap, rotatorv1.PhaseSwitch, rotatorv1.PhasePrune}))
	g.Expect(apierrors.IsNotFound(k8sClient.Get(t.Context(), client.ObjectKeyFromObject(bare), &corev1.Pod{}))).To(BeTrue(), "the bare pod was evicted")
	events := eventsFor(t, key)
	g.Expect(events).To(HaveKey(rotatorv1.UnmanagedPodsEvictedReason))
	g.Expect(events[rotatorv1.UnmanagedPodsEvictedReason][0].Message).To(ContainSubstring("apps-a/bare-dapr-pod"))
	g.Expect(events).NotTo(HaveKey(rotatorv1.PodsNotConvergedReason), "it never stalled")
}

// TestEvictionNeedsItsGrant: pods/eviction is an opt-in of the install
// (config/eviction, the chart's eviction.enabled). Without it, a rotation
// asked to evict the bare pod holding its Switch gate stops with Stalled
// EvictionNotGranted, saying how to grant it, and evicts nothing; granted,
// it goes on by itself.
func TestEvictionNeedsItsGrant(t *testing.T) {
	g := NewWithT(t)
	operatorConfig(t) // the grant exists
	grant := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "mtls-rotator-evictor"}}
	g.Expect(k8sClient.Get(t.Context(), client.ObjectKeyFromObject(grant), grant)).To(Succeed())
	g.Expect(k8sClient.Delete(t.Context(), grant)).To(Succeed())
	restore := func() {
		grant.ResourceVersion = ""
		if err := k8sClient.Create(context.Background(), grant); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Errorf("restoring the eviction grant: %v", err)
		}
	}
	t.Cleanup(restore)

	key, bare := rotateOverABareDaprPod(t, "not-granted", rotatorv1.ApplicationsSpec{MaxConcurrent: 3, EvictUnmanagedPods: true})
	stalled := waitStalled(t, key, rotatorv1.EvictionNotGrantedReason)
	g.Expect(stalled.Status.Rotation.Phase).To(Equal(rotatorv1.PhaseSwitch))
	g.Expect(conditions.GetMessage(stalled, meta.StalledCondition)).To(ContainSubstring("config/eviction or the chart's eviction.enabled"))
	g.Expect(k8sClient.Get(t.Context(), client.ObjectKeyFromObject(bare), &corev1.Pod{})).To(Succeed(), "nothing evicted")

	restore()
	waitRotationCompleted(t, key, "new-key")
	g.Expect(apierrors.IsNotFound(k8sClient.Get(t.Context(), client.ObjectKeyFromObject(bare), &corev1.Pod{}))).To(BeTrue(), "evicted once granted")
}

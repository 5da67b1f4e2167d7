package e2e

import (
	"context"
	"fmt"
	"maps"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"github.com/fluxcd/pkg/runtime/conditions"
	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/e2e/fixture"
	"github.com/mtls-rotator/mtls-rotator/internal/restart"
	"github.com/mtls-rotator/mtls-rotator/internal/rotation"
)

// refuseNewSecrets makes the API server refuse every new Secret in
// namespace until the returned function (also run at cleanup) lifts it:
// cert-manager then cannot store a new key, and the rotation that asked for
// one waits at Issuing.
func refuseNewSecrets(t *testing.T, namespace string) (lift func()) {
	t.Helper()
	quota := &corev1.ResourceQuota{
		ObjectMeta: metav1.ObjectMeta{Name: "no-new-secrets", Namespace: namespace},
		Spec:       corev1.ResourceQuotaSpec{Hard: corev1.ResourceList{"count/secrets": resource.MustParse("0")}},
	}
	NewWithT(t).Expect(k8sClient.Create(t.Context(), quota)).To(Succeed())
	lift = func() {
		if err := k8sClient.Delete(context.Background(), quota); err != nil && !apierrors.IsNotFound(err) {
			t.Error(err)
		}
	}
	t.Cleanup(lift)
	return lift
}

// TestRevertedRotateRotationLeavesTheKeyAsItWas: after a Reuse rotation, a
// commit sets keyPolicy Rotate with a new trigger, and is reverted before
// anything is published. The object settles on the key it had: its root
// Certificate and CA Issuer point at it again, no other key is issued, and
// the next Reuse rotation keeps the same key.
func TestRevertedRotateRotationLeavesTheKeyAsItWas(t *testing.T) {
	g := NewWithT(t)
	freshBundle(t)
	startOperator(t)
	key := newRotation(t, "revert", rotatorv1.MTLSRootRotationSpec{Trigger: "a"})
	first := waitRotationCompleted(t, key, "a")

	lift := refuseNewSecrets(t, key.Namespace)
	obj := getRotation(t, key)
	obj.Spec.Trigger, obj.Spec.Root.KeyPolicy = "b", rotatorv1.KeyPolicyRotate
	updateRotation(t, obj)
	g.Eventually(func(g Gomega) {
		now := getRotation(t, key)
		g.Expect(now.Status.Rotation.Trigger).To(Equal("b"))
		g.Expect(now.Status.Rotation.Step).To(Equal(rotatorv1.StepIssuing))
		g.Expect(now.Status.RootKeyGeneration).To(Equal(int32(2)))
		g.Expect(certificateSecret(t, key.Namespace, "revert-root")).To(Equal("revert-root-g2"))
	}).WithTimeout(30 * time.Second).Should(Succeed())

	obj = getRotation(t, key)
	obj.Spec.Trigger, obj.Spec.Root.KeyPolicy = "a", rotatorv1.KeyPolicyReuse
	updateRotation(t, obj)
	g.Eventually(func(g Gomega) {
		now := getRotation(t, key)
		g.Expect(now.Status.ObservedGeneration).To(Equal(now.Generation))
		g.Expect(conditions.IsReady(now)).To(BeTrue())
		g.Expect(now.Status.RootKeyGeneration).To(Equal(max(first.Status.RootKeyGeneration, 1)))
	}).WithTimeout(30 * time.Second).Should(Succeed())
	g.Expect(certificateSecret(t, key.Namespace, "revert-root")).To(Equal("revert-root"))
	ca := &cmapi.Issuer{}
	g.Expect(k8sClient.Get(t.Context(), types.NamespacedName{Namespace: key.Namespace, Name: "revert-root-ca"}, ca)).To(Succeed())
	g.Expect(ca.Spec.CA.SecretName).To(Equal("revert-root"))

	lift()
	g.Consistently(func() bool {
		return apierrors.IsNotFound(k8sClient.Get(t.Context(), types.NamespacedName{Namespace: key.Namespace, Name: "revert-root-g2"}, &corev1.Secret{}))
	}).WithTimeout(5*time.Second).WithPolling(250*time.Millisecond).Should(BeTrue(), "no key is issued for the reverted rotation")

	obj = getRotation(t, key)
	obj.Spec.Trigger = "c"
	updateRotation(t, obj)
	third := waitRotationCompleted(t, key, "c")
	g.Expect(third.Status.Root.PublicKeySHA256).To(Equal(first.Status.Root.PublicKeySHA256), "the same root key")
}

// certificateSecret is the Secret a cert-manager Certificate issues into.
func certificateSecret(t *testing.T, namespace, name string) string {
	t.Helper()
	crt := &cmapi.Certificate{}
	if err := k8sClient.Get(t.Context(), types.NamespacedName{Namespace: namespace, Name: name}, crt); err != nil {
		t.Fatal(err)
	}
	return crt.Spec.SecretName
}

// rotationAtHeldInjector starts a rotation of name over a fresh install with
// the sidecar injector's new pods held unready, and returns it once it
// published and waits for the injector.
func rotationAtHeldInjector(t *testing.T, name string) (types.NamespacedName, *rotatorv1.RotationStatus) {
	t.Helper()
	freshBundle(t)
	holdUnready(t, fixture.ControlPlaneNamespace, fixture.SidecarInjector)
	startOperator(t)
	key := newRotation(t, name, rotatorv1.MTLSRootRotationSpec{Trigger: "a"})
	return key, waitForHeldInjector(t, key)
}

// waitForHeldInjector waits until the rotation of key, published, waits for
// the sidecar injector to roll out (the test holds it), and returns it.
func waitForHeldInjector(t *testing.T, key types.NamespacedName) *rotatorv1.RotationStatus {
	t.Helper()
	var r *rotatorv1.RotationStatus
	NewWithT(t).Eventually(func(g Gomega) {
		r = getRotation(t, key).Status.Rotation
		g.Expect(r).NotTo(BeNil())
		g.Expect(r.Step).To(Equal(rotatorv1.StepRestartingControlPlane))
		g.Expect(r.WaitingFor).To(ContainSubstring(fixture.SidecarInjector))
	}).WithTimeout(time.Minute).Should(Succeed())
	return r
}

// TestRestartsGoOnlyOntoThePublishedBundle: mid-rotation, while the sidecar
// injector's rollout is held, someone changes the ConfigMap and the Secret.
// No further control-plane workload restarts onto a Secret other than the
// one published (TrustBundleDrift) until it holds it again; the ConfigMap is
// then written again before the next restart, and the rotation completes
// with Secret and ConfigMap alike.
func TestRestartsGoOnlyOntoThePublishedBundle(t *testing.T) {
	g := NewWithT(t)
	key, held := rotationAtHeldInjector(t, "guard")
	id := rotation.RestartID(held)

	s, cm := readBundle(t)
	published := maps.Clone(s.Data)
	cm.Data["ca.crt"] = "changed by hand"
	g.Expect(k8sClient.Update(t.Context(), cm)).To(Succeed())
	s.Data["issuer.key"] = []byte("changed by hand")
	g.Expect(k8sClient.Update(t.Context(), s)).To(Succeed())
	recoverWorkload(t, fixture.ControlPlaneNamespace, fixture.SidecarInjector)

	stalled := waitStalled(t, key, rotatorv1.TrustBundleDriftReason)
	g.Expect(conditions.GetMessage(stalled, "Stalled")).To(ContainSubstring("is not restarted onto it"))
	operator := fixture.Workload{Kind: "Deployment", Name: fixture.Operator}
	g.Consistently(func(g Gomega) {
		annotations, _, err := readControlPlane(t.Context(), operator)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(restart.RestartedFor(annotations, id)).To(BeFalse())
	}).WithTimeout(3*time.Second).WithPolling(250*time.Millisecond).Should(Succeed(), "nothing restarts onto a changed Secret")

	s, _ = readBundle(t)
	s.Data = published
	g.Expect(k8sClient.Update(t.Context(), s)).To(Succeed())
	done := waitRotationCompleted(t, key, "a")
	g.Expect(done.Status.Applications.Restarted).To(Equal(done.Status.Applications.Total))
	s, cm = readBundle(t)
	g.Expect(cm.Data["ca.crt"]).To(Equal(string(s.Data["ca.crt"])), "the ConfigMap was written again")
	g.Expect(eventsFor(t, key)["ConfigMapRepaired"]).To(HaveLen(1))
}

// TestOperatorMayOnlyRestartWorkloads: under the admission policy of
// config/admission (installed with the operator's RBAC for the whole suite),
// the operator's ServiceAccount restarts a Dapr workload (an application,
// or a part of Dapr's control plane) the way a rotation does; a workload that
// is not Dapr's it may not restart, and every other change it attempts to a
// workload is refused, whatever its namespace.
func TestOperatorMayOnlyRestartWorkloads(t *testing.T) {
	g := NewWithT(t)
	c, err := client.New(operatorConfig(t), client.Options{Scheme: k8sClient.Scheme()})
	g.Expect(err).NotTo(HaveOccurred())
	ns := createNamespace(t, "policy")
	// Workloads that run no pod (no Dapr pod without anchors for other
	// tests to find): no replicas, and a DaemonSet on no node.
	template := fixture.DaprPodTemplate("policy")
	template.Annotations["example.com/keep"] = "yes"
	template.Spec.NodeSelector = map[string]string{"example.com/no-node": "true"}
	selector := &metav1.LabelSelector{MatchLabels: template.Labels}
	deployment := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "app"},
		Spec: appsv1.DeploymentSpec{Replicas: ptr.To[int32](0), Template: template, Selector: selector}}
	statefulSet := &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "db"},
		Spec: appsv1.StatefulSetSpec{Replicas: ptr.To[int32](0), Template: template, Selector: selector}}
	daemonSet := &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "agent"},
		Spec: appsv1.DaemonSetSpec{Template: template, Selector: selector}}
	// Not Dapr's: no Dapr in its pod template, not part of Dapr's control
	// plane; and one that is, as Dapr's chart labels it.
	plain := fixture.DaprPodTemplate("plain")
	plain.Annotations = nil
	foreign := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "foreign"},
		Spec: appsv1.DeploymentSpec{Replicas: ptr.To[int32](0), Template: plain, Selector: &metav1.LabelSelector{MatchLabels: plain.Labels}}}
	controlPlane := foreign.DeepCopy()
	controlPlane.Name, controlPlane.Labels = "dapr-part", map[string]string{"app.kubernetes.io/part-of": "dapr"}
	for _, o := range []client.Object{deployment, statefulSet, daemonSet, foreign, controlPlane} {
		g.Expect(k8sClient.Create(t.Context(), o)).To(Succeed())
	}
	patch := func(obj client.Object, p string) error {
		return c.Patch(t.Context(), obj, client.RawPatch(types.MergePatchType, []byte(p)))
	}
	// The API server loads a new policy within a moment: each probe is a
	// change (a no-op patch passes any policy).
	probe := 0
	g.Eventually(func() error {
		probe++
		return patch(deployment, fmt.Sprintf(`{"metadata":{"labels":{"probe":"%d"}}}`, probe))
	}).WithTimeout(10 * time.Second).WithPolling(200 * time.Millisecond).Should(MatchError(ContainSubstring("mtls-rotator-restarts-only")))

	g.Expect(patch(deployment, string(restart.Patch("r-policy", time.Now())))).To(Succeed(), "a restart, as a rotation makes it")
	g.Expect(patch(statefulSet, string(restart.Patch("r-policy", time.Now())))).To(Succeed())
	g.Expect(patch(daemonSet, string(restart.Patch("r-policy", time.Now())))).To(Succeed(), "the API server's own template-generation annotation is no change of the operator's")
	g.Expect(patch(controlPlane, string(restart.Patch("r-policy", time.Now())))).To(Succeed(), "a workload of Dapr's control plane")
	g.Expect(patch(foreign, string(restart.Patch("r-policy", time.Now())))).To(MatchError(ContainSubstring("may restart only Dapr applications")),
		"a workload that is not Dapr's is not the operator's to restart")
	refused := []struct {
		name  string
		obj   client.Object
		patch string
	}{
		{"another container image", deployment, `{"spec":{"template":{"spec":{"containers":[{"name":"app","image":"evil:latest"}]}}}}`},
		{"a service account", deployment, `{"spec":{"template":{"spec":{"serviceAccountName":"admin"}}}}`},
		{"a pod template label", deployment, `{"spec":{"template":{"metadata":{"labels":{"extra":"x"}}}}}`},
		{"another pod template annotation", deployment, `{"spec":{"template":{"metadata":{"annotations":{"dapr.io/enabled":"false"}}}}}`},
		{"a pod template annotation removed", deployment, `{"spec":{"template":{"metadata":{"annotations":{"example.com/keep":null}}}}}`},
		{"replicas", deployment, `{"spec":{"replicas":7}}`},
		{"the update strategy", deployment, `{"spec":{"strategy":{"rollingUpdate":{"maxUnavailable":"100%"}}}}`},
		{"a workload annotation", deployment, `{"metadata":{"annotations":{"extra":"x"}}}`},
		{"a finalizer", deployment, `{"metadata":{"finalizers":["example.com/hold"]}}`},
		{"a StatefulSet's volumes", statefulSet, `{"spec":{"template":{"spec":{"volumes":[{"name":"x","emptyDir":{}}]}}}}`},
		{"a StatefulSet's replicas", statefulSet, `{"spec":{"replicas":3}}`},
		{"a DaemonSet's host network", daemonSet, `{"spec":{"template":{"spec":{"hostNetwork":true}}}}`},
	}
	for _, tt := range refused {
		err := patch(tt.obj, tt.patch)
		g.Expect(err).To(HaveOccurred(), tt.name)
		g.Expect(err.Error()).To(ContainSubstring("mtls-rotator-restarts-only"), tt.name)
		g.Expect(err.Error()).To(ContainSubstring("the mtls-rotator operator may"), tt.name)
	}
	got := &appsv1.Deployment{}
	g.Expect(k8sClient.Get(t.Context(), client.ObjectKeyFromObject(deployment), got)).To(Succeed())
	g.Expect(got.Spec.Template.Annotations).To(HaveKeyWithValue(restart.Annotation, "r-policy"))
	g.Expect(got.Spec.Template.Spec.Containers[0].Image).NotTo(Equal("evil:latest"))
	g.Expect(*got.Spec.Replicas).To(BeZero())
}

// TestDeletionMidRotationKeepsTheBackup: an object deleted while its rotation
// is under way (published, restarting the control plane) leaves the backup
// of the bundle it replaced, which a restore by hand needs: the backup has no
// owner then. A settled object owns its backup, so deleting it removes the
// backup (the garbage collector's latency here is measured and logged).
func TestDeletionMidRotationKeepsTheBackup(t *testing.T) {
	g := NewWithT(t)
	key, _ := rotationAtHeldInjector(t, "deleted")
	backupKey := types.NamespacedName{Namespace: key.Namespace, Name: "deleted-backup"}
	backup := &corev1.Secret{}
	g.Expect(k8sClient.Get(t.Context(), backupKey, backup)).To(Succeed())
	g.Expect(backup.OwnerReferences).To(BeEmpty(), "owned by nothing while the rotation runs")
	t.Cleanup(func() { _ = k8sClient.Delete(context.Background(), backup) })

	g.Expect(k8sClient.Delete(t.Context(), &rotatorv1.MTLSRootRotation{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name}})).To(Succeed())
	g.Consistently(func() error { return k8sClient.Get(t.Context(), backupKey, &corev1.Secret{}) }).
		WithTimeout(5*time.Second).WithPolling(250*time.Millisecond).Should(Succeed(), "the garbage collector leaves the backup")

	// Settled, the next object owns its backup: deleting it removes it.
	recoverWorkload(t, fixture.ControlPlaneNamespace, fixture.SidecarInjector)
	g.Expect(k8sClient.Delete(t.Context(), backup)).To(Succeed())
	freshBundle(t) // the deleted object's half-rotated bundle is not ours to renew
	key = newRotation(t, "settled", rotatorv1.MTLSRootRotationSpec{Trigger: "a"})
	done := waitRotationCompleted(t, key, "a")
	settledBackup := types.NamespacedName{Namespace: key.Namespace, Name: "settled-backup"}
	g.Eventually(func(g Gomega) {
		s := &corev1.Secret{}
		g.Expect(k8sClient.Get(t.Context(), settledBackup, s)).To(Succeed())
		g.Expect(metav1.IsControlledBy(s, done)).To(BeTrue())
	}).WithTimeout(30 * time.Second).Should(Succeed())
	g.Expect(k8sClient.Delete(t.Context(), done)).To(Succeed())
	deleted := time.Now()
	g.Eventually(func() bool { return apierrors.IsNotFound(k8sClient.Get(t.Context(), settledBackup, &corev1.Secret{})) }).
		WithTimeout(30*time.Second).Should(BeTrue(), "the garbage collector removes a settled object's backup")
	t.Logf("the garbage collector removed the backup %s after its owner was deleted", time.Since(deleted).Round(100*time.Millisecond))
}

package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	. "github.com/onsi/gomega"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/e2e/fixture"
)

// canaryApp is the fixture application a canary status names.
func canaryApp(t *testing.T, c *rotatorv1.CanaryStatus) fixture.App {
	t.Helper()
	NewWithT(t).Expect(c).NotTo(BeNil(), "no canary recorded")
	for _, app := range daprApps() {
		if c.Workload == "Deployment "+app.Namespace+"/"+app.Name {
			return app
		}
	}
	t.Fatalf("canary %s is no Dapr application of the fixture", c.Workload)
	return fixture.App{}
}

// TestStaleInjectorStopsAtTheCanary: the first application a phase restarts
// goes alone; when its new pods got other anchors than the published ones
// (an injector still serving the old ones, as reported in dapr/dapr#7161),
// the rotation stops (Stalled InjectorStale, naming the pod) with no other
// application restarted. Once the injector is mended and the canary's pods
// recreated, it goes on by itself.
func TestStaleInjectorStopsAtTheCanary(t *testing.T) {
	g, ctx := NewWithT(t), t.Context()
	freshBundle(t)
	startOperator(t)
	key := newRotation(t, "canary-stale", rotatorv1.MTLSRootRotationSpec{Trigger: "first", Applications: rotatorv1.ApplicationsSpec{MaxConcurrent: 3}})
	waitRotationCompleted(t, key, "first")

	g.Expect(testInjector.ServeStale(ctx, true)).To(Succeed())
	t.Cleanup(func() { _ = testInjector.ServeStale(context.Background(), false) })
	obj := getRotation(t, key)
	obj.Spec.Trigger = "second"
	updateRotation(t, obj)
	stalled := waitStalled(t, key, rotatorv1.InjectorStaleReason)
	g.Expect(stalled.Status.Rotation.Step).To(Equal(rotatorv1.StepRestartingApplications))
	canary := canaryApp(t, stalled.Status.Rotation.Canary)
	g.Expect(stalled.Status.Rotation.Canary.VerifiedAt).To(BeNil())
	msg := conditions.GetMessage(stalled, meta.StalledCondition)
	g.Expect(msg).To(ContainSubstring("of Deployment %s/%s, restarted first, got trust anchors", canary.Namespace, canary.Name))
	g.Expect(msg).To(ContainSubstring("pod %s/%s-", canary.Namespace, canary.Name))
	id := stalled.Status.Rotation.ID
	g.Consistently(func() []string { return restartedApps(t, id) }).
		WithTimeout(3*time.Second).WithPolling(200*time.Millisecond).Should(Equal([]string{canary.Name}), "no other application restarts onto the old bundle")

	g.Expect(testInjector.ServeStale(ctx, false)).To(Succeed())
	redeployByOwners(t, canary)
	done := waitRotationCompleted(t, key, "second")
	g.Expect(restartedApps(t, done.Status.LastCompletedRotation.ID)).To(HaveLen(len(daprApps())))
	g.Expect(done.Status.Rotation.Canary.VerifiedAt).NotTo(BeNil())
	g.Expect(done.Status.Rotation.Canary.Pod).To(HavePrefix(canary.Namespace + "/" + canary.Name + "-"))
}

// TestRotationNeedsNoPlaceOnTheInjectorsAllowList: Dapr's injector patches
// only pods created by kube-system's controllers, its allowed
// ServiceAccounts or system:masters (isAuthorizedUser); a Dapr pod from
// anyone else is admitted bare, which is what a probe pod of the operator's
// own got on every real install. The fixture's injector does the same, and
// a rotation completes, its canary's pod (made by the ReplicaSet controller)
// holding the published anchors; the operator holds no pods create.
func TestRotationNeedsNoPlaceOnTheInjectorsAllowList(t *testing.T) {
	g, ctx := NewWithT(t), t.Context()
	app := daprApps()[0]
	// A user with pods create, on no allow-list.
	const user = "dapr-unlisted"
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: user, Namespace: app.Namespace},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"create"}}}}
	binding := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: user, Namespace: app.Namespace},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: user},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}}}
	for _, o := range []client.Object{role, binding} {
		g.Expect(k8sClient.Create(ctx, o)).To(Succeed())
		t.Cleanup(func() { _ = k8sClient.Delete(context.Background(), o) })
	}
	cfg := rest.CopyConfig(testCluster.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user}
	unlisted, err := client.New(cfg, client.Options{})
	g.Expect(err).NotTo(HaveOccurred())
	pod := func() *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "unlisted", Namespace: app.Namespace,
			Annotations: map[string]string{fixture.EnabledAnnotation: "true", fixture.AppIDAnnotation: "unlisted"}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "fixture.invalid/app"}}}}
	}
	bare := pod()
	g.Eventually(func() error { return unlisted.Create(ctx, bare, client.DryRunAll) }).WithTimeout(10 * time.Second).Should(Succeed())
	_, injected := fixture.TrustAnchors(bare)
	g.Expect(injected).To(BeFalse(), "a pod of an unlisted creator is admitted with no sidecar")
	patched := pod()
	g.Expect(k8sClient.Create(ctx, patched, client.DryRunAll)).To(Succeed())
	_, injected = fixture.TrustAnchors(patched)
	g.Expect(injected).To(BeTrue(), "system:masters is allowed")

	freshBundle(t)
	startOperator(t)
	key := newRotation(t, "canary", rotatorv1.MTLSRootRotationSpec{Trigger: "first", Applications: rotatorv1.ApplicationsSpec{MaxConcurrent: 3}})
	done := waitRotationCompleted(t, key, "first")
	assertRestartedOnce(t, done.Status.LastCompletedRotation.ID)
	c := done.Status.Rotation.Canary
	canary := canaryApp(t, c)
	g.Expect(c.VerifiedAt).NotTo(BeNil())
	ns, name, _ := strings.Cut(c.Pod, "/")
	verified := &corev1.Pod{}
	g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, verified)).To(Succeed())
	g.Expect(verified.Labels["app"]).To(Equal(canary.Name))
	anchors, _ := fixture.TrustAnchors(verified)
	cm := &corev1.ConfigMap{}
	g.Expect(k8sClient.Get(ctx, bundleKey, cm)).To(Succeed())
	g.Expect(anchors).To(Equal(cm.Data["ca.crt"]), "the canary's pod holds the published anchors")
	g.Expect(eventsFor(t, key)).To(HaveKey("InjectorVerified"))

	review := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
		User:               "system:serviceaccount:" + operatorNamespace + ":" + operatorServiceAccount,
		Groups:             []string{"system:serviceaccounts", "system:serviceaccounts:" + operatorNamespace, "system:authenticated"},
		ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: fixture.ControlPlaneNamespace, Verb: "create", Resource: "pods"},
	}}
	g.Expect(k8sClient.Create(ctx, review)).To(Succeed())
	g.Expect(review.Status.Allowed).To(BeFalse(), "the operator may create no pod: %s", review.Status.Reason)
}

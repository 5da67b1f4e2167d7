package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/controllers"
	"github.com/mtls-rotator/mtls-rotator/e2e/fixture"
)

// createInDaprNamespace creates s in the Dapr namespace as its admin would,
// removed at the end of the test.
func createInDaprNamespace(t *testing.T, s *corev1.Secret) *corev1.Secret {
	t.Helper()
	s.Namespace = fixture.ControlPlaneNamespace
	NewWithT(t).Expect(k8sClient.Create(t.Context(), s)).To(Succeed())
	t.Cleanup(func() { _ = k8sClient.Delete(context.Background(), s) })
	return s
}

// daprNamespaceSecret is a Secret of the Dapr namespace that is not
// Sentry's: a Helm release, say.
func daprNamespaceSecret(t *testing.T, name string, typ corev1.SecretType, labels map[string]string) *corev1.Secret {
	t.Helper()
	return createInDaprNamespace(t, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Type: typ, Data: map[string][]byte{"release": []byte("values and manifests")}})
}

// TestOperatorHoldsOnlyTheSecretsItManages: after a rotation, the operator's
// cache holds Sentry's Secret (labeled as it published to it), the backup and
// the Secrets cert-manager wrote, and not the Dapr namespace's other Secrets
// (a Helm release here). A Helm upgrade that drops the label from Sentry's
// Secret does not blind it: the label is put back, and a change to the Secret
// is still seen as drift.
func TestOperatorHoldsOnlyTheSecretsItManages(t *testing.T) {
	g := NewWithT(t)
	freshBundle(t)
	daprNamespaceSecret(t, "sh.helm.release.v1.dapr.v1", "helm.sh/release.v1", map[string]string{"owner": "helm"})
	s, _ := readBundle(t)
	g.Expect(s.Labels).NotTo(HaveKey(controllers.OwnerLabel), "an install the operator has not published to")
	op := startOperator(t)
	key := newRotation(t, "cached", rotatorv1.MTLSRootRotationSpec{Trigger: "a"})
	waitRotationCompleted(t, key, "a")

	cached := func(g Gomega) []string {
		list := &corev1.SecretList{}
		g.Expect(op.cache.List(t.Context(), list, client.InNamespace(fixture.ControlPlaneNamespace))).To(Succeed())
		var names []string
		for _, s := range list.Items {
			names = append(names, s.Name)
		}
		return names
	}
	g.Eventually(cached).WithTimeout(10 * time.Second).Should(ConsistOf("dapr-trust-bundle", "cached-backup", "cached-root", "cached-issuer"))

	// A Helm upgrade rewrites the Secret's labels.
	s, _ = readBundle(t)
	g.Expect(k8sClient.Patch(t.Context(), s, client.RawPatch(types.MergePatchType,
		fmt.Appendf(nil, `{"metadata":{"labels":{%q:null,"app":"dapr-sentry"}}}`, controllers.OwnerLabel)))).To(Succeed())
	g.Eventually(func(g Gomega) {
		s, _ := readBundle(t)
		g.Expect(s.Labels).To(HaveKeyWithValue(controllers.OwnerLabel, "cached"))
		g.Expect(s.Labels).To(HaveKeyWithValue("app", "dapr-sentry"), "only its own label")
	}).WithTimeout(30 * time.Second).Should(Succeed())
	s, _ = readBundle(t)
	s.Data["issuer.crt"] = []byte("changed by hand")
	g.Expect(k8sClient.Update(t.Context(), s)).To(Succeed())
	waitStalled(t, key, rotatorv1.TrustBundleDriftReason)
}

// TestOperatorMayWriteOnlyItsSecrets: under the admission policy of
// config/admission, the operator's ServiceAccount may write only Opaque and
// TLS Secrets, each labeled with an object after the write (taking an
// unlabeled one over labels it, as its first publish to Sentry's Secret
// does, and a renamed object takes its Secrets over from the old name), and
// delete only those made for it from their creation: labeling a Secret and
// then deleting it fails at the second step. Everything else its Role would
// allow in the Dapr namespace is refused.
func TestOperatorMayWriteOnlyItsSecrets(t *testing.T) {
	g := NewWithT(t)
	c, err := client.New(operatorConfig(t), client.Options{Scheme: k8sClient.Scheme()})
	g.Expect(err).NotTo(HaveOccurred())
	mine := map[string]string{controllers.OwnerLabel: "policy-probe"}
	release := daprNamespaceSecret(t, "sh.helm.release.v1.policy.v1", "helm.sh/release.v1", mine)
	foreign := daprNamespaceSecret(t, "policy-foreign", corev1.SecretTypeOpaque, nil)
	taken := daprNamespaceSecret(t, "policy-taken", corev1.SecretTypeOpaque, nil)
	labeled := daprNamespaceSecret(t, "policy-labeled", corev1.SecretTypeOpaque, mine)
	patch := func(obj client.Object, p string) error {
		return c.Patch(t.Context(), obj, client.RawPatch(types.MergePatchType, []byte(p)))
	}
	newSecret := func(name string, labels map[string]string, typ corev1.SecretType) *corev1.Secret {
		return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: fixture.ControlPlaneNamespace, Name: name, Labels: labels}, Type: typ}
	}
	// The API server loads a new policy within a moment; a dry run is
	// admitted as the request would be, and changes nothing.
	g.Eventually(func() error { return c.Delete(t.Context(), foreign, client.DryRunAll) }).
		WithTimeout(10 * time.Second).WithPolling(200 * time.Millisecond).Should(MatchError(ContainSubstring("mtls-rotator-secrets")))

	refused := []struct {
		name  string
		write func() error
	}{
		{"deleting an unlabeled Secret", func() error { return c.Delete(t.Context(), foreign) }},
		{"changing an unlabeled Secret and leaving it unlabeled", func() error { return patch(foreign, `{"data":{"x":"eA=="}}`) }},
		{"creating an unlabeled Secret", func() error { return c.Create(t.Context(), newSecret("policy-new", nil, corev1.SecretTypeOpaque)) }},
		{"changing a Helm release, even labeled", func() error { return patch(release, `{"data":{"release":"eA=="}}`) }},
		{"deleting a Helm release", func() error { return c.Delete(t.Context(), release) }},
		{"creating a registry credential", func() error {
			pull := newSecret("policy-pull", mine, corev1.SecretTypeDockerConfigJson)
			pull.Data = map[string][]byte{corev1.DockerConfigJsonKey: []byte(`{"auths":{}}`)}
			return c.Create(t.Context(), pull)
		}},
		{"removing the label", func() error {
			return patch(labeled, fmt.Sprintf(`{"metadata":{"labels":{%q:null}}}`, controllers.OwnerLabel))
		}},
		{"deleting a labeled Secret it did not make", func() error { return c.Delete(t.Context(), labeled) }},
		{"marking a Secret it did not make as made for it", func() error {
			return patch(labeled, fmt.Sprintf(`{"metadata":{"annotations":{%q:"true"}}}`, controllers.MadeAnnotation))
		}},
	}
	for _, tt := range refused {
		err := tt.write()
		g.Expect(err).To(HaveOccurred(), tt.name)
		g.Expect(err.Error()).To(ContainSubstring("mtls-rotator-secrets"), tt.name)
	}

	g.Expect(patch(taken, fmt.Sprintf(`{"metadata":{"labels":{%q:"policy-probe"}},"data":{"ca.crt":"eA=="}}`, controllers.OwnerLabel))).
		To(Succeed(), "taking an unlabeled Secret over, labeled, as the first publish does")
	g.Expect(c.Delete(t.Context(), taken)).To(MatchError(ContainSubstring("may delete only the Secrets made for it")),
		"labeling a Secret, then deleting it: the second step is refused")
	g.Expect(patch(labeled, `{"data":{"x":"eA=="}}`)).To(Succeed())
	g.Expect(patch(labeled, fmt.Sprintf(`{"metadata":{"labels":{%q:"renamed"}}}`, controllers.OwnerLabel))).
		To(Succeed(), "an object created under another name takes the Secret over")
	created := newSecret("policy-created", mine, corev1.SecretTypeOpaque)
	created.Annotations = map[string]string{controllers.MadeAnnotation: "true"}
	g.Expect(c.Create(t.Context(), created)).To(Succeed())
	g.Expect(patch(created, fmt.Sprintf(`{"metadata":{"annotations":{%q:"no"}}}`, controllers.MadeAnnotation))).
		To(MatchError(ContainSubstring("may not add, change or remove the annotation")))
	g.Expect(c.Delete(t.Context(), created)).To(Succeed(), "a Secret made for it, from its creation")
	for _, s := range []*corev1.Secret{foreign, taken, labeled} {
		g.Expect(k8sClient.Get(t.Context(), client.ObjectKeyFromObject(s), &corev1.Secret{})).To(Succeed(), "%s not deleted", s.Name)
	}
}

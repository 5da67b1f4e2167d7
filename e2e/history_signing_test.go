package e2e

import (
	"context"
	"crypto/x509"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/pki"
	"github.com/mtls-rotator/mtls-rotator/internal/pki/pkitest"
)

// setWorkflowHistorySigning turns Dapr's WorkflowHistorySigning feature on
// in the Configuration an application names (dapr.io/config), as a Dapr 1.18
// user would, until the test ends.
func setWorkflowHistorySigning(t *testing.T) {
	t.Helper()
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "dapr.io/v1alpha1",
		"kind":       "Configuration",
		"metadata":   map[string]any{"name": "orders", "namespace": "apps-a"},
		"spec": map[string]any{"features": []any{
			map[string]any{"name": "WorkflowHistorySigning", "enabled": true},
		}},
	}}
	NewWithT(t).Expect(k8sClient.Create(t.Context(), u)).To(Succeed())
	t.Cleanup(func() { _ = k8sClient.Delete(context.Background(), u) })
}

// signedHistory stands for a workflow history a sidecar signed now, under
// the bundle Sentry holds: the chain of a workload certificate of its issuer,
// and when it was signed.
type signedHistory struct {
	chain    []*x509.Certificate
	signedAt time.Time
}

func signHistory(t *testing.T) signedHistory {
	t.Helper()
	s, _ := readBundle(t)
	parsed, err := pki.Bundle{TrustAnchors: s.Data["ca.crt"], IssuerChain: s.Data["issuer.crt"], IssuerKey: s.Data["issuer.key"]}.Validate(time.Now())
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	leaf := pkitest.NewWorkload(t, &pkitest.CA{Cert: parsed.Issuer(), Key: parsed.Key}, "spiffe://cluster.local/ns/default/orders", time.Hour)
	return signedHistory{chain: append([]*x509.Certificate{leaf.Cert}, parsed.Chain...), signedAt: time.Now()}
}

// verifies checks a signed history as daprd does with WorkflowHistorySigning
// (dapr/kit crypto/spiffe/signer VerifyCertChainOfTrust): the chain against
// the anchors Sentry holds now, at the time it was signed.
func (h signedHistory) verifies(t *testing.T) error {
	t.Helper()
	s, _ := readBundle(t)
	anchors, err := pki.ParseCertificates(s.Data["ca.crt"])
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	roots, intermediates := x509.NewCertPool(), x509.NewCertPool()
	for _, a := range anchors {
		roots.AddCert(a)
	}
	for _, c := range h.chain[1:] {
		intermediates.AddCert(c)
	}
	_, err = h.chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: intermediates,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}, CurrentTime: h.signedAt})
	return err
}

// TestWorkflowHistorySigningKeepsRetiredRoots: with Dapr's
// WorkflowHistorySigning on, a new-key rotation keeps the root it retires
// (it ends with its Switch phase, restarting nothing for a Prune), and a
// same-key renewal keeps the root certificate it replaces, so histories
// signed under every earlier bundle still verify; status, events and the
// plan say so. With the policy Drop, the next rotation prunes them all.
func TestWorkflowHistorySigningKeepsRetiredRoots(t *testing.T) {
	g := NewWithT(t)
	freshBundle(t)
	setWorkflowHistorySigning(t)
	startOperator(t)
	key := newRotation(t, "signed-histories", rotatorv1.MTLSRootRotationSpec{Trigger: "a"})
	first := waitRotationCompleted(t, key, "a")
	g.Expect(first.Status.DaprConfiguration.WorkflowHistorySigning).To(Equal("apps-a/orders"))
	underFirst := signHistory(t)

	first.Spec.Trigger, first.Spec.Root.KeyPolicy, first.Spec.DryRun = "b", rotatorv1.KeyPolicyRotate, true
	updateRotation(t, first)
	g.Eventually(func(g Gomega) {
		plan := getRotation(t, key).Status.Plan
		g.Expect(plan).NotTo(BeNil())
		g.Expect(plan.Phases).To(Equal([]rotatorv1.RotationPhase{rotatorv1.PhaseOverlap, rotatorv1.PhaseSwitch}))
		g.Expect(plan.KeepsRetiredRoots).To(ContainSubstring("WorkflowHistorySigning is on in Dapr Configuration apps-a/orders"))
	}).WithTimeout(30 * time.Second).Should(Succeed())
	planned := getRotation(t, key)
	planned.Spec.DryRun = false
	updateRotation(t, planned)
	second := waitRotationCompleted(t, key, "b")
	g.Expect(second.Status.Rotation.KeepsRetiredRoots).To(BeTrue())
	g.Expect(second.Status.Rotation.Phase).To(Equal(rotatorv1.PhaseSwitch), "it ends with Switch")
	for _, phase := range []string{"overlap", "switch"} {
		assertRestartedOnce(t, second.Status.Rotation.ID+"-"+phase)
	}
	for _, w := range restartTargets() {
		g.Expect(restartedRevisions(t.Context(), g, w, second.Status.Rotation.ID+"-prune")).To(BeZero(), "%s restarted for a Prune", w)
	}
	g.Expect(second.Status.TrustAnchors).To(BeEquivalentTo(2))
	g.Expect(second.Status.RetiredRootsKept).To(BeEquivalentTo(1))
	g.Expect(second.Status.Root.PublicKeySHA256).NotTo(Equal(first.Status.Root.PublicKeySHA256), "a new key")
	g.Expect(underFirst.verifies(t)).To(Succeed(), "a history signed under the retired root")
	underSecond := signHistory(t)

	second.Spec.Trigger, second.Spec.Root.KeyPolicy = "c", rotatorv1.KeyPolicyReuse
	updateRotation(t, second)
	third := waitRotationCompleted(t, key, "c")
	g.Expect(third.Status.TrustAnchors).To(BeEquivalentTo(3), "the renewed root certificate joins the two")
	g.Expect(third.Status.RetiredRootsKept).To(BeEquivalentTo(2))
	g.Expect(third.Status.Root.NotBefore.Time).To(BeTemporally(">", underSecond.signedAt.Add(-time.Second)))
	g.Expect(underFirst.verifies(t)).To(Succeed())
	g.Expect(underSecond.verifies(t)).To(Succeed(), "a history signed before the renewed root certificate started")
	sameBundleInSecretAndConfigMap(t)
	events := eventsFor(t, key)
	g.Expect(events["WorkflowHistorySigning"]).To(HaveLen(1))
	g.Expect(events["WorkflowHistorySigning"][0].Message).To(ContainSubstring("keep the roots they retire"))
	g.Expect(events["TrustBundlePublished"]).To(ContainElement(HaveField("Message", ContainSubstring("of which 2 retired and kept for workflow history signing"))))

	third.Spec.Trigger, third.Spec.Root.Retired.Policy = "d", rotatorv1.RetiredRootsDrop
	updateRotation(t, third)
	fourth := waitRotationCompleted(t, key, "d")
	g.Expect(fourth.Status.TrustAnchors).To(BeEquivalentTo(1))
	g.Expect(fourth.Status.RetiredRootsKept).To(BeZero())
	g.Expect(underFirst.verifies(t)).NotTo(Succeed(), "the retired key is no longer trusted")
	g.Expect(underSecond.verifies(t)).NotTo(Succeed(), "nor a root certificate before the renewal")
}

package e2e

import (
	"crypto/x509"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"github.com/fluxcd/cli-utils/pkg/kstatus/status"
	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/e2e/fixture"
	"github.com/mtls-rotator/mtls-rotator/internal/pki"
	"github.com/mtls-rotator/mtls-rotator/internal/pki/pkitest"
)

func TestExternalClusterIssuerGivesTwoControlPlanesMutualTrust(t *testing.T) {
	g := NewWithT(t)
	const other = "dapr-system-b"
	freshBundle(t)
	secondControlPlane(t, other)
	orgCA := pkitest.NewRoot(t, pkitest.Options{CommonName: "Example Org Root CA"})
	caIssuer(t, "", "org-ca", orgCA, orgCA.CertPEM(), nil)
	startOperatorFor(t, fixture.ControlPlaneNamespace, other)

	external := rotatorv1.IssuerSpec{IssuerRef: &rotatorv1.IssuerReference{Name: "org-ca", Kind: "ClusterIssuer"}}
	keyA := newRotation(t, "org", rotatorv1.MTLSRootRotationSpec{Trigger: "a", Issuer: external})
	objB := &rotatorv1.MTLSRootRotation{
		ObjectMeta: metav1.ObjectMeta{Name: "org", Namespace: other},
		Spec: rotatorv1.MTLSRootRotationSpec{
			Trigger: "a", Issuer: external,
			ControlPlane: rotatorv1.ControlPlaneSpec{Workloads: []rotatorv1.ControlPlaneWorkload{{Kind: rotatorv1.Deployment, Name: fixture.Sentry, Optional: true}}},
			Applications: rotatorv1.ApplicationsSpec{Restart: ptr.To(false)},
		},
	}
	createOrReplace(t, objB)

	doneA := waitRotationCompleted(t, keyA, "a")
	doneB := waitRotationCompleted(t, client.ObjectKeyFromObject(objB), "a")
	g.Expect(kstatusOf(t, doneA)).To(Equal(status.CurrentStatus))
	checkConditions(t, doneA)

	a, b := bundleIn(t, fixture.ControlPlaneNamespace), bundleIn(t, other)
	for _, p := range []*pki.ParsedBundle{a, b} {
		g.Expect(p.Anchors).To(HaveLen(1))
		g.Expect(p.Anchors[0].Raw).To(Equal(orgCA.Cert.Raw), "the trust anchor is the organisation's CA")
	}
	g.Expect(a.Issuer().Raw).NotTo(Equal(b.Issuer().Raw), "each control plane has its own issuer")
	g.Expect(doneA.Status.Root.SHA256Fingerprint).To(Equal(doneB.Status.Root.SHA256Fingerprint))

	// A workload of each control plane is trusted by the other's sidecars.
	for _, pair := range []struct {
		name          string
		signer, peers *pki.ParsedBundle
	}{{"A's workload in B", a, b}, {"B's workload in A", b, a}} {
		issuer := &pkitest.CA{Cert: pair.signer.Issuer(), Key: pair.signer.Key}
		leaf := pkitest.NewWorkload(t, issuer, "spiffe://cluster.local/ns/default/app", time.Hour)
		chain := append([]*x509.Certificate{leaf.Cert}, pair.signer.Chain...)
		g.Expect(pki.VerifyChain(chain, pair.peers.Anchors, time.Now())).To(Succeed(), pair.name)
	}

	// Only the issuer Certificate exists: no root is made.
	certs := &cmapi.CertificateList{}
	g.Expect(k8sClient.List(t.Context(), certs, client.InNamespace(fixture.ControlPlaneNamespace), client.MatchingLabels{"mtls.rotator.dev/rotation": "org"})).To(Succeed())
	g.Expect(certs.Items).To(HaveLen(1))
	g.Expect(certs.Items[0].Spec.IssuerRef.Kind).To(Equal("ClusterIssuer"))

	// A second rotation re-issues the issuer from the same CA: same anchor,
	// new issuer, no overlap needed.
	before := a.Issuer()
	obj := getRotation(t, keyA)
	obj.Spec.Trigger = "b"
	updateRotation(t, obj)
	waitRotationCompleted(t, keyA, "b")
	again := bundleIn(t, fixture.ControlPlaneNamespace)
	g.Expect(again.Anchors[0].Raw).To(Equal(orgCA.Cert.Raw))
	g.Expect(again.Issuer().SerialNumber).NotTo(Equal(before.SerialNumber))
}

func TestExternalIssuerWithAnIntermediateCAIsRefused(t *testing.T) {
	g := NewWithT(t)
	freshBundle(t)
	root := pkitest.NewRoot(t, pkitest.Options{CommonName: "Example Org Root CA"})
	intermediate := pkitest.NewIssuer(t, root, pkitest.Options{CommonName: "Example Org Intermediate CA"})
	// The CA Secret holds the intermediate alone: cert-manager records it as
	// the CA of what it issues.
	caIssuer(t, fixture.ControlPlaneNamespace, "team-ca", intermediate, intermediate.CertPEM(), nil)
	before, beforeCM := readBundle(t)
	startOperator(t)
	key := newRotation(t, "team", rotatorv1.MTLSRootRotationSpec{
		Trigger: "a", Issuer: rotatorv1.IssuerSpec{IssuerRef: &rotatorv1.IssuerReference{Name: "team-ca"}},
	})

	obj := waitStalled(t, key, rotatorv1.IssuerCANotSelfSignedReason)
	msg := conditions.GetMessage(obj, meta.StalledCondition)
	g.Expect(msg).To(MatchRegexp(`Issuer team-ca cannot be Dapr's trust anchor: its CA "CN=Example Org Intermediate CA[^"]*", issued by "CN=Example Org Root CA[^"]*", is not self-signed`))
	g.Expect(msg).To(ContainSubstring("Dapr Sentry only accepts self-signed roots"))
	g.Expect(kstatusOf(t, obj)).To(Equal(status.FailedStatus))
	checkConditions(t, obj)
	bundleUnchanged(t, before, beforeCM)
	g.Expect(eventsFor(t, key)[rotatorv1.IssuerCANotSelfSignedReason]).To(HaveLen(1))

	// Following the advice (the root as the CA Secret's ca.crt) and a new
	// trigger: the root is the anchor and the intermediate rides in the chain.
	caSecret := &corev1.Secret{}
	g.Expect(k8sClient.Get(t.Context(), types.NamespacedName{Namespace: fixture.ControlPlaneNamespace, Name: "team-ca-ca"}, caSecret)).To(Succeed())
	caSecret.Data["ca.crt"] = root.CertPEM()
	g.Expect(k8sClient.Update(t.Context(), caSecret)).To(Succeed())
	obj = getRotation(t, key)
	obj.Spec.Trigger = "b"
	updateRotation(t, obj)
	waitRotationCompleted(t, key, "b")
	published := bundleIn(t, fixture.ControlPlaneNamespace)
	g.Expect(published.Anchors).To(HaveLen(1))
	g.Expect(published.Anchors[0].Raw).To(Equal(root.Cert.Raw))
	g.Expect(published.Chain).To(HaveLen(2))
	g.Expect(published.Chain[1].Raw).To(Equal(intermediate.Cert.Raw))
}

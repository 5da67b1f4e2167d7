package e2e

import (
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/e2e/fixture"
	"github.com/mtls-rotator/mtls-rotator/internal/health"
	"github.com/mtls-rotator/mtls-rotator/internal/pki/pkitest"
)

// TestKeyPolicyChangeDuringARotationIsRefused: asking for Rotate and for an
// external issuer while a Reuse rotation runs changes nothing in that
// rotation; each is refused with one Warning and applies to the next
// rotation, which moves the mesh onto the organisation's CA through an overlap.
func TestKeyPolicyChangeDuringARotationIsRefused(t *testing.T) {
	g := NewWithT(t)
	freshBundle(t)
	orgCA := pkitest.NewRoot(t, pkitest.Options{CommonName: "Example Org Root CA"})
	caIssuer(t, "", "org-ca", orgCA, orgCA.CertPEM(), nil)
	// Keep the rotation in flight: the sidecar injector's new pods stay unready.
	holdUnready(t, fixture.ControlPlaneNamespace, fixture.SidecarInjector)
	startOperator(t)
	key := newRotation(t, "steady", rotatorv1.MTLSRootRotationSpec{Trigger: "a"})
	g.Eventually(func() rotatorv1.RotationStep {
		if r := getRotation(t, key).Status.Rotation; r != nil {
			return r.Step
		}
		return ""
	}).WithTimeout(time.Minute).Should(Equal(rotatorv1.StepRestartingControlPlane))
	g.Expect(argoHealthOf(t, key).Status).To(Equal(health.Progressing), "Argo CD sees the rotation under way")

	obj := getRotation(t, key)
	obj.Spec.Root.KeyPolicy = rotatorv1.KeyPolicyRotate
	obj.Spec.Issuer.IssuerRef = &rotatorv1.IssuerReference{Name: "org-ca", Kind: "ClusterIssuer"}
	updateRotation(t, obj)
	g.Eventually(func(g Gomega) {
		events := eventsFor(t, key)
		warnings := events[rotatorv1.KeyPolicyChangeDeferredReason]
		g.Expect(warnings).To(HaveLen(1))
		g.Expect(warnings[0].Type).To(Equal(corev1.EventTypeWarning))
		g.Expect(warnings[0].Message).To(ContainSubstring("keyPolicy Rotate refused"))
		issuer := events[rotatorv1.IssuerRefChangeDeferredReason]
		g.Expect(issuer).To(HaveLen(1))
		g.Expect(issuer[0].Message).To(ContainSubstring("issues from a root of its own and finishes so; change spec.trigger afterwards to rotate onto ClusterIssuer org-ca"))
	}).WithTimeout(30 * time.Second).Should(Succeed())
	r := getRotation(t, key).Status.Rotation
	g.Expect(r.KeyPolicy).To(Equal(rotatorv1.KeyPolicyReuse), "the running rotation keeps its policy")
	g.Expect(r.IssuerRef).To(BeNil(), "and its issuer")
	g.Expect(r.Phase).To(BeEmpty())
	g.Expect(getRotation(t, key).Status.RootKeyGeneration).To(BeNumerically("<=", 1), "no new key was started")
	g.Expect(k8sClient.Get(t.Context(), types.NamespacedName{Namespace: key.Namespace, Name: "steady-root"}, &cmapi.Certificate{})).
		To(Succeed(), "the root Certificate of the running rotation stays")

	recoverWorkload(t, fixture.ControlPlaneNamespace, fixture.SidecarInjector)
	done := waitRotationCompleted(t, key, "a")
	g.Expect(done.Status.Rotation.KeyPolicy).To(Equal(rotatorv1.KeyPolicyReuse))
	g.Expect(eventsFor(t, key)[rotatorv1.KeyPolicyChangeDeferredReason][0].Count).To(BeNumerically("<=", 1))

	// The next rotation runs with the new policy and issuer: an overlap from
	// the managed root onto the organisation's CA.
	done.Spec.Trigger = "b"
	updateRotation(t, done)
	next := waitRotationCompleted(t, key, "b")
	g.Expect(next.Status.Rotation.KeyPolicy).To(Equal(rotatorv1.KeyPolicyRotate))
	g.Expect(next.Status.Rotation.IssuerRef).NotTo(BeNil())
	g.Expect(publishedPhases(next)).To(Equal([]rotatorv1.RotationPhase{rotatorv1.PhaseOverlap, rotatorv1.PhaseSwitch, rotatorv1.PhasePrune}))
	published := bundleIn(t, fixture.ControlPlaneNamespace)
	g.Expect(published.Anchors).To(HaveLen(1))
	g.Expect(published.Anchors[0].Raw).To(Equal(orgCA.Cert.Raw))
	err := k8sClient.Get(t.Context(), types.NamespacedName{Namespace: key.Namespace, Name: "steady-root"}, &cmapi.Certificate{})
	g.Expect(apierrors.IsNotFound(err)).To(BeTrue(), "the root Certificate is no longer used")
}

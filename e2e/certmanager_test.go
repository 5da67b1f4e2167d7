package e2e

import (
	"crypto/x509"
	"encoding/pem"
	"testing"
	"time"

	cmapiutil "github.com/cert-manager/cert-manager/pkg/api/util"
	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// TestCertManagerIssuesRootAndIntermediate proves that the real cert-manager
// controllers issue a self-signed ECDSA P-256 root that keeps its key, and a
// CA-issued intermediate; and that a renewal triggered through the Issuing
// condition (what 'cmctl renew' does) keeps the root key and changes its serial.
func TestCertManagerIssuesRootAndIntermediate(t *testing.T) {
	g := NewWithT(t)
	ctx := t.Context()
	ns := createNamespace(t, "cm-smoke")

	objs := []client.Object{
		&cmapi.Issuer{
			ObjectMeta: metav1.ObjectMeta{Name: "selfsigned", Namespace: ns},
			Spec:       cmapi.IssuerSpec{IssuerConfig: cmapi.IssuerConfig{SelfSigned: &cmapi.SelfSignedIssuer{}}},
		},
		&cmapi.Certificate{
			ObjectMeta: metav1.ObjectMeta{Name: "root", Namespace: ns},
			Spec: cmapi.CertificateSpec{
				IsCA:       true,
				CommonName: "cluster.local",
				SecretName: "root",
				Duration:   &metav1.Duration{Duration: 8760 * time.Hour},
				PrivateKey: &cmapi.CertificatePrivateKey{
					Algorithm: cmapi.ECDSAKeyAlgorithm, Size: 256, RotationPolicy: cmapi.RotationPolicyNever,
				},
				IssuerRef: cmmeta.IssuerReference{Name: "selfsigned", Kind: cmapi.IssuerKind},
			},
		},
		&cmapi.Issuer{
			ObjectMeta: metav1.ObjectMeta{Name: "root-ca", Namespace: ns},
			Spec:       cmapi.IssuerSpec{IssuerConfig: cmapi.IssuerConfig{CA: &cmapi.CAIssuer{SecretName: "root"}}},
		},
		&cmapi.Certificate{
			ObjectMeta: metav1.ObjectMeta{Name: "issuer", Namespace: ns},
			Spec: cmapi.CertificateSpec{
				IsCA:       true,
				CommonName: "cluster.local",
				SecretName: "issuer",
				Duration:   &metav1.Duration{Duration: 4380 * time.Hour},
				PrivateKey: &cmapi.CertificatePrivateKey{Algorithm: cmapi.ECDSAKeyAlgorithm, Size: 256},
				IssuerRef:  cmmeta.IssuerReference{Name: "root-ca", Kind: cmapi.IssuerKind},
			},
		},
	}
	for _, obj := range objs {
		g.Expect(k8sClient.Create(ctx, obj)).To(Succeed())
	}

	waitCertificateRevision(t, ns, "root", 1)
	waitCertificateRevision(t, ns, "issuer", 1)

	root := readCertificate(t, ns, "root", "tls.crt")
	g.Expect(root.IsCA).To(BeTrue())
	g.Expect(root.CheckSignatureFrom(root)).To(Succeed(), "the root must be self-signed")
	g.Expect(root.PublicKeyAlgorithm).To(Equal(x509.ECDSA))
	g.Expect(root.PublicKey).To(HaveField("Curve.Params().Name", "P-256"))

	intermediate := readCertificate(t, ns, "issuer", "tls.crt")
	g.Expect(intermediate.IsCA).To(BeTrue())
	roots := x509.NewCertPool()
	roots.AddCert(root)
	_, err := intermediate.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	g.Expect(err).NotTo(HaveOccurred(), "the intermediate must chain to the root")

	// Renew the root the way 'cmctl renew' does.
	crt := &cmapi.Certificate{}
	g.Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: "root"}, crt)).To(Succeed())
	cmapiutil.SetCertificateCondition(crt, crt.Generation, cmapi.CertificateConditionIssuing, cmmeta.ConditionTrue,
		"ManuallyTriggered", "Certificate re-issuance manually triggered")
	g.Expect(k8sClient.Status().Update(ctx, crt)).To(Succeed())
	waitCertificateRevision(t, ns, "root", 2)

	renewed := readCertificate(t, ns, "root", "tls.crt")
	g.Expect(renewed.SerialNumber).NotTo(Equal(root.SerialNumber), "a renewal issues a new certificate")
	g.Expect(renewed.PublicKey).To(Equal(root.PublicKey), "rotationPolicy Never keeps the root key")
	// Same key and subject: the intermediate signed by the old root still verifies under the new one.
	renewedRoots := x509.NewCertPool()
	renewedRoots.AddCert(renewed)
	_, err = intermediate.Verify(x509.VerifyOptions{Roots: renewedRoots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	g.Expect(err).NotTo(HaveOccurred())
}

// waitCertificateRevision waits until a Certificate is Ready at the given revision.
func waitCertificateRevision(t *testing.T, ns, name string, revision int) {
	t.Helper()
	NewWithT(t).Eventually(func(g Gomega) {
		crt := &cmapi.Certificate{}
		g.Expect(k8sClient.Get(t.Context(), types.NamespacedName{Namespace: ns, Name: name}, crt)).To(Succeed())
		g.Expect(crt.Status.Revision).To(Equal(ptr.To(revision)), "revision of Certificate %s", name)
		g.Expect(cmapiutil.CertificateHasCondition(crt, cmapi.CertificateCondition{
			Type: cmapi.CertificateConditionReady, Status: cmmeta.ConditionTrue,
		})).To(BeTrue(), "Certificate %s is not Ready: %v", name, crt.Status.Conditions)
		g.Expect(cmapiutil.CertificateHasCondition(crt, cmapi.CertificateCondition{
			Type: cmapi.CertificateConditionIssuing, Status: cmmeta.ConditionTrue,
		})).To(BeFalse(), "Certificate %s is still issuing", name)
	}).WithTimeout(60 * time.Second).WithPolling(200 * time.Millisecond).Should(Succeed())
}

func readCertificate(t *testing.T, ns, secret, key string) *x509.Certificate {
	t.Helper()
	s := &corev1.Secret{}
	NewWithT(t).Expect(k8sClient.Get(t.Context(), types.NamespacedName{Namespace: ns, Name: secret}, s)).To(Succeed())
	block, _ := pem.Decode(s.Data[key])
	if block == nil {
		t.Fatalf("secret %s/%s has no PEM certificate under %s", ns, secret, key)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatalf("parsing %s/%s %s: %v", ns, secret, key, err)
	}
	return cert
}

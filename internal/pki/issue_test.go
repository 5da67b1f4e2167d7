package pki

import (
	"crypto/x509"
	"testing"
	"time"

	. "github.com/onsi/gomega"
)

func TestNewRootAndIntermediatePassSentrysChecks(t *testing.T) {
	for _, alg := range []struct {
		name string
		size int
	}{{"ECDSA", 256}, {"ECDSA", 384}, {"RSA", 2048}, {"Ed25519", 0}} {
		t.Run(alg.name, func(t *testing.T) {
			g := NewWithT(t)
			rootKey, err := GenerateKey(alg.name, alg.size)
			g.Expect(err).NotTo(HaveOccurred())
			root, err := NewRoot(CASpec{CommonName: "cluster.local", Validity: 24 * time.Hour}, rootKey)
			g.Expect(err).NotTo(HaveOccurred())
			issuerKey, err := GenerateKey(alg.name, alg.size)
			g.Expect(err).NotTo(HaveOccurred())
			issuer, err := NewIntermediate(CASpec{CommonName: "cluster.local", Validity: time.Hour}, issuerKey, root)
			g.Expect(err).NotTo(HaveOccurred())
			keyPEM, err := EncodePrivateKey(issuerKey)
			g.Expect(err).NotTo(HaveOccurred())
			b := Bundle{TrustAnchors: EncodeCertificates(root.Cert), IssuerChain: EncodeCertificates(issuer.Cert), IssuerKey: keyPEM}
			parsed, err := b.Validate(time.Now())
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(parsed.Issuer().NotAfter.Sub(parsed.Issuer().NotBefore)).To(Equal(time.Hour+time.Minute), "valid from a minute ago for the whole validity")

			// Same key, new root: a same-key renewal verifies the old issuer.
			renewed, err := NewRoot(CASpec{CommonName: "cluster.local", Validity: 24 * time.Hour}, rootKey)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(SamePublicKey(renewed.Cert, root.Cert)).To(BeTrue())
			g.Expect(renewed.Cert.SerialNumber).NotTo(Equal(root.Cert.SerialNumber))
			g.Expect(VerifyChain(parsed.Chain, []*x509.Certificate{renewed.Cert}, time.Now())).To(Succeed())
		})
	}
}

func TestGenerateKeyRefusesWhatSentryWouldNot(t *testing.T) {
	g := NewWithT(t)
	for _, bad := range []struct {
		alg  string
		size int
		msg  string
	}{{"ECDSA", 224, "256, 384 or 521"}, {"RSA", 1024, "at least 2048"}, {"DSA", 0, "unknown key algorithm"}} {
		_, err := GenerateKey(bad.alg, bad.size)
		g.Expect(err).To(MatchError(ContainSubstring(bad.msg)), bad.alg)
	}
}

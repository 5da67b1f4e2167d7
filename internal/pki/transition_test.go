package pki_test

import (
	"crypto/x509"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/mtls-rotator/mtls-rotator/internal/pki"
	"github.com/mtls-rotator/mtls-rotator/internal/pki/pkitest"
)

func TestComposeAnchorsIsAnOrderedUnion(t *testing.T) {
	g := NewWithT(t)
	a, b, c := pkitest.NewRoot(t, pkitest.Options{}), pkitest.NewRoot(t, pkitest.Options{}), pkitest.NewRoot(t, pkitest.Options{})
	certs, err := pki.ParseCertificates(pki.ComposeAnchors([]*x509.Certificate{a.Cert, b.Cert}, []*x509.Certificate{b.Cert, c.Cert}))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(certs).To(HaveLen(3))
	g.Expect(certs[0].Equal(a.Cert) && certs[1].Equal(b.Cert) && certs[2].Equal(c.Cert)).To(BeTrue())
	g.Expect(pki.ComposeAnchors()).To(BeEmpty())
}

// TestTrustOverlapPhases walks a new-key rotation the way the operator runs
// it and checks that each phase is provable from the mesh the previous phase
// leaves, while the shortcut (new key without overlap) is refused.
func TestTrustOverlapPhases(t *testing.T) {
	now := time.Now()
	oldRoot := pkitest.NewRoot(t, pkitest.Options{CommonName: "sentry-made"})
	oldIssuer := pkitest.NewIssuer(t, oldRoot, pkitest.Options{})
	newRoot := pkitest.NewRoot(t, pkitest.Options{})
	newIssuer := pkitest.NewIssuer(t, newRoot, pkitest.Options{})
	A := []*x509.Certificate{oldRoot.Cert}
	N := []*x509.Certificate{newRoot.Cert}
	AN := []*x509.Certificate{oldRoot.Cert, newRoot.Cert}
	bundle := func(anchors []*x509.Certificate, issuer *pkitest.CA) *pki.ParsedBundle {
		b := pki.Bundle{TrustAnchors: pki.ComposeAnchors(anchors), IssuerChain: issuer.CertPEM(), IssuerKey: issuer.KeyPEM(t)}
		p, err := b.Validate(now)
		if err != nil {
			t.Fatalf("a phase bundle must pass Sentry's checks: %v", err)
		}
		return p
	}
	chain := func(c *pkitest.CA) []*x509.Certificate { return []*x509.Certificate{c.Cert} }

	tests := []struct {
		name string
		mesh pki.Mesh
		next *pki.ParsedBundle
		ok   bool
	}{
		{"overlap: old anchors and issuer alive, publish old+new anchors with the old issuer",
			pki.Mesh{TrustSets: [][]*x509.Certificate{A}, Issuers: [][]*x509.Certificate{chain(oldIssuer)}}, bundle(AN, oldIssuer), true},
		{"switch: every pod holds old+new, publish the new issuer",
			pki.Mesh{TrustSets: [][]*x509.Certificate{AN}, Issuers: [][]*x509.Certificate{chain(oldIssuer)}}, bundle(AN, newIssuer), true},
		{"prune: every certificate comes from the new issuer, drop the old root",
			pki.Mesh{TrustSets: [][]*x509.Certificate{AN}, Issuers: [][]*x509.Certificate{chain(newIssuer)}}, bundle(N, newIssuer), true},
		{"switching before every pod trusts the new root is refused",
			pki.Mesh{TrustSets: [][]*x509.Certificate{A, AN}, Issuers: [][]*x509.Certificate{chain(oldIssuer)}}, bundle(AN, newIssuer), false},
		{"pruning while old-issuer certificates are alive is refused",
			pki.Mesh{TrustSets: [][]*x509.Certificate{AN}, Issuers: [][]*x509.Certificate{chain(oldIssuer), chain(newIssuer)}}, bundle(N, newIssuer), false},
		{"the shortcut, a new key without overlap, is refused",
			pki.Mesh{TrustSets: [][]*x509.Certificate{A}, Issuers: [][]*x509.Certificate{chain(oldIssuer)}}, bundle(N, newIssuer), false},
		{"expired trust sets and issuers break nothing more",
			pki.Mesh{
				TrustSets: [][]*x509.Certificate{{pkitest.NewRoot(t, pkitest.Options{NotBefore: now.Add(-72 * time.Hour), Validity: time.Hour}).Cert}},
				Issuers:   [][]*x509.Certificate{{pkitest.NewIssuer(t, oldRoot, pkitest.Options{NotBefore: now.Add(-3 * time.Hour), Validity: time.Hour}).Cert}},
			}, bundle(N, newIssuer), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := pki.ProveTransition(tt.mesh, tt.next, now)
			if tt.ok {
				NewWithT(t).Expect(err).NotTo(HaveOccurred())
			} else {
				NewWithT(t).Expect(err).To(HaveOccurred())
			}
		})
	}
}

// BenchmarkProveTransition10Anchors proves a publish over a mesh of ten
// trust sets, each of ten roots, and ten live issuers: the proof a phase
// runs before it writes anything.
func BenchmarkProveTransition10Anchors(b *testing.B) {
	now := time.Now()
	var roots []*x509.Certificate
	var issuers [][]*x509.Certificate
	for range 10 {
		root := pkitest.NewRoot(b, pkitest.Options{})
		roots = append(roots, root.Cert)
		issuers = append(issuers, []*x509.Certificate{pkitest.NewIssuer(b, root, pkitest.Options{}).Cert})
	}
	sets := make([][]*x509.Certificate, 10)
	for i := range sets {
		sets[i] = roots
	}
	next := &pki.ParsedBundle{Anchors: roots, Chain: issuers[0]}
	mesh := pki.Mesh{TrustSets: sets, Issuers: issuers}
	b.ReportAllocs()
	for b.Loop() {
		if err := pki.ProveTransition(mesh, next, now); err != nil {
			b.Fatal(err)
		}
	}
}

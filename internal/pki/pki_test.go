package pki_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"regexp"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/mtls-rotator/mtls-rotator/internal/pki"
	"github.com/mtls-rotator/mtls-rotator/internal/pki/pkitest"
)

func bundleOf(t *testing.T, anchors []*pkitest.CA, issuer *pkitest.CA, chainExtra ...*pkitest.CA) pki.Bundle {
	var ca, chain []byte
	for _, a := range anchors {
		ca = append(ca, a.CertPEM()...)
	}
	chain = issuer.CertPEM()
	for _, c := range chainExtra {
		chain = append(chain, c.CertPEM()...)
	}
	return pki.Bundle{TrustAnchors: ca, IssuerChain: chain, IssuerKey: issuer.KeyPEM(t)}
}

func TestValidateAcceptsWhatSentryAccepts(t *testing.T) {
	root := pkitest.NewRoot(t, pkitest.Options{})
	other := pkitest.NewRoot(t, pkitest.Options{CommonName: "other"})
	rsaRoot := pkitest.NewRoot(t, pkitest.Options{Key: pkitest.RSAKey(t, 2048)})
	edRoot := pkitest.NewRoot(t, pkitest.Options{Key: pkitest.Ed25519Key(t)})
	issuer := pkitest.NewIssuer(t, root, pkitest.Options{})
	accepted := map[string]pki.Bundle{
		"ecdsa root and issuer":        bundleOf(t, []*pkitest.CA{root}, issuer),
		"two anchors (trust overlap)":  bundleOf(t, []*pkitest.CA{other, root}, issuer),
		"rsa root, rsa issuer":         bundleOf(t, []*pkitest.CA{rsaRoot}, pkitest.NewIssuer(t, rsaRoot, pkitest.Options{Key: pkitest.RSAKey(t, 2048)})),
		"ed25519 root, ed25519 issuer": bundleOf(t, []*pkitest.CA{edRoot}, pkitest.NewIssuer(t, edRoot, pkitest.Options{Key: pkitest.Ed25519Key(t)})),
		"issuer allowing server auth":  bundleOf(t, []*pkitest.CA{root}, pkitest.NewIssuer(t, root, pkitest.Options{ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}})),
		"issuer under an intermediate": func() pki.Bundle {
			mid := pkitest.NewIssuer(t, root, pkitest.Options{CommonName: "intermediate"})
			return bundleOf(t, []*pkitest.CA{root}, pkitest.NewIssuer(t, mid, pkitest.Options{}), mid)
		}(),
	}
	for name, b := range accepted {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			parsed, err := b.Validate(time.Now())
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(parsed.Issuer().IsCA).To(BeTrue())
		})
	}
}

func TestValidateRefusesWhatSentryRefuses(t *testing.T) {
	root := pkitest.NewRoot(t, pkitest.Options{})
	other := pkitest.NewRoot(t, pkitest.Options{CommonName: "other"})
	issuer := pkitest.NewIssuer(t, root, pkitest.Options{})
	good := bundleOf(t, []*pkitest.CA{root}, issuer)
	with := func(f func(b *pki.Bundle)) pki.Bundle { b := good; f(&b); return b }

	refused := []struct {
		name   string
		bundle pki.Bundle
		now    time.Time
		msg    string
	}{
		{"empty", pki.Bundle{}, time.Now(), "bundle is incomplete"},
		{"no key", with(func(b *pki.Bundle) { b.IssuerKey = nil }), time.Now(), "no [issuer key]"},
		{"anchor is not self-signed", with(func(b *pki.Bundle) { b.TrustAnchors = issuer.CertPEM() }), time.Now(), "not self-signed"},
		{"anchor is not a CA", with(func(b *pki.Bundle) {
			b.TrustAnchors = pkitest.NewRoot(t, pkitest.Options{NotCA: true}).CertPEM()
		}), time.Now(), "not a CA certificate"},
		{"issuer from another root", with(func(b *pki.Bundle) { b.TrustAnchors = other.CertPEM() }), time.Now(), "does not verify under the trust anchors"},
		{"issuer is not a CA", bundleOf(t, []*pkitest.CA{root}, pkitest.NewIssuer(t, root, pkitest.Options{NotCA: true})), time.Now(), "is not a CA certificate"},
		{"key does not match", with(func(b *pki.Bundle) { b.IssuerKey = pkitest.NewIssuer(t, root, pkitest.Options{}).KeyPEM(t) }), time.Now(), "issuer key does not match"},
		{"issuer only for client auth", bundleOf(t, []*pkitest.CA{root}, pkitest.NewIssuer(t, root, pkitest.Options{ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})), time.Now(), "does not verify"},
		{"expired", good, time.Now().Add(2 * 365 * 24 * time.Hour), "does not verify"},
		{"garbage anchors", with(func(b *pki.Bundle) { b.TrustAnchors = []byte("not pem") }), time.Now(), "trust anchors: data after the last PEM certificate is not PEM"},
		{"key in the anchors", with(func(b *pki.Bundle) { b.TrustAnchors = append(root.CertPEM(), issuer.KeyPEM(t)...) }), time.Now(), `unexpected PEM block "PRIVATE KEY"`},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.bundle.Validate(tt.now)
			NewWithT(t).Expect(err).To(MatchError(ContainSubstring(tt.msg)))
		})
	}
}

func TestParsePrivateKeyFormats(t *testing.T) {
	ec := pkitest.ECDSAKey(t).(*ecdsa.PrivateKey)
	rs := pkitest.RSAKey(t, 2048).(*rsa.PrivateKey)
	ed := pkitest.Ed25519Key(t).(ed25519.PrivateKey)
	sec1, err := x509.MarshalECPrivateKey(ec)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8 := func(k any) []byte {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	}
	ecParams := pem.EncodeToMemory(&pem.Block{Type: "EC PARAMETERS", Bytes: []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}})
	sec1PEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1})

	formats := []struct {
		name string
		data []byte
		want any
	}{
		{"SEC1 EC (openssl ec)", sec1PEM, ec.Public()},
		{"SEC1 EC after EC PARAMETERS (openssl ecparam -genkey)", append(ecParams, sec1PEM...), ec.Public()},
		{"PKCS#1 RSA (openssl genrsa -traditional)", pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rs)}), rs.Public()},
		{"PKCS#8 EC (step)", pkcs8(ec), ec.Public()},
		{"PKCS#8 RSA (openssl genpkey)", pkcs8(rs), rs.Public()},
		{"PKCS#8 Ed25519", pkcs8(ed), ed.Public()},
	}
	for _, f := range formats {
		t.Run(f.name, func(t *testing.T) {
			g := NewWithT(t)
			key, err := pki.ParsePrivateKey(f.data)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(key.Public()).To(Equal(f.want))
		})
	}

	bad := map[string][]byte{
		"empty":            nil,
		"certificate":      pkitest.NewRoot(t, pkitest.Options{}).CertPEM(),
		"two keys":         append(pkcs8(ec), pkcs8(rs)...),
		"trailing garbage": append(pkcs8(ec), []byte("junk")...),
		"corrupt":          pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte("nope")}),
	}
	for name, data := range bad {
		t.Run("refuses "+name, func(t *testing.T) {
			_, err := pki.ParsePrivateKey(data)
			NewWithT(t).Expect(err).To(HaveOccurred())
		})
	}
}

func TestKeyAlgorithm(t *testing.T) {
	g := NewWithT(t)
	for _, tt := range []struct {
		key  any
		alg  string
		size int
	}{{pkitest.ECDSAKey(t), "ECDSA", 256}, {pkitest.RSAKey(t, 2048), "RSA", 2048}, {pkitest.Ed25519Key(t), "Ed25519", 0}} {
		alg, size := pki.KeyAlgorithm(tt.key.(interface{ Public() crypto.PublicKey }).(crypto.Signer))
		g.Expect(alg).To(Equal(tt.alg))
		g.Expect(size).To(Equal(tt.size))
	}
}

func TestFingerprints(t *testing.T) {
	g := NewWithT(t)
	root := pkitest.NewRoot(t, pkitest.Options{})
	renewed := pkitest.RenewRoot(t, root, pkitest.Options{})
	hexColon := regexp.MustCompile(`^([0-9A-F]{2}:){31}[0-9A-F]{2}$`)
	g.Expect(pki.Fingerprint(root.Cert)).To(MatchRegexp(hexColon.String()))
	g.Expect(pki.PublicKeyFingerprint(root.Cert)).To(MatchRegexp(hexColon.String()))
	g.Expect(pki.Fingerprint(renewed.Cert)).NotTo(Equal(pki.Fingerprint(root.Cert)))
	g.Expect(pki.PublicKeyFingerprint(renewed.Cert)).To(Equal(pki.PublicKeyFingerprint(root.Cert)))
	g.Expect(pki.SamePublicKey(root.Cert, renewed.Cert)).To(BeTrue())
}

func TestEncodeRoundTrips(t *testing.T) {
	g := NewWithT(t)
	a, b := pkitest.NewRoot(t, pkitest.Options{}), pkitest.NewRoot(t, pkitest.Options{})
	certs, err := pki.ParseCertificates(pki.EncodeCertificates(a.Cert, b.Cert))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(certs).To(HaveLen(2))
	g.Expect(certs[0].Equal(a.Cert) && certs[1].Equal(b.Cert)).To(BeTrue())
	keyPEM, err := pki.EncodePrivateKey(a.Key)
	g.Expect(err).NotTo(HaveOccurred())
	key, err := pki.ParsePrivateKey(keyPEM)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(pki.KeyMatches(key, a.Cert)).To(BeTrue())
}

func TestProveReuse(t *testing.T) {
	now := time.Now()
	root := pkitest.NewRoot(t, pkitest.Options{})
	issuer := pkitest.NewIssuer(t, root, pkitest.Options{})
	installed := mustValidate(t, bundleOf(t, []*pkitest.CA{root}, issuer))

	renewed := pkitest.RenewRoot(t, root, pkitest.Options{})
	newIssuer := pkitest.NewIssuer(t, renewed, pkitest.Options{})
	next := mustValidate(t, bundleOf(t, []*pkitest.CA{renewed}, newIssuer))

	t.Run("same-key renewal is proven", func(t *testing.T) {
		NewWithT(t).Expect(pki.ProveReuse(installed, next, renewed.Cert, now)).To(Succeed())
	})
	t.Run("first issuance onto an empty bundle", func(t *testing.T) {
		NewWithT(t).Expect(pki.ProveReuse(nil, next, renewed.Cert, now)).To(Succeed())
	})
	t.Run("anchors made by Sentry with a discarded key", func(t *testing.T) {
		sentryRoot := pkitest.NewRoot(t, pkitest.Options{})
		sentry := mustValidate(t, bundleOf(t, []*pkitest.CA{sentryRoot}, pkitest.NewIssuer(t, sentryRoot, pkitest.Options{})))
		err := pki.ProveReuse(sentry, next, renewed.Cert, now)
		NewWithT(t).Expect(errors.Is(err, pki.ErrRootKeyUnknown)).To(BeTrue(), "got %v", err)
	})
	t.Run("a new root key is not a reuse", func(t *testing.T) {
		newRoot := pkitest.NewRoot(t, pkitest.Options{})
		rotated := mustValidate(t, bundleOf(t, []*pkitest.CA{newRoot}, pkitest.NewIssuer(t, newRoot, pkitest.Options{})))
		err := pki.ProveReuse(installed, rotated, root.Cert, now)
		NewWithT(t).Expect(err).To(MatchError(ContainSubstring("does not carry the managed root key")))
	})
	t.Run("an expired installed issuer does not block a same-key rotation", func(t *testing.T) {
		g := NewWithT(t)
		oldRoot := pkitest.NewRoot(t, pkitest.Options{NotBefore: now.Add(-72 * time.Hour)})
		old := pkitest.NewIssuer(t, oldRoot, pkitest.Options{NotBefore: now.Add(-48 * time.Hour), Validity: 24 * time.Hour})
		b := bundleOf(t, []*pkitest.CA{oldRoot}, old)
		expired, err := b.Validate(pki.ValidAt(now, old.Cert))
		g.Expect(err).NotTo(HaveOccurred())
		_, err = b.Validate(now)
		g.Expect(err).To(HaveOccurred(), "Sentry would refuse it today")
		oldRenewed := pkitest.RenewRoot(t, oldRoot, pkitest.Options{})
		fresh := mustValidate(t, bundleOf(t, []*pkitest.CA{oldRenewed}, pkitest.NewIssuer(t, oldRenewed, pkitest.Options{})))
		g.Expect(pki.ProveReuse(expired, fresh, oldRenewed.Cert, now)).To(Succeed())
	})
	t.Run("same key but a new subject breaks old pods", func(t *testing.T) {
		// A renamed root with the same key: the new issuer names a subject the
		// installed anchors do not have, so pods holding them would refuse it.
		renamed := pkitest.RenewRoot(t, root, pkitest.Options{CommonName: "renamed.local"})
		renamedNext := mustValidate(t, bundleOf(t, []*pkitest.CA{renamed}, pkitest.NewIssuer(t, renamed, pkitest.Options{})))
		err := pki.ProveReuse(installed, renamedNext, renamed.Cert, now)
		NewWithT(t).Expect(err).To(MatchError(ContainSubstring("would reject certificates from the new issuer")))
	})
}

func mustValidate(t *testing.T, b pki.Bundle) *pki.ParsedBundle {
	t.Helper()
	p, err := b.Validate(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func FuzzParseCertificates(f *testing.F) {
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		certs, err := pki.ParseCertificates(data)
		if err == nil && len(certs) == 0 {
			t.Fatal("no error and no certificates")
		}
	})
}

func FuzzParsePrivateKey(f *testing.F) {
	f.Add([]byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"))
	f.Add(bytes.Repeat([]byte("-----BEGIN EC PARAMETERS-----\n-----END EC PARAMETERS-----\n"), 3))
	f.Fuzz(func(t *testing.T, data []byte) {
		key, err := pki.ParsePrivateKey(data)
		if err == nil && key == nil {
			t.Fatal("no error and no key")
		}
	})
}

// TestIssuerRoot: the anchor an issuer chains to is found by signature, not
// by its place in the bundle; of two certificates of the same root key, the
// one that expires last.
func TestIssuerRoot(t *testing.T) {
	now := time.Now()
	old := pkitest.NewRoot(t, pkitest.Options{Validity: 2 * time.Hour})
	renewed := pkitest.RenewRoot(t, old, pkitest.Options{Validity: 48 * time.Hour})
	other := pkitest.NewRoot(t, pkitest.Options{})
	byOld, byOther := pkitest.NewIssuer(t, old, pkitest.Options{}), pkitest.NewIssuer(t, other, pkitest.Options{})
	for _, tt := range []struct {
		name    string
		anchors []*pkitest.CA
		issuer  *pkitest.CA
		want    *pkitest.CA
	}{
		{"an overlap bundle: the issuer of the old root", []*pkitest.CA{old, other}, byOld, old},
		{"a switched bundle: the issuer of the new root", []*pkitest.CA{old, other}, byOther, other},
		{"the only anchor", []*pkitest.CA{other}, byOther, other},
		{"two certificates of one key: the one that lives longer", []*pkitest.CA{renewed, old, other}, byOld, renewed},
	} {
		t.Run(tt.name, func(t *testing.T) {
			parsed, err := bundleOf(t, tt.anchors, tt.issuer).Validate(now)
			NewWithT(t).Expect(err).NotTo(HaveOccurred())
			NewWithT(t).Expect(parsed.IssuerRoot().Equal(tt.want.Cert)).To(BeTrue(), "got %s", parsed.IssuerRoot().NotAfter)
		})
	}
}

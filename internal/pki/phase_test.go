package pki_test

import (
	"crypto/x509"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/mtls-rotator/mtls-rotator/internal/pki"
	"github.com/mtls-rotator/mtls-rotator/internal/pki/pkitest"
)

// subjects names the anchors of a bundle, in order.
func subjects(t *testing.T, b pki.Bundle) []string {
	certs, err := pki.ParseCertificates(b.TrustAnchors)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range certs {
		names = append(names, c.Subject.CommonName)
	}
	return names
}

func TestComposePhase(t *testing.T) {
	now := time.Now()
	oldRoot := pkitest.NewRoot(t, pkitest.Options{CommonName: "old", NotBefore: now.Add(-24 * time.Hour)})
	oldIssuer := pkitest.NewIssuer(t, oldRoot, pkitest.Options{CommonName: "old-issuer"})
	expiredIssuer := pkitest.NewIssuer(t, oldRoot, pkitest.Options{CommonName: "expired-issuer", NotBefore: now.Add(-3 * time.Hour), Validity: time.Hour})
	// Hand-made installs: a root made before its issuer expires first.
	expiredRoot := pkitest.NewRoot(t, pkitest.Options{CommonName: "expired-root", NotBefore: now.Add(-3 * time.Hour), Validity: time.Hour})
	outliving := pkitest.NewIssuer(t, expiredRoot, pkitest.Options{CommonName: "outliving-issuer", NotBefore: now.Add(-150 * time.Minute), Validity: 10 * time.Hour})
	alsoExpired := pkitest.NewIssuer(t, expiredRoot, pkitest.Options{CommonName: "also-expired", NotBefore: now.Add(-150 * time.Minute), Validity: 2 * time.Hour})
	newRoot := pkitest.NewRoot(t, pkitest.Options{CommonName: "new"})
	newIssuer := pkitest.NewIssuer(t, newRoot, pkitest.Options{CommonName: "new-issuer"})

	original := bundleOf(t, []*pkitest.CA{oldRoot}, oldIssuer)
	issued := bundleOf(t, []*pkitest.CA{newRoot}, newIssuer)
	overlap := bundleOf(t, []*pkitest.CA{oldRoot, newRoot}, oldIssuer)
	switched := bundleOf(t, []*pkitest.CA{oldRoot, newRoot}, newIssuer)
	broken := pki.Bundle{TrustAnchors: []byte("not PEM"), IssuerChain: oldIssuer.CertPEM(), IssuerKey: oldIssuer.KeyPEM(t)}
	mismatched := pki.Bundle{TrustAnchors: issued.TrustAnchors, IssuerChain: newIssuer.CertPEM(), IssuerKey: oldIssuer.KeyPEM(t)}

	tests := []struct {
		name        string
		in          pki.PhaseInput
		wantPhase   pki.Phase
		wantAnchors []string
		wantIssuer  string
		wantCutOff  string
		wantStage   pki.Stage
	}{
		{name: "overlap adds the new root to the installed anchors and keeps the installed issuer",
			in:        pki.PhaseInput{Phase: pki.Overlap, Original: original, Live: original, Issued: issued},
			wantPhase: pki.Overlap, wantAnchors: []string{"old", "new"}, wantIssuer: "old-issuer"},
		{name: "switch publishes the new issuer under both anchors",
			in:        pki.PhaseInput{Phase: pki.Switch, Original: original, Live: overlap, Issued: issued},
			wantPhase: pki.Switch, wantAnchors: []string{"old", "new"}, wantIssuer: "new-issuer"},
		{name: "prune publishes the new root alone",
			in:        pki.PhaseInput{Phase: pki.Prune, Original: original, Live: switched, Issued: issued},
			wantPhase: pki.Prune, wantAnchors: []string{"new"}, wantIssuer: "new-issuer"},
		{name: "nothing installed goes straight to prune",
			in:        pki.PhaseInput{Phase: pki.Overlap, Issued: issued},
			wantPhase: pki.Prune, wantAnchors: []string{"new"}, wantIssuer: "new-issuer"},
		{name: "an expired installed issuer goes straight to prune and says so",
			in:        pki.PhaseInput{Phase: pki.Overlap, Original: bundleOf(t, []*pkitest.CA{oldRoot}, expiredIssuer), Live: bundleOf(t, []*pkitest.CA{oldRoot}, expiredIssuer), Issued: issued},
			wantPhase: pki.Prune, wantAnchors: []string{"new"}, wantIssuer: "new-issuer", wantCutOff: "issuer"},
		{name: "an expired installed root under a live issuer goes straight to prune and says so",
			in:        pki.PhaseInput{Phase: pki.Overlap, Original: bundleOf(t, []*pkitest.CA{expiredRoot}, outliving), Live: bundleOf(t, []*pkitest.CA{expiredRoot}, outliving), Issued: issued},
			wantPhase: pki.Prune, wantAnchors: []string{"new"}, wantIssuer: "new-issuer", wantCutOff: "root"},
		{name: "a root that expired before its issuer, both expired, goes straight to prune",
			in:        pki.PhaseInput{Phase: pki.Overlap, Original: bundleOf(t, []*pkitest.CA{expiredRoot}, alsoExpired), Live: bundleOf(t, []*pkitest.CA{expiredRoot}, alsoExpired), Issued: issued},
			wantPhase: pki.Prune, wantAnchors: []string{"new"}, wantIssuer: "new-issuer", wantCutOff: "issuer"},
		{name: "an issued bundle Sentry would refuse is refused first",
			in:        pki.PhaseInput{Phase: pki.Overlap, Original: original, Live: original, Issued: mismatched},
			wantStage: pki.IssuedInvalid},
		{name: "an invalid original leaves no trust to overlap with",
			in:        pki.PhaseInput{Phase: pki.Overlap, Original: broken, Live: broken, Issued: issued},
			wantStage: pki.OriginalInvalid},
		{name: "an invalid live bundle mid-rotation is refused",
			in:        pki.PhaseInput{Phase: pki.Switch, Original: original, Live: broken, Issued: issued},
			wantStage: pki.InstalledInvalid},
		{name: "pruning before the switch is unproven: old-issuer certificates are alive",
			in:        pki.PhaseInput{Phase: pki.Prune, Original: original, Live: overlap, Issued: issued},
			wantStage: pki.Unproven},
		{name: "switching while a pod that runs holds only the original anchors is unproven",
			in: pki.PhaseInput{Phase: pki.Switch, Original: original, Live: overlap, Issued: issued,
				ObservedTrust: [][]string{{pki.Fingerprint(oldRoot.Cert), pki.Fingerprint(newRoot.Cert)}, {pki.Fingerprint(oldRoot.Cert)}}},
			wantStage: pki.Unproven},
		{name: "switching while every pod that runs holds both anchors is proven",
			in: pki.PhaseInput{Phase: pki.Switch, Original: original, Live: overlap, Issued: issued,
				ObservedTrust: [][]string{{pki.Fingerprint(oldRoot.Cert), pki.Fingerprint(newRoot.Cert)}}},
			wantPhase: pki.Switch, wantAnchors: []string{"old", "new"}, wantIssuer: "new-issuer"},
		{name: "a pod trusting only a root nobody knows blocks the switch",
			in: pki.PhaseInput{Phase: pki.Switch, Original: original, Live: overlap, Issued: issued,
				ObservedTrust: [][]string{{"AA:BB"}}},
			wantStage: pki.Unproven},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			pub, err := pki.ComposePhase(tt.in, now)
			if tt.wantStage != "" {
				g.Expect(err).To(HaveOccurred())
				g.Expect(pki.StageOf(err)).To(Equal(tt.wantStage), "%v", err)
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(pub.Phase).To(Equal(tt.wantPhase))
			g.Expect(subjects(t, pub.Bundle)).To(Equal(tt.wantAnchors))
			g.Expect(pub.Parsed.Issuer().Subject.CommonName).To(Equal(tt.wantIssuer))
			if tt.wantCutOff == "" {
				g.Expect(pub.CutOff).To(BeNil())
			} else {
				g.Expect(pub.CutOff).NotTo(BeNil())
				g.Expect(pub.CutOff.What).To(Equal(tt.wantCutOff))
			}
			first, _ := pki.FirstPhase(tt.in.Original, now)
			if tt.in.Phase == pki.Overlap {
				g.Expect(first).To(Equal(pub.Phase), "the plan's first phase is the one published")
			}
		})
	}
}

func TestComposeReuse(t *testing.T) {
	now := time.Now()
	root := pkitest.NewRoot(t, pkitest.Options{})
	issuer := pkitest.NewIssuer(t, root, pkitest.Options{})
	renewed := pkitest.RenewRoot(t, root, pkitest.Options{})
	renewedIssuer := pkitest.NewIssuer(t, renewed, pkitest.Options{})
	renamed := pkitest.RenewRoot(t, root, pkitest.Options{CommonName: "renamed"})
	renamedIssuer := pkitest.NewIssuer(t, renamed, pkitest.Options{})
	other := pkitest.NewRoot(t, pkitest.Options{})
	otherIssuer := pkitest.NewIssuer(t, other, pkitest.Options{})

	expiredRoot := pkitest.RenewRoot(t, root, pkitest.Options{NotBefore: now.Add(-3 * time.Hour), Validity: time.Hour})
	outliving := pkitest.NewIssuer(t, expiredRoot, pkitest.Options{NotBefore: now.Add(-150 * time.Minute)})

	installed := bundleOf(t, []*pkitest.CA{root}, issuer)
	next := bundleOf(t, []*pkitest.CA{renewed}, renewedIssuer)
	tests := []struct {
		name       string
		installed  pki.Bundle
		issued     pki.Bundle
		root       *x509.Certificate
		wantStage  pki.Stage
		wantCutOff *pki.Expiry
	}{
		{name: "a first issuance onto an empty bundle", issued: next, root: renewed.Cert},
		{name: "a renewed root with the same key replaces the installed one", installed: installed, issued: next, root: renewed.Cert},
		{name: "a replay after the publish proves against itself", installed: next, issued: next, root: renewed.Cert},
		{name: "an installed root that expired before its issuer is renewed, and the cut-off said", installed: bundleOf(t, []*pkitest.CA{expiredRoot}, outliving),
			issued: next, root: renewed.Cert, wantCutOff: &pki.Expiry{What: "root", NotAfter: expiredRoot.Cert.NotAfter}},
		{name: "installed anchors of another key are refused", installed: bundleOf(t, []*pkitest.CA{other}, otherIssuer), issued: next, root: renewed.Cert,
			wantStage: pki.RootKeyUnknown},
		{name: "an installed bundle Sentry would refuse is refused", installed: pki.Bundle{TrustAnchors: []byte("x"), IssuerChain: issuer.CertPEM(), IssuerKey: issuer.KeyPEM(t)},
			issued: next, root: renewed.Cert, wantStage: pki.InstalledInvalid},
		{name: "an issued bundle Sentry would refuse is refused", installed: installed,
			issued: pki.Bundle{TrustAnchors: next.TrustAnchors, IssuerChain: renewedIssuer.CertPEM(), IssuerKey: issuer.KeyPEM(t)}, root: renewed.Cert,
			wantStage: pki.IssuedInvalid},
		{name: "the same key under another subject would fail handshakes", installed: installed, issued: bundleOf(t, []*pkitest.CA{renamed}, renamedIssuer), root: renamed.Cert,
			wantStage: pki.Unproven},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			pub, err := pki.ComposeReuse(tt.installed, tt.issued, tt.root, now)
			if tt.wantStage != "" {
				g.Expect(pki.StageOf(err)).To(Equal(tt.wantStage), "%v", err)
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(pub.Bundle).To(Equal(tt.issued))
			g.Expect(pub.Parsed.Anchors[0].Equal(tt.root)).To(BeTrue())
			g.Expect(pub.CutOff).To(Equal(tt.wantCutOff))
		})
	}
}

func TestFirstPhase(t *testing.T) {
	g := NewWithT(t)
	now := time.Now()
	root := pkitest.NewRoot(t, pkitest.Options{NotBefore: now.Add(-24 * time.Hour)})
	valid := bundleOf(t, []*pkitest.CA{root}, pkitest.NewIssuer(t, root, pkitest.Options{}))
	expiredIssuer := pkitest.NewIssuer(t, root, pkitest.Options{NotBefore: now.Add(-3 * time.Hour), Validity: time.Hour})

	phase, expired := pki.FirstPhase(pki.Bundle{}, now)
	g.Expect(phase).To(Equal(pki.Prune))
	g.Expect(expired).To(BeNil())
	phase, expired = pki.FirstPhase(valid, now)
	g.Expect(phase).To(Equal(pki.Overlap))
	g.Expect(expired).To(BeNil())
	phase, expired = pki.FirstPhase(bundleOf(t, []*pkitest.CA{root}, expiredIssuer), now)
	g.Expect(phase).To(Equal(pki.Prune))
	g.Expect(expired).To(Equal(&pki.Expiry{What: "issuer", NotAfter: expiredIssuer.Cert.NotAfter}))
	expiredRoot := pkitest.NewRoot(t, pkitest.Options{NotBefore: now.Add(-3 * time.Hour), Validity: time.Hour})
	phase, expired = pki.FirstPhase(bundleOf(t, []*pkitest.CA{expiredRoot}, pkitest.NewIssuer(t, expiredRoot, pkitest.Options{NotBefore: now.Add(-150 * time.Minute)})), now)
	g.Expect(phase).To(Equal(pki.Prune))
	g.Expect(expired).To(Equal(&pki.Expiry{What: "root", NotAfter: expiredRoot.Cert.NotAfter}))
	phase, _ = pki.FirstPhase(pki.Bundle{TrustAnchors: []byte("x"), IssuerChain: []byte("y"), IssuerKey: []byte("z")}, now)
	g.Expect(phase).To(Equal(pki.Overlap), "an invalid bundle is refused by the phase itself, with its reason")
}

package pki_test

import (
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/mtls-rotator/mtls-rotator/internal/pki"
	"github.com/mtls-rotator/mtls-rotator/internal/pki/pkitest"
)

// TestRetain: the anchors a publish drops are put back, oldest first, and
// any anchor expired for longer than keepAfterExpiry is dropped, its own
// included; retaining again changes nothing.
func TestRetain(t *testing.T) {
	now := time.Now()
	year := 365 * 24 * time.Hour
	old := pkitest.NewRoot(t, pkitest.Options{NotBefore: now.Add(-2 * year), Validity: year}) // expired a year ago
	root := pkitest.NewRoot(t, pkitest.Options{NotBefore: now.Add(-year / 2)})
	renewed := pkitest.RenewRoot(t, root, pkitest.Options{})
	fresh := pkitest.NewRoot(t, pkitest.Options{})
	anchors := func(cas ...*pkitest.CA) []byte {
		var b []byte
		for _, c := range cas {
			b = append(b, c.CertPEM()...)
		}
		return b
	}
	for _, tt := range []struct {
		name            string
		live            []*pkitest.CA
		issued          *pkitest.CA // the root of the issued bundle, the last of its anchors
		keepAfterExpiry time.Duration
		want            []*pkitest.CA
	}{
		{"a same-key renewal keeps the replaced certificate", []*pkitest.CA{root}, renewed, year, []*pkitest.CA{root, renewed}},
		{"a pruned root of another key is kept", []*pkitest.CA{root, fresh}, fresh, year, []*pkitest.CA{root, fresh}},
		{"a root expired for longer than keepAfterExpiry is dropped", []*pkitest.CA{old, root}, renewed, 24 * time.Hour, []*pkitest.CA{root, renewed}},
		{"one expired for less is kept, in order of age", []*pkitest.CA{root, old}, renewed, 2 * year, []*pkitest.CA{old, root, renewed}},
		{"nothing dropped, nothing kept", []*pkitest.CA{renewed}, renewed, year, []*pkitest.CA{renewed}},
		{"an anchor of its own expired for longer is dropped too (a Switch bundle)", []*pkitest.CA{old, root}, root, 24 * time.Hour, []*pkitest.CA{root}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			issuer := pkitest.NewIssuer(t, tt.issued, pkitest.Options{})
			own := tt.issued.CertPEM()
			if strings.HasPrefix(tt.name, "an anchor of its own") {
				own = anchors(tt.live...) // Switch publishes every anchor it found
			}
			issued := pki.Bundle{TrustAnchors: own, IssuerChain: issuer.CertPEM(), IssuerKey: issuer.KeyPEM(t)}
			parsed, err := issued.Validate(now)
			g.Expect(err).NotTo(HaveOccurred())
			pub := pki.Retain(pki.Publish{Bundle: issued, Parsed: parsed}, pki.Bundle{TrustAnchors: anchors(tt.live...)}, tt.keepAfterExpiry, now)
			g.Expect(string(pub.Bundle.TrustAnchors)).To(Equal(string(anchors(tt.want...))))
			g.Expect(pub.Parsed.Anchors).To(HaveLen(len(tt.want)))
			g.Expect(pub.Bundle.IssuerChain).To(Equal(issued.IssuerChain))
			_, err = pub.Bundle.Validate(now)
			g.Expect(err).NotTo(HaveOccurred(), "Sentry accepts it")

			again := pki.Retain(pki.Publish{Bundle: issued, Parsed: parsed}, pub.Bundle, tt.keepAfterExpiry, now)
			g.Expect(again.Bundle).To(Equal(pub.Bundle), "a replay publishes the same bytes")
		})
	}
}

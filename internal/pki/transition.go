package pki

import (
	"bytes"
	"crypto/x509"
	"fmt"
	"time"
)

// ComposeAnchors returns the PEM of the union of anchor sets, in order, each
// certificate once: the trust anchors of an overlap (installed roots, then the
// new one).
func ComposeAnchors(sets ...[]*x509.Certificate) []byte {
	var out []*x509.Certificate
	for _, set := range sets {
		for _, c := range set {
			dup := false
			for _, o := range out {
				if bytes.Equal(o.Raw, c.Raw) {
					dup = true
					break
				}
			}
			if !dup {
				out = append(out, c)
			}
		}
	}
	return EncodeCertificates(out...)
}

// Mesh is what is alive in a Dapr mesh at a moment: the distinct trust-anchor
// sets its sidecars and services were started with, and the issuer chains
// that signed certificates still in use.
type Mesh struct {
	TrustSets [][]*x509.Certificate
	Issuers   [][]*x509.Certificate
}

// ProveTransition proves that publishing next (and restarting onto it) keeps
// every handshake working in mesh: every alive trust set accepts the
// certificates next's issuer will sign, and next's anchors accept every
// certificate still alive. Sets or issuers that have already expired are
// skipped: they break nothing more.
func ProveTransition(mesh Mesh, next *ParsedBundle, now time.Time) error {
	for i, set := range mesh.TrustSets {
		if allExpired(now, set) {
			continue
		}
		if err := VerifyChain(next.Chain, set, now); err != nil {
			return fmt.Errorf("pods holding trust set %d (%s) would reject certificates from the new issuer: %w", i+1, describe(set), err)
		}
	}
	for i, chain := range mesh.Issuers {
		if anyExpired(now, chain) {
			continue
		}
		if err := VerifyChain(chain, next.Anchors, now); err != nil {
			return fmt.Errorf("pods started on the new anchors would reject certificates from issuer %d (%s): %w", i+1, chain[0].Subject, err)
		}
	}
	return nil
}

func describe(certs []*x509.Certificate) string {
	var b bytes.Buffer
	for i, c := range certs {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(c.Subject.CommonName + " " + Fingerprint(c)[:11])
	}
	return b.String()
}

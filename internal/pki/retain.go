package pki

import (
	"crypto/x509"
	"slices"
	"time"
)

// Retain returns pub with the anchors of live that pub drops put back before
// its own, oldest first, each while it has not been expired for longer than
// keepAfterExpiry; and how many it put back. A root so kept adds trust only
// until it expires (a renewed certificate of a kept key adds none), and a
// stored workflow history signed under it still verifies, as Dapr's
// WorkflowHistorySigning checks it: against the current anchors, at the time
// it was signed.
func Retain(pub Publish, live Bundle, keepAfterExpiry time.Duration, now time.Time) (Publish, int) {
	installed, err := ParseCertificates(live.TrustAnchors)
	if err != nil || pub.Parsed == nil {
		return pub, 0
	}
	var kept []*x509.Certificate
	for _, a := range installed {
		dropped := !slices.ContainsFunc(pub.Parsed.Anchors, a.Equal)
		if dropped && now.Before(a.NotAfter.Add(keepAfterExpiry)) && !slices.ContainsFunc(kept, a.Equal) {
			kept = append(kept, a)
		}
	}
	if len(kept) == 0 {
		return pub, 0
	}
	slices.SortStableFunc(kept, func(a, b *x509.Certificate) int { return a.NotBefore.Compare(b.NotBefore) })
	anchors := append(kept, pub.Parsed.Anchors...)
	parsed := *pub.Parsed
	parsed.Anchors = anchors
	pub.Parsed = &parsed
	pub.Bundle.TrustAnchors = EncodeCertificates(anchors...)
	return pub, len(kept)
}

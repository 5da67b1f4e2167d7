package pki

import (
	"crypto/x509"
	"slices"
	"time"
)

// Retain returns pub with the anchors of live that it drops put back, oldest
// first, and without any anchor expired for longer than keepAfterExpiry
// (never its newest, nor the one its issuer chains to). A root so kept adds
// trust only until it expires (a renewed certificate of a kept key adds
// none), and a stored workflow history signed under it still verifies, as
// Dapr's WorkflowHistorySigning checks it: against the current anchors, at
// the time it was signed. Retaining a bundle Retain returned changes nothing.
func Retain(pub Publish, live Bundle, keepAfterExpiry time.Duration, now time.Time) Publish {
	installed, err := ParseCertificates(live.TrustAnchors)
	if err != nil || pub.Parsed == nil {
		return pub
	}
	newest, inUse := pub.Parsed.Anchors[len(pub.Parsed.Anchors)-1], pub.Parsed.IssuerRoot()
	keep := func(a *x509.Certificate) bool {
		return a.Equal(newest) || (inUse != nil && a.Equal(inUse)) || now.Before(a.NotAfter.Add(keepAfterExpiry))
	}
	var kept []*x509.Certificate
	for _, a := range installed {
		dropped := !slices.ContainsFunc(pub.Parsed.Anchors, a.Equal)
		if dropped && keep(a) && !slices.ContainsFunc(kept, a.Equal) {
			kept = append(kept, a)
		}
	}
	slices.SortStableFunc(kept, func(a, b *x509.Certificate) int { return a.NotBefore.Compare(b.NotBefore) })
	anchors := append(kept, slices.DeleteFunc(slices.Clone(pub.Parsed.Anchors), func(a *x509.Certificate) bool { return !keep(a) })...)
	if len(anchors) == len(pub.Parsed.Anchors) && len(kept) == 0 {
		return pub
	}
	parsed := *pub.Parsed
	parsed.Anchors = anchors
	pub.Parsed = &parsed
	pub.Bundle.TrustAnchors = EncodeCertificates(anchors...)
	return pub
}

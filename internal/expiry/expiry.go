// Package expiry decides, from the validity of the published root and issuer,
// what is expiring soon, which renewal is due, and when to look again. It
// makes no API calls.
package expiry

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Certificate is the validity of one published certificate.
type Certificate struct {
	Name     string // "root", "issuer" or "previous root", for messages
	NotAfter time.Time
	// Detail follows the certificate's expiry in messages.
	Detail string
}

// Policy is what the spec asks for.
type Policy struct {
	// Warning is how long before expiry a certificate is reported as expiring soon.
	Warning time.Duration
	// RenewBefore is how long before expiry a renewal starts on its own; zero
	// disables automatic renewal.
	RenewBefore time.Duration
	// RootRenewable is false when the root belongs to an external CA: its
	// expiry is reported, but only the CA's owner can renew it.
	RootRenewable bool
}

// Renewal is the automatic renewal due now.
type Renewal string

const (
	// None: nothing is due.
	None Renewal = ""
	// Issuer: only the issuer is due; the root (and so every trust anchor)
	// stays as it is.
	Issuer Renewal = "Issuer"
	// Root: the root is due; root and issuer are renewed, with the same key.
	Root Renewal = "Root"
)

// State is what the expiry of the published certificates calls for at a moment.
type State struct {
	// Expiring lists the certificates that expire within the warning
	// window (or have expired), the soonest first.
	Expiring []Certificate
	// Due is the renewal to start now.
	Due Renewal
	// RenewAt is when the next automatic renewal falls due (in the past when
	// one is due now); zero when none will.
	RenewAt time.Time
	// Next is the next moment something changes (a warning starts, a
	// renewal falls due, a certificate expires); zero when nothing will.
	Next time.Time
}

// Evaluate computes the State of root and issuer at now. A zero NotAfter
// means the certificate is not known (nothing published yet). held are
// certificates that running pods still depend on (a previous root some hold
// alone): they are reported as expiring like the others, but no renewal
// helps them.
func Evaluate(root, issuer Certificate, p Policy, now time.Time, held ...Certificate) State {
	var s State
	consider := func(t time.Time) {
		if t.After(now) && (s.Next.IsZero() || t.Before(s.Next)) {
			s.Next = t
		}
	}
	for _, c := range append([]Certificate{issuer, root}, held...) {
		if c.NotAfter.IsZero() {
			continue
		}
		warnAt := c.NotAfter.Add(-p.Warning)
		if p.Warning > 0 && !now.Before(warnAt) {
			s.Expiring = append(s.Expiring, c)
		}
		consider(warnAt)
		consider(c.NotAfter)
	}
	slices.SortStableFunc(s.Expiring, func(a, b Certificate) int { return a.NotAfter.Compare(b.NotAfter) })
	renewAt := func(due time.Time) {
		if s.RenewAt.IsZero() || due.Before(s.RenewAt) {
			s.RenewAt = due
		}
		consider(due)
	}
	if p.RenewBefore > 0 {
		// An external CA caps the issuers it signs at its own expiry: one
		// capped so cannot be helped by renewing it, only by the CA's owner.
		capped := !p.RootRenewable && !root.NotAfter.IsZero() && !issuer.NotAfter.Before(root.NotAfter)
		if !issuer.NotAfter.IsZero() && !capped {
			due := issuer.NotAfter.Add(-p.RenewBefore)
			if !now.Before(due) {
				s.Due = Issuer
			}
			renewAt(due)
		}
		if p.RootRenewable && !root.NotAfter.IsZero() {
			due := root.NotAfter.Add(-p.RenewBefore)
			if !now.Before(due) {
				s.Due = Root
			}
			renewAt(due)
		}
	}
	return s
}

// Describe says what is expiring, for conditions and events. It names
// moments, not durations from now, so that it does not change from one pass
// to the next and the status is not rewritten for nothing.
func Describe(expiring []Certificate, now time.Time) string {
	parts := make([]string, 0, len(expiring))
	for _, c := range expiring {
		verb := "expires"
		if !c.NotAfter.After(now) {
			verb = "expired"
		}
		parts = append(parts, fmt.Sprintf("%s certificate %s at %s%s", c.Name, verb, c.NotAfter.UTC().Format(time.RFC3339), c.Detail))
	}
	return strings.Join(parts, "; ")
}

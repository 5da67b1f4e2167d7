package pki

import (
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// ErrRootKeyUnknown means the installed trust anchors were not made with the
// root key a same-key rotation would sign with; switching to it would break
// every handshake of the pods that still hold the installed anchors.
var ErrRootKeyUnknown = errors.New("the installed trust anchors were not made with the managed root key")

// ProveReuse proves that publishing next in place of installed keeps every
// handshake working when the root key is reused, before anything is written:
//   - every anchor of next carries the managed root's public key;
//   - some installed anchor carries it too (else ErrRootKeyUnknown);
//   - next's issuer verifies under the installed anchors, which pods started
//     before the rotation hold until they restart;
//   - the installed issuer verifies under next's anchors, for the workload
//     certificates it signed that are still in use after the publish.
//
// installed is nil for a first issuance onto an empty bundle. The installed
// side is checked at a moment it is valid: an installed root or issuer that
// has already expired (the usual reason to rotate late) breaks nothing more.
func ProveReuse(installed, next *ParsedBundle, root *x509.Certificate, now time.Time) error {
	for i, a := range next.Anchors {
		if !SamePublicKey(a, root) {
			return fmt.Errorf("new trust anchor %d (%s) does not carry the managed root key", i+1, a.Subject)
		}
	}
	if installed == nil {
		return nil
	}
	known := false
	for _, a := range installed.Anchors {
		if SamePublicKey(a, root) {
			known = true
			break
		}
	}
	if !known {
		return ErrRootKeyUnknown
	}
	return ProveTransition(Mesh{TrustSets: [][]*x509.Certificate{installed.Anchors}, Issuers: [][]*x509.Certificate{installed.Chain}}, next, now)
}

// Expired reports whether any of certs has expired at now.
func Expired(now time.Time, certs ...*x509.Certificate) bool { return anyExpired(now, certs) }

func anyExpired(now time.Time, certs []*x509.Certificate) bool {
	for _, c := range certs {
		if now.After(c.NotAfter) {
			return true
		}
	}
	return false
}

func allExpired(now time.Time, certs []*x509.Certificate) bool {
	for _, c := range certs {
		if !now.After(c.NotAfter) {
			return false
		}
	}
	return len(certs) > 0
}

// ValidAt returns now, or the last moment all of certs were valid when one
// has already expired.
func ValidAt(now time.Time, certs ...*x509.Certificate) time.Time {
	at := now
	for _, c := range certs {
		if c.NotAfter.Before(at) {
			at = c.NotAfter.Add(-time.Second)
		}
	}
	return at
}

package pki

import (
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"time"
)

// Phase is a phase of a trust-overlap rotation onto a new root key.
type Phase string

// The phases, in order.
const (
	// Overlap publishes the installed anchors plus the new root, with the
	// installed issuer.
	Overlap Phase = "Overlap"
	// Switch publishes the new issuer, still with both anchors.
	Switch Phase = "Switch"
	// Prune publishes the new root alone, with the new issuer.
	Prune Phase = "Prune"
)

// Phases is the order of the phases.
var Phases = []Phase{Overlap, Switch, Prune}

// Stage names what a proposed publish failed on.
type Stage string

const (
	// IssuedInvalid: what cert-manager issued would be refused by Sentry.
	IssuedInvalid Stage = "IssuedInvalid"
	// InstalledInvalid: the bundle installed now does not pass Sentry's checks.
	InstalledInvalid Stage = "InstalledInvalid"
	// OriginalInvalid: the bundle installed before the rotation does not pass
	// Sentry's checks, so there is no trust to overlap with.
	OriginalInvalid Stage = "OriginalInvalid"
	// RootKeyUnknown: the installed anchors were not made with the root key a
	// same-key rotation signs with.
	RootKeyUnknown Stage = "RootKeyUnknown"
	// Unproven: publishing would fail handshakes somewhere in the mesh.
	Unproven Stage = "Unproven"
)

// PublishError says at which stage a proposed publish failed, and why. It
// holds no certificate body.
type PublishError struct {
	Stage Stage
	Err   error
}

func (e *PublishError) Error() string { return e.Err.Error() }
func (e *PublishError) Unwrap() error { return e.Err }

func failAt(stage Stage, err error) error { return &PublishError{Stage: stage, Err: err} }

// StageOf returns the stage at which err says a publish failed, or "".
func StageOf(err error) Stage {
	var pe *PublishError
	if errors.As(err, &pe) {
		return pe.Stage
	}
	return ""
}

// Publish is a bundle proven safe to publish.
type Publish struct {
	Bundle Bundle
	Parsed *ParsedBundle
	// Phase is the phase it belongs to: the one asked for, or the last one
	// when there is nothing to overlap with (a trust-overlap rotation only).
	Phase Phase
	// CutOff is the installed certificate whose expiry had already cut the
	// mesh off when this publish replaced it (a trust-overlap rotation goes
	// straight to its last phase for that reason); nil otherwise.
	CutOff *Expiry
}

// Expiry names an installed certificate that has expired.
type Expiry struct {
	// What is "issuer" or "root".
	What     string
	NotAfter time.Time
}

// ValidateInstalled checks an installed bundle as Sentry would, at a moment
// its issuer and a root it chains to were both valid: an expired issuer or
// root is a reason to rotate, not a reason to distrust the bundle.
func ValidateInstalled(b Bundle, now time.Time) (*ParsedBundle, error) {
	chain, err := ParseCertificates(b.IssuerChain)
	if err != nil {
		return nil, fmt.Errorf("issuer certificate: %w", err)
	}
	parsed, err := b.Validate(ValidAt(now, chain...))
	if err == nil {
		return parsed, nil
	}
	// The issuer may outlive the roots it chains to (a root made before its
	// issuer, an issuer renewed alone): try the moment before each expired
	// anchor expired, the latest first.
	anchors, aerr := ParseCertificates(b.TrustAnchors)
	if aerr != nil {
		return nil, err
	}
	slices.SortFunc(anchors, func(a, b *x509.Certificate) int { return b.NotAfter.Compare(a.NotAfter) })
	for _, a := range anchors {
		if !now.After(a.NotAfter) {
			continue
		}
		if parsed, aerr := b.Validate(ValidAt(now, append(slices.Clip(chain), a)...)); aerr == nil {
			return parsed, nil
		}
	}
	return nil, err
}

// CutOff returns the installed certificate whose expiry has already cut the
// mesh off, or nil: an expired issuer (no workload can renew its
// certificate), or, while the issuer lives, the last of the expired roots it
// chains to (no workload certificate verifies any more).
func CutOff(b *ParsedBundle, now time.Time) *Expiry {
	for _, c := range b.Chain {
		if now.After(c.NotAfter) {
			return &Expiry{What: "issuer", NotAfter: c.NotAfter}
		}
	}
	if VerifyChain(b.Chain, b.Anchors, now) == nil {
		return nil
	}
	var last *x509.Certificate
	for _, a := range b.Anchors {
		if now.After(a.NotAfter) && (last == nil || a.NotAfter.After(last.NotAfter)) {
			last = a
		}
	}
	if last == nil {
		return nil
	}
	return &Expiry{What: "root", NotAfter: last.NotAfter}
}

// ComposeReuse proves that issued, made with the same root key as the
// installed anchors (root is the newest issued anchor), can replace installed
// without a failed handshake. installed is empty on a first issuance, and
// equal to issued on a replay after the publish.
func ComposeReuse(installed, issued Bundle, root *x509.Certificate, now time.Time) (Publish, error) {
	parsed, err := issued.Validate(now)
	if err != nil {
		return Publish{}, failAt(IssuedInvalid, err)
	}
	var before *ParsedBundle
	if !installed.IsEmpty() && !sameBundle(installed, issued) {
		if before, err = ValidateInstalled(installed, now); err != nil {
			return Publish{}, failAt(InstalledInvalid, err)
		}
	}
	if err := ProveReuse(before, parsed, root, now); err != nil {
		if errors.Is(err, ErrRootKeyUnknown) {
			return Publish{}, failAt(RootKeyUnknown, err)
		}
		return Publish{}, failAt(Unproven, err)
	}
	pub := Publish{Bundle: issued, Parsed: parsed}
	if before != nil {
		pub.CutOff = CutOff(before, now)
	}
	return pub, nil
}

// PhaseInput is what a phase of a trust-overlap rotation is composed from.
type PhaseInput struct {
	// Phase is the phase the rotation is at.
	Phase Phase
	// Original is the bundle installed before the rotation, Live the one
	// installed now (what the previous phase published), Issued the new root
	// and issuer.
	Original, Live, Issued Bundle
	// ObservedTrust are the trust sets the Dapr pods that run hold, as the
	// fingerprints of their roots: the Switch and Prune bundles must keep
	// every one of them working, whatever the spec restarts.
	ObservedTrust [][]string
}

// FirstPhase is the phase a trust-overlap rotation starts publishing at over
// original: the last one when there is nothing to overlap with (nothing
// installed, or an issuer or root that has expired and so left the mesh cut
// off already), the first otherwise. cutOff is the expired one, if that is why.
func FirstPhase(original Bundle, now time.Time) (phase Phase, cutOff *Expiry) {
	if original.IsEmpty() {
		return Prune, nil
	}
	if orig, err := ValidateInstalled(original, now); err == nil {
		if cutOff := CutOff(orig, now); cutOff != nil {
			return Prune, cutOff
		}
	}
	return Overlap, nil
}

// ComposePhase composes the bundle of a phase and proves it against the mesh
// the previous phase left: the trust sets its pods hold and the issuers whose
// certificates are alive.
//   - Overlap: original anchors + new root, original issuer;
//   - Switch: original anchors + new root, new issuer;
//   - Prune: new root, new issuer.
func ComposePhase(in PhaseInput, now time.Time) (Publish, error) {
	out := Publish{Phase: in.Phase}
	if in.Phase == Overlap {
		out.Phase, out.CutOff = FirstPhase(in.Original, now)
	}
	issued, err := in.Issued.Validate(now)
	if err != nil {
		return Publish{}, failAt(IssuedInvalid, err)
	}
	if out.Phase == Prune && in.Original.IsEmpty() {
		out.Bundle, out.Parsed = in.Issued, issued
		return out, nil
	}
	orig, err := ValidateInstalled(in.Original, now)
	if err != nil {
		return Publish{}, failAt(OriginalInvalid, err)
	}
	if out.Phase == Prune && CutOff(orig, now) != nil {
		// No workload certificate chains to a valid issuer and root any
		// more: the mesh is already cut off, and an overlap would only delay
		// its repair.
		out.Bundle, out.Parsed = in.Issued, issued
		return out, nil
	}
	// Later phases are proven against what is installed now (what the
	// previous phase published), not against a recomputation of it.
	live, err := ValidateInstalled(in.Live, now)
	if err != nil {
		return Publish{}, failAt(InstalledInvalid, err)
	}
	out.Bundle, err = phaseBundle(out.Phase, in.Original, in.Issued, orig, issued)
	if err != nil {
		return Publish{}, err
	}
	trustSets := append([][]*x509.Certificate{live.Anchors}, resolve(in.ObservedTrust, orig.Anchors, live.Anchors, issued.Anchors)...)
	mesh := Mesh{TrustSets: trustSets, Issuers: [][]*x509.Certificate{live.Chain}}
	switch out.Phase {
	case Overlap:
		mesh = Mesh{TrustSets: [][]*x509.Certificate{orig.Anchors}, Issuers: [][]*x509.Certificate{orig.Chain}}
	case Switch:
		mesh.Issuers = [][]*x509.Certificate{orig.Chain, live.Chain}
	}
	out.Parsed, err = out.Bundle.Validate(ValidAt(now, orig.Chain...))
	if err == nil {
		err = ProveTransition(mesh, out.Parsed, now)
	}
	if err != nil {
		return Publish{}, failAt(Unproven, err)
	}
	return out, nil
}

// resolve turns trust sets of fingerprints into the certificates among
// known that they name. A root no known certificate matches adds no trust,
// so it is left out: a set left empty accepts nothing, and fails the proof.
func resolve(sets [][]string, known ...[]*x509.Certificate) [][]*x509.Certificate {
	byFingerprint := map[string]*x509.Certificate{}
	for _, certs := range known {
		for _, c := range certs {
			byFingerprint[Fingerprint(c)] = c
		}
	}
	out := make([][]*x509.Certificate, 0, len(sets))
	for _, set := range sets {
		resolved := []*x509.Certificate{}
		for _, f := range set {
			if c, ok := byFingerprint[f]; ok {
				resolved = append(resolved, c)
			}
		}
		out = append(out, resolved)
	}
	return out
}

// phaseBundle is the bundle a phase publishes.
func phaseBundle(phase Phase, original, issued Bundle, orig, iss *ParsedBundle) (Bundle, error) {
	overlap := ComposeAnchors(orig.Anchors, iss.Anchors)
	switch phase {
	case Overlap:
		return Bundle{TrustAnchors: overlap, IssuerChain: original.IssuerChain, IssuerKey: original.IssuerKey}, nil
	case Switch:
		return Bundle{TrustAnchors: overlap, IssuerChain: issued.IssuerChain, IssuerKey: issued.IssuerKey}, nil
	case Prune:
		return issued, nil
	}
	return Bundle{}, failAt(Unproven, fmt.Errorf("unknown phase %q", phase))
}

func sameBundle(a, b Bundle) bool {
	return string(a.TrustAnchors) == string(b.TrustAnchors) && string(a.IssuerChain) == string(b.IssuerChain) &&
		string(a.IssuerKey) == string(b.IssuerKey)
}

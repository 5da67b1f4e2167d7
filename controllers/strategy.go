package controllers

import (
	"context"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/pki"
)

// strategy is what differs between the kinds of rotation: the same root key
// (sameKey), a new root key with a trust overlap (newKey), or an issuer
// signed by an external CA (externalIssuer). The steps, their order and the
// restarts are the same for all; a strategy answers what to issue, how to
// verify it, what each publish holds, and what to do at completion.
type strategy interface {
	// begin readies a rotation that is about to be recorded as started.
	begin(ctx context.Context) error
	// prepare makes sure of what must be in place before cert-manager
	// issues: a brought root key imported, the cert-manager objects applied.
	prepare(ctx context.Context) error
	// issue drives cert-manager until the rotation's certificates are issued
	// (step Issuing); nil once they are.
	issue(ctx context.Context) error
	// verify proves what was issued before anything is written (step Verifying).
	verify(ctx context.Context) error
	// next composes and proves the bundle the current publish writes (step
	// Publishing); the target was just read live.
	next(ctx context.Context) (pki.Publish, error)
	// complete cleans up what a completed rotation replaced; idempotent, and
	// retried between rotations.
	complete(ctx context.Context) error
	// rolledBack adjusts the status once the rotation rolled back.
	rolledBack()
	// replaced adjusts the status once the rotation, having published
	// nothing, gave way to another.
	replaced()
	// plan says, for a dry run, what the rotation would issue and in which
	// phases it would publish over installed.
	plan(ctx context.Context, installed pki.Bundle, plan *rotatorv1.RotationPlan) error
}

// strategyFor chooses the strategy of rot from what it pinned at its start:
// its issuer and its key policy. A rotation that has not started is planned
// with a rotation the spec would start.
func (p *pass) strategyFor(rot *rotatorv1.RotationStatus) strategy {
	switch {
	case rot.IssuerRef != nil:
		return &externalIssuer{pass: p, ref: rot.IssuerRef, overlap: rot.KeyPolicy == rotatorv1.KeyPolicyRotate}
	case rot.KeyPolicy == rotatorv1.KeyPolicyRotate:
		return &newKey{pass: p}
	}
	return &sameKey{pass: p}
}

// strategy is the strategy of the rotation in flight, chosen once per pass
// when the steps first ask for it: after the decision, which may have
// started a new rotation.
func (p *pass) strategy() strategy {
	if p.chosen == nil {
		p.chosen = p.strategyFor(p.rot())
	}
	return p.chosen
}

// specRotation is the rotation the spec would start now, for planning.
func specRotation(obj *rotatorv1.MTLSRootRotation) *rotatorv1.RotationStatus {
	return &rotatorv1.RotationStatus{KeyPolicy: obj.Spec.Root.GetKeyPolicy(), IssuerRef: obj.Spec.Issuer.IssuerRef}
}

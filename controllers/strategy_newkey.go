package controllers

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/bundle"
	"github.com/mtls-rotator/mtls-rotator/internal/pki"
	"github.com/mtls-rotator/mtls-rotator/internal/rotation"
)

// newKey replaces the root key (keyPolicy Rotate): cert-manager issues a
// root with a fresh key into a new Secret (a new key generation), and the
// bundle is published in three phases, each proven against the mesh the
// previous one left (pki.ComposePhase):
//
//	Overlap  installed anchors + new root, installed issuer
//	Switch   installed anchors + new root, new issuer
//	Prune    new root, new issuer
//
// With nothing installed, or an installed issuer that has expired, only
// Prune runs. At completion the previous key generations are deleted.
type newKey struct{ *pass }

// begin starts a new key generation in a Secret no earlier object left
// behind; the previous one stays until the rotation completes.
func (s *newKey) begin(ctx context.Context) error {
	gen, err := s.freeRootKeyGeneration(ctx, max(s.obj.Status.RootKeyGeneration, 1)+1)
	if err != nil {
		return err
	}
	s.obj.Status.RootKeyGeneration = gen
	return nil
}

// prepare applies the cert-manager objects; a brought key waits for a
// rotation that reuses it.
func (s *newKey) prepare(ctx context.Context) error { return s.ensureIssuance(ctx) }

// issue waits for cert-manager to issue the new root into the new, empty
// Secret the root Certificate now names (the live Secret is the gate) and
// for the CA Issuer to use it, then has the issuer signed by it.
func (s *newKey) issue(ctx context.Context) error {
	rot, obj := s.rot(), s.obj
	rootCrt, _, err := s.rootCertificate(ctx)
	if err != nil {
		return err
	}
	if _, err := s.issuedSecret(ctx, rootSecretName(obj)); err != nil {
		if err := s.issuanceFailed(rootCrt); err != nil {
			return err
		}
		return s.poll("rotation %s: waiting for a new root key in Secret %s", rot.ID, rootSecretName(obj))
	}
	if ready, err := s.caIssuerReady(ctx); err != nil {
		return err
	} else if !ready {
		return s.poll("rotation %s: waiting for Issuer %s to use the new root", rot.ID, namesFor(obj).RootIssuer)
	}
	return s.issueFromRoot(ctx, rootCrt, false)
}

// verify checks the new root and issuer on their own: each phase is proven
// when it is published.
func (s *newKey) verify(ctx context.Context) error {
	issued, _, err := s.issuedBundle(ctx)
	if err != nil {
		return err
	}
	if _, err := issued.Validate(s.now().Time); err != nil {
		return invalidIssued(err)
	}
	return nil
}

func (s *newKey) next(ctx context.Context) (pki.Publish, error) { return s.phaseBundle(ctx) }

// complete deletes the root keys the rotation replaced.
func (s *newKey) complete(ctx context.Context) error { return s.dropPreviousRootKeys(ctx) }

// rolledBack returns to the previous key generation when the new root
// reached no restored anchor: the next Rotate makes another.
func (s *newKey) rolledBack() {
	if s.rot().Phase == rotatorv1.PhaseOverlap && s.obj.Status.RootKeyGeneration > 1 {
		s.obj.Status.RootKeyGeneration--
	}
}

// replaced returns to the installed key generation: the rotation published
// nothing, so no anchor carries the key it began. The cert-manager objects
// settle back onto the installed key, and settling deletes the unused one.
func (s *newKey) replaced() {
	if s.obj.Status.RootKeyGeneration > 1 {
		s.obj.Status.RootKeyGeneration--
	}
}

func (s *newKey) plan(ctx context.Context, installed pki.Bundle, plan *rotatorv1.RotationPlan) error {
	n, obj := namesFor(s.obj), s.obj
	next := rootSecretNameFor(obj, max(obj.Status.RootKeyGeneration, 1)+1)
	plan.Certificates = append(plan.Certificates,
		fmt.Sprintf("issue root Certificate %s with a new key into Secret %s", n.Root, next),
		fmt.Sprintf("issue issuer Certificate %s signed by that root", n.Issuer))
	return s.planPhases(ctx, installed, plan)
}

// planPhases plans the phases of a trust-overlap rotation over installed,
// and the pods that would hold its gates.
func (p *pass) planPhases(ctx context.Context, installed pki.Bundle, plan *rotatorv1.RotationPlan) error {
	plan.Phases = p.plannedPhases(installed)
	if plan.Phases[0] != rotatorv1.PhaseOverlap {
		return nil // straight to the last phase: no gate
	}
	return p.planGates(ctx, plan)
}

// plannedPhases are the phases a trust-overlap rotation would publish over
// installed: the same choice pki.ComposePhase makes when it runs, and
// rotation.Advance's end at Switch for one that keeps the root it retires.
func (p *pass) plannedPhases(installed pki.Bundle) []rotatorv1.RotationPhase {
	first, _ := pki.FirstPhase(installed, p.now().Time)
	keeps, _ := rotation.KeepsRetiredRoots(&p.obj.Spec.Root.Retired, p.obj.Status.DaprConfiguration)
	var phases []rotatorv1.RotationPhase
	for _, ph := range pki.Phases[indexOfPhase(first):] {
		if ph == pki.Prune && keeps && len(phases) > 0 {
			break
		}
		phases = append(phases, rotatorv1.RotationPhase(ph))
	}
	return phases
}

func indexOfPhase(ph pki.Phase) int {
	for i, p := range pki.Phases {
		if p == ph {
			return i
		}
	}
	return 0
}

// phaseBundle composes and proves the bundle of the current phase from the
// bundle installed before the rotation (kept in the backup Secret), the one
// installed now, and what cert-manager issued. A rotation with nothing to
// overlap with goes straight to its last phase.
func (p *pass) phaseBundle(ctx context.Context) (pki.Publish, error) {
	rot := p.rot()
	if err := p.refreshTarget(ctx); err != nil {
		return pki.Publish{}, err
	}
	installed := p.installed()
	original, err := p.backups().original(ctx, installed, rot.ID)
	if err != nil {
		return pki.Publish{}, err
	}
	issued, root, err := p.issuedBundle(ctx)
	if err != nil {
		return pki.Publish{}, err
	}
	var observed [][]string
	if gated(rot) {
		// Proven against what the pods that run hold, not what the spec restarts.
		if observed, err = p.phaseGate(ctx, pki.Fingerprint(root)); err != nil {
			return pki.Publish{}, err
		}
	}
	pub, err := pki.ComposePhase(pki.PhaseInput{
		Phase: pki.Phase(rot.Phase), Original: original, Live: installed, Issued: issued, ObservedTrust: observed,
	}, p.now().Time)
	if err != nil {
		return pki.Publish{}, p.phaseStall(err)
	}
	if rotatorv1.RotationPhase(pub.Phase) != rot.Phase {
		rotation.SkipToLastPhase(rot)
	}
	return pub, nil
}

// phaseStall says why the bundle of a phase cannot be published.
func (p *pass) phaseStall(err error) error {
	rot := p.rot()
	switch pki.StageOf(err) {
	case pki.IssuedInvalid:
		return invalidIssued(err)
	case pki.OriginalInvalid:
		return stall(rotatorv1.InvalidBundleReason,
			"the bundle installed before rotation %s is not valid (%v); there is no trust to overlap with", rot.ID, err).terminal()
	case pki.InstalledInvalid:
		return stall(rotatorv1.InvalidBundleReason, "the installed bundle is not valid during rotation %s: %v", rot.ID, err).terminal()
	case pki.Unproven:
		return stall(rotatorv1.InvalidBundleReason,
			"the %s bundle of rotation %s cannot be published without failed handshakes: %v", rot.Phase, rot.ID, err).terminal()
	}
	return err
}

// invalidIssued stalls on an issued bundle Sentry would refuse; cert-manager
// may yet issue a good one, so it looks again.
func invalidIssued(err error) error {
	return stall(rotatorv1.InvalidBundleReason, "the issued bundle would be refused by Dapr Sentry: %v", err).retry(time.Minute)
}

// installed is the bundle the target held when last read.
func (p *pass) installed() pki.Bundle { return bundle.FromSecret(p.target.Secret.Data, keysOf(p.obj)) }

// dropPreviousRootKeys deletes the root keys a completed new-key rotation
// replaced, including one a rolled-back attempt left: no published anchor
// carries them any more. Idempotent.
func (p *pass) dropPreviousRootKeys(ctx context.Context) error {
	obj := p.obj
	for gen := obj.Status.RootKeyGeneration - 1; gen >= 1; gen-- {
		previous := &corev1.Secret{}
		err := p.Get(ctx, client.ObjectKey{Namespace: obj.Namespace, Name: rootSecretNameFor(obj, gen)}, previous)
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return err
		}
		if err := p.Delete(ctx, previous); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("deleting the previous root key Secret %s: %w", previous.Name, err)
		}
		p.log.Info("previous root key deleted", "secret", previous.Name)
	}
	return nil
}

// freeRootKeyGeneration returns the first generation from gen on whose root
// Secret does not exist: Secrets outlive their object, and a re-created object
// counts from the start again.
func (p *pass) freeRootKeyGeneration(ctx context.Context, gen int32) (int32, error) {
	for ; ; gen++ {
		err := p.reader().Get(ctx, client.ObjectKey{Namespace: p.obj.Namespace, Name: rootSecretNameFor(p.obj, gen)}, &corev1.Secret{})
		if apierrors.IsNotFound(err) {
			return gen, nil
		}
		if err != nil {
			return 0, fmt.Errorf("looking for a free root key Secret: %w", err)
		}
	}
}

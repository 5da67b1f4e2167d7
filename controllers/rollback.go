package controllers

import (
	"context"
	"crypto/x509"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/bundle"
	"github.com/mtls-rotator/mtls-rotator/internal/pki"
	"github.com/mtls-rotator/mtls-rotator/internal/restart"
	"github.com/mtls-rotator/mtls-rotator/internal/rotation"
)

// rollbackID is the restart annotation value of a workload restarted on the
// restored bundle; it differs from every publish's, so it is never mistaken
// for one, and it marks a rollback done for a pass that read an older status.
func rollbackID(restartID string) string { return restartID + "-rollback" }

// beginRollBack moves the rotation to RollingBack after the control-plane
// workload stuck failed to roll out on what the current phase published, and
// records it before anything is restored, so that a restarted operator
// finishes it. With nothing to go back to (a first issuance), or a replaced
// bundle that would not help, it stalls instead and the rotation waits.
func (p *pass) beginRollBack(ctx context.Context, stuck restart.Ref) error {
	if _, _, err := p.restorable(ctx, stuck); err != nil {
		return err
	}
	rot := p.rot()
	rotation.BeginRollBack(rot, stuck.String(), p.now())
	if err := p.checkpoint(ctx, "the rollback"); err != nil {
		return err
	}
	return p.stepRollingBack(ctx)
}

// stepRollingBack restores the content the current phase's publish
// replaced to the Secret and ConfigMap, byte for byte, restarts the stuck
// workload on it, and ends the rotation as RolledBack: it does not start
// again until spec.trigger changes. Every part is idempotent.
func (p *pass) stepRollingBack(ctx context.Context) error {
	rot, obj := p.rot(), p.obj
	stuck, err := restart.ParseRef(rot.RollingBack)
	if err != nil {
		return fmt.Errorf("status.rotation.rollingBack: %w", err)
	}
	replaced, parsed, err := p.restorable(ctx, stuck)
	if err != nil {
		return err
	}
	restartID := rotation.RestartID(rot)
	// A pass that read the status from before a rollback done in the world
	// finishes it again, quietly.
	done, err := p.restartedFor(ctx, stuck, rollbackID(restartID))
	if err != nil {
		return err
	}
	if err := p.refreshTarget(ctx); err != nil {
		return err
	}
	cmCA := replaced.ConfigMapCA
	if !replaced.HasConfigMapCA {
		cmCA = replaced.Bundle.TrustAnchors
	}
	if err := p.writeBundle(ctx, replaced.Bundle, cmCA, rot.ID); err != nil {
		return fmt.Errorf("restoring the bundle: %w", err)
	}
	// Restarted once: a second patch would carry a new restarted-at and roll
	// the workload out again.
	if !done {
		if err := p.restartWorkload(ctx, stuck, rollbackID(restartID)); err != nil {
			return err
		}
	}
	setPublished(obj, bundle.Hash(replaced.Bundle), parsed)
	p.strategy().rolledBack()
	now := p.now()
	rotation.RollBack(rot, now)
	p.log.Info("rotation rolled back", "rotation", rot.ID, "phase", rot.Phase, "workload", stuck.String())
	msg := fmt.Sprintf("%s after rotation %s published%s: the bundle it replaced was restored to Secret %s/%s and ConfigMap %s/%s and %s restarted on it; no application was restarted in this phase",
		p.rolloutFailure(stuck), rot.ID, phaseSuffix(rot), obj.Namespace, p.target.Secret.Name, obj.Namespace, p.target.ConfigMap.Name, stuck)
	s := stall(rotatorv1.RolledBackReason, "%s; change spec.trigger to rotate again", msg)
	if retryAt, ok := rotation.RenewalRetryAt(&obj.Status); ok {
		// A renewal needs no new trigger: said here as every later pass says it.
		s = stall(rotatorv1.RolledBackReason, "%s", rotation.WithRetryNote(msg, retryAt)).retry(retryAt.Sub(now.Time) + time.Second)
	}
	if done {
		return s.quiet()
	}
	p.Metrics.rotationEnded(obj, rot, ResultRolledBack, now.Time)
	return s
}

// rolloutFailure says why the rotation rolls back; the same words on every
// pass, so that a replay raises no new event.
func (p *pass) rolloutFailure(stuck restart.Ref) string {
	return fmt.Sprintf("control-plane workload %s did not roll out within %s", stuck, p.obj.Spec.ControlPlane.GetRolloutTimeout())
}

// restorable returns what the current publish replaced, when restoring it
// can help; otherwise a RolloutTimeout stall that says why nothing is restored.
func (p *pass) restorable(ctx context.Context, stuck restart.Ref) (bundle.Replaced, *pki.ParsedBundle, error) {
	rot := p.rot()
	why := p.rolloutFailure(stuck)
	replaced, recorded, err := p.backups().replaced(ctx, rotation.RestartID(rot))
	if err != nil {
		return bundle.Replaced{}, nil, err
	}
	notRestored := func(format string, args ...any) error {
		return stall(rotatorv1.RolloutTimeoutReason, "%s; no application was restarted; %s", why, fmt.Sprintf(format, args...)).retry(p.pollInterval())
	}
	if !recorded {
		// Published by an operator version that kept no such record.
		return bundle.Replaced{}, nil, notRestored("there is no record of the bundle rotation %s replaced, so nothing is restored", rot.ID)
	}
	if replaced.Bundle.IsEmpty() {
		return bundle.Replaced{}, nil, notRestored("the bundle was empty before rotation %s, so there is nothing to roll back to", rot.ID)
	}
	now := p.now().Time
	parsed, err := pki.ValidateInstalled(replaced.Bundle, now)
	if err != nil {
		return bundle.Replaced{}, nil, notRestored("the bundle rotation %s replaced would not pass Dapr Sentry's checks (%v), so it is not restored", rot.ID, err)
	}
	if cutOff := pki.CutOff(parsed, now); cutOff != nil {
		return bundle.Replaced{}, nil, notRestored("the bundle rotation %s replaced holds %s %s that expired at %s, so restoring it would not help: the new bundle stays",
			rot.ID, article(cutOff.What), cutOff.What, cutOff.NotAfter.UTC().Format(time.RFC3339))
	}
	// Restored, it must outlive another attempt: one retried halfway to its
	// expiry (rotation.RenewalRetryAt) needs as long as this one took.
	if expires := expiryOf(parsed); expires.Sub(now) < 2*now.Sub(rot.StartedAt.Time) {
		return bundle.Replaced{}, nil, notRestored("the bundle rotation %s replaced expires at %s, sooner than another attempt as long as this one (started at %s) could end, so restoring it would not help: the new bundle stays",
			rot.ID, expires.UTC().Format(time.RFC3339), rot.StartedAt.UTC().Format(time.RFC3339))
	}
	return replaced, parsed, nil
}

// expiryOf is when a bundle stops working, as status shows it: the first
// expiry of its issuer, its newest root and the root its issuer chains to
// (rotation.RenewalRetryAt).
func expiryOf(b *pki.ParsedBundle) time.Time {
	expires := b.Issuer().NotAfter
	for _, root := range []*x509.Certificate{b.Anchors[len(b.Anchors)-1], b.IssuerRoot()} {
		if root != nil && root.NotAfter.Before(expires) {
			expires = root.NotAfter
		}
	}
	return expires
}

// article is the indefinite article of "issuer" or "root".
func article(what string) string {
	if what == "issuer" {
		return "an"
	}
	return "a"
}

// restartedFor reports whether the workload's pod template carries the
// restart id. It is read live: an application that no longer enables Dapr
// is cached as its identity alone (trimWorkloads), and a rollback is rare.
func (p *pass) restartedFor(ctx context.Context, ref restart.Ref, id string) (bool, error) {
	o, err := workloadObject(ref.Kind)
	if err != nil {
		return false, err
	}
	if err := p.reader().Get(ctx, types.NamespacedName{Namespace: ref.Namespace, Name: ref.Name}, o); err != nil {
		return false, client.IgnoreNotFound(err)
	}
	return restart.RestartedFor(templateAnnotations(o), id), nil
}

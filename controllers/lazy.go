package controllers

import (
	"context"
	"crypto/x509"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/bundle"
	"github.com/mtls-rotator/mtls-rotator/internal/pki"
	"github.com/mtls-rotator/mtls-rotator/internal/restart"
)

// A lazy rotation (spec.applications.lazy) keeps the root key, so a pod that
// still holds the previous root certificate verifies the new issuer's
// certificates with the same key until that certificate expires. It publishes
// and restarts the control plane as any rotation does, then leaves the
// applications to their owners' redeploys, which the injector serves the new
// anchors, and restarts only those that have not converged, restartBefore
// ahead of that expiry.

// lazyWait is what status.rotation.waitingFor names while a lazy rotation
// waits for its applications' owners to redeploy them.
const lazyWait = "owners' redeploys"

// lazyResync bounds a lazy wait between two looks. Pod events wake it
// sooner; this is only a safety net.
const lazyResync = 10 * time.Minute

// lazy returns the spec of the lazy mode when it applies to the rotation in
// flight: one that keeps the root key. Nil otherwise.
func (p *pass) lazy() *rotatorv1.LazyRestartSpec {
	if _, sameKey := p.strategy().(*sameKey); !sameKey {
		return nil
	}
	return p.obj.Spec.Applications.Lazy
}

// deferRestarts holds the restarts of a lazy rotation after its canary's
// until its deadline and ends the pass with a deferred wait; nil when the
// restarts are due now: the deadline came, or a newer rotation is asked for.
// The deadline is recorded before the wait starts. The canary went first
// (canaryGate), so owners' redeploys do not wait days on a stale injector.
func (p *pass) deferRestarts(ctx context.Context, plan restart.WavePlan) error {
	lazy, rot, now := p.lazy(), p.rot(), p.now()
	if lazy == nil {
		return nil
	}
	if rot.DeferredUntil == nil {
		until, err := p.lazyDeadline(ctx, lazy.GetRestartBefore())
		if err != nil {
			return err
		}
		rot.DeferredUntil = &metav1.Time{Time: until}
	}
	until, waiting := rot.DeferredUntil.Time, plan.Total-plan.Skipped-plan.Restarted-len(plan.Waiting)
	switch {
	case !until.After(now.Time):
		return nil
	case rot.Trigger != p.obj.Spec.Trigger:
		p.normal(rotatorv1.RestartsDeferredReason, "Restart", "rotation %s: spec.trigger asks for another rotation: the %d applications that have not converged are restarted now",
			rot.ID, waiting)
		return nil
	}
	msg := fmt.Sprintf("rotation %s published; %d of %d applications hold the new root; the other %d keep working on the previous certificate of the same root key and are restarted from %s unless their owners redeploy them first",
		rot.ID, plan.Skipped+plan.Restarted, plan.Total, waiting, until.UTC().Format(time.RFC3339))
	if rot.WaitingFor != lazyWait {
		rot.WaitingFor, rot.WaitingSince = lazyWait, &now
		p.normal(rotatorv1.RestartsDeferredReason, "Restart", "%s", msg)
	}
	return &waitError{Deferred: true, RetryAfter: min(until.Sub(now.Time)+time.Second, lazyResync), Message: msg}
}

// lazyDeadline is the deadline of the rotation in flight, from the anchors
// installed before it, kept in the backup Secret.
func (p *pass) lazyDeadline(ctx context.Context, restartBefore time.Duration) (time.Time, error) {
	s, err := p.backups().read(ctx)
	if err != nil {
		return time.Time{}, err
	}
	return deadlineOver(bundle.FromSecret(s.Data, keysOf(p.obj)).TrustAnchors, p.obj.Status.Root, restartBefore), nil
}

// deadlineOver is restartBefore ahead of the earliest expiry among the
// certificates of root's key in anchors (those installed before the
// rotation): until then, the pods holding one accept the new issuer. With
// none (a first issuance, anchors that do not parse), it is the zero time:
// restart now, as without lazy.
func deadlineOver(anchors []byte, root *rotatorv1.CertificateStatus, restartBefore time.Duration) time.Time {
	var expires time.Time
	for _, c := range sameKeyAs(root, anchors) {
		if expires.IsZero() || c.NotAfter.Before(expires) {
			expires = c.NotAfter
		}
	}
	if expires.IsZero() {
		return time.Time{}
	}
	return expires.Add(-restartBefore)
}

// sameKeyAs returns the certificates in anchors made with root's key: each
// verifies what root's issuer signs until it expires. None when anchors do
// not parse or no root was published.
func sameKeyAs(root *rotatorv1.CertificateStatus, anchors []byte) []*x509.Certificate {
	certs, err := pki.ParseCertificates(anchors)
	if err != nil || root == nil {
		return nil
	}
	var same []*x509.Certificate
	for _, c := range certs {
		if pki.PublicKeyFingerprint(c) == root.PublicKeySHA256 {
			same = append(same, c)
		}
	}
	return same
}

// planLazy says in a dry-run plan from when a lazy rotation would restart
// the applications its owners have not redeployed by then.
func (p *pass) planLazy(plan *rotatorv1.RotationPlan) {
	lazy := p.obj.Spec.Applications.Lazy
	if _, sameKey := p.strategyFor(specRotation(p.obj)).(*sameKey); lazy == nil || !sameKey {
		return
	}
	until := deadlineOver(p.installed().TrustAnchors, p.obj.Status.Root, lazy.GetRestartBefore())
	if now := p.now(); until.Before(now.Time) {
		until = now.Time
	}
	plan.RestartsDeferredUntil = &metav1.Time{Time: until}
}

package controllers

import (
	"context"
	"fmt"
	"time"

	"github.com/fluxcd/pkg/runtime/conditions"
	corev1 "k8s.io/api/core/v1"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/rotation"
)

// reconcileRotation gathers what the decision needs, decides with
// rotation.Decide, and acts on the decision: it gives up an unpublished
// rotation, restores a lost completion record, holds, stalls, settles,
// starts a rotation, or refuses spec changes a published one cannot take.
func (p *pass) reconcileRotation(ctx context.Context) error {
	obj := p.obj
	var seen rotation.Observed
	if rotation.NeedsDriftCheck(&obj.Spec, &obj.Status, p.now().Time) {
		drift, err := p.drift(ctx)
		if err != nil {
			return err
		}
		seen.Drift = drift
	}
	d := rotation.Decide(&obj.Spec, &obj.Status, seen, p.now().Time)
	if d.Replace != "" {
		p.replace()
	}
	if d.RecordCompleted {
		recordCompleted(obj, obj.Status.Rotation)
	}
	switch {
	case d.Action == rotation.Hold && !d.RetryAt.IsZero():
		// The failure stays on display until the renewal is tried again.
		return stall(d.Reason, "%s", d.Message).retry(d.RetryAt.Sub(p.now().Time) + time.Second)
	case d.Action == rotation.Hold:
		// The failure stays on display until a new trigger asks for another attempt.
		return stall(d.Reason, "%s", d.Message)
	case d.Reason == rotatorv1.TrustBundleDriftReason:
		conditions.MarkTrue(obj, rotatorv1.TrustBundleDriftCondition, rotatorv1.TrustBundleDriftReason, "%s", seen.Drift)
		return stall(d.Reason, "%s", d.Message)
	}
	if d.Settled {
		conditions.Delete(obj, rotatorv1.TrustBundleDriftCondition)
		if err := p.settle(ctx); err != nil {
			return err
		}
	}
	switch d.Action {
	case rotation.Idle:
		markReady(obj, "%s", d.Message)
		return errDone
	case rotation.Stall:
		return stall(d.Reason, "%s", d.Message)
	case rotation.Begin:
		return p.begin(ctx, d)
	}
	p.announceDeferrals(d)
	return nil
}

// replace gives up the rotation in status: it published nothing, and a new
// trigger, key policy or issuer asks for another.
func (p *pass) replace() {
	obj, rot := p.obj, p.obj.Status.Rotation
	p.normal("RotationReplaced", "Rotate",
		"rotation %s had published nothing; replaced by a rotation for trigger %q with keyPolicy %s, issuing from %s",
		rot.ID, obj.Spec.Trigger, obj.Spec.Root.GetKeyPolicy(), describeIssuerRef(obj.Spec.Issuer.IssuerRef))
	p.Metrics.rotationEnded(obj, rot, ResultReplaced, p.now().Time)
	p.strategyFor(rot).replaced()
	obj.Status.Rotation = nil
}

// settle keeps the settled state in shape between rotations: what the last
// rotation's strategy leaves to clean up, the brought key, the cert-manager
// objects, no root key beyond the installed generation, and the backup owned.
func (p *pass) settle(ctx context.Context) error {
	if rot := p.rot(); rot != nil && rot.Step == rotatorv1.StepCompleted {
		if err := p.strategyFor(rot).complete(ctx); err != nil {
			return err
		}
	}
	if err := p.importRootKey(ctx); err != nil {
		return err
	}
	if err := p.ensureIssuance(ctx); err != nil {
		return err
	}
	if err := p.dropUnusedRootKeys(ctx); err != nil {
		return err
	}
	return p.backups().own(ctx)
}

// retiredRootsUnknown is why a rotation started now could not tell whether
// to keep the roots it retires (spec.root.retired.policy Auto, and Dapr's
// Configurations unreadable this pass), or nil.
func (p *pass) retiredRootsUnknown() error {
	if p.obj.Spec.Root.Retired.GetPolicy() != rotatorv1.RetiredRootsAuto {
		return nil
	}
	return p.daprConfigurationErr
}

// daprConfigurationRetry is how soon a rotation held by an unreadable Dapr
// Configuration looks again.
const daprConfigurationRetry = 30 * time.Second

// begin starts the rotation the decision asks for, and records it before
// anything is issued.
func (p *pass) begin(ctx context.Context, d rotation.Decision) error {
	obj, s := p.obj, d.Start
	if err := p.retiredRootsUnknown(); err != nil {
		// Not decided on an unknown answer: dropping a root that signed
		// workflow histories would fail them for good.
		return stall(rotatorv1.DaprConfigurationUnknownReason,
			"whether Dapr's %s is on decides whether the roots a rotation retires stay in the trust anchors (spec.root.retired.policy Auto), and it is not known: %v; no rotation starts until Dapr's Configurations can be read, or spec.root.retired.policy is Keep or Drop",
			WorkflowHistorySigningFeature, err).retry(daprConfigurationRetry)
	}
	if s.Cause == rotatorv1.CauseRenewal {
		p.normal("RenewalDue", "Renew", "%s", d.Message)
	}
	rot := rotation.Start(rotation.NewID(obj.UID, obj.Spec.Trigger, s.PreviousID), obj.Spec.Trigger, rotation.SpecHash(obj.Spec), s.KeyPolicy, p.now())
	rot.IssuerRef = obj.Spec.Issuer.IssuerRef.DeepCopy()
	rot.Cause, rot.Renews = s.Cause, string(s.Renews)
	// Decided once, with the start: the Configuration may change mid-way.
	rot.KeepsRetiredRoots, _ = rotation.KeepsRetiredRoots(&obj.Spec.Root.Retired, obj.Status.DaprConfiguration)
	obj.Status.Rotation = rot
	obj.Status.Applications = nil
	obj.Status.Plan = nil
	conditions.Delete(obj, rotatorv1.TrustBundleDriftCondition)
	// Recorded with the start, so that a replay does not start it again.
	if err := p.strategyFor(rot).begin(ctx); err != nil {
		return err
	}
	markProgress(obj, "rotation %s started", rot.ID)
	// The rotation of this generation is what the object does from now on;
	// said with the start, the pass's waiting message is progress only.
	obj.Status.ObservedGeneration = obj.Generation
	started := fmt.Sprintf("trigger %q", obj.Spec.Trigger)
	if s.Cause == rotatorv1.CauseRenewal {
		started = fmt.Sprintf("automatic renewal of the %s", rotation.RenewsWhat(s.Renews))
	}
	p.normal("RotationStarted", "Rotate", "rotation %s started (%s)", rot.ID, started)
	p.log.Info("rotation started", "rotation", rot.ID, "trigger", obj.Spec.Trigger)
	return p.checkpoint(ctx, fmt.Sprintf("the start of rotation %s", rot.ID))
}

// announceDeferrals refuses, once each, a key policy or issuer the spec asks
// for while a published rotation runs: it finishes as it started, and the
// change applies to the next rotation (a new trigger).
func (p *pass) announceDeferrals(d rotation.Decision) {
	obj, rot := p.obj, p.obj.Status.Rotation
	if d.DeferKeyPolicy != "" {
		rot.DeferredKeyPolicy = d.DeferKeyPolicy
		p.event(corev1.EventTypeWarning, rotatorv1.KeyPolicyChangeDeferredReason, "Rotate",
			"keyPolicy %s refused for rotation %s, which runs with %s and finishes so; change spec.trigger afterwards to rotate with %s",
			d.DeferKeyPolicy, rot.ID, rot.KeyPolicy, d.DeferKeyPolicy)
	}
	if d.DeferIssuerRef {
		rot.IssuerRefChangeDeferred = true
		p.event(corev1.EventTypeWarning, rotatorv1.IssuerRefChangeDeferredReason, "Rotate",
			"spec.issuer.issuerRef refused for rotation %s, which issues from %s and finishes so; change spec.trigger afterwards to rotate onto %s",
			rot.ID, describeIssuerRef(rot.IssuerRef), describeIssuerRef(obj.Spec.Issuer.IssuerRef))
	}
}

// recordCompleted records a completed rotation as the last one and marks the
// object Ready.
func recordCompleted(obj *rotatorv1.MTLSRootRotation, rot *rotatorv1.RotationStatus) {
	obj.Status.LastCompletedRotation = rotation.Completion(rot)
	rot.Message = "completed"
	markReady(obj, "rotation %s completed at %s", rot.ID, obj.Status.LastCompletedRotation.FinishedAt.Format(time.RFC3339))
}

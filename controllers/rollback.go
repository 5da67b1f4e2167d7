package controllers

import (
	"context"
	"fmt"
	"time"

	"github.com/fluxcd/pkg/runtime/patch"
	corev1 "k8s.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/bundle"
	"github.com/mtls-rotator/mtls-rotator/internal/pki"
	"github.com/mtls-rotator/mtls-rotator/internal/restart"
	"github.com/mtls-rotator/mtls-rotator/internal/rotation"
)

// ReplacedByAnnotation on the backup Secret names the publish (a rotation
// id, with its phase) whose overwritten bundle the Secret's replaced.* keys hold.
const ReplacedByAnnotation = "mtls.rotator.dev/replaced-by"

// rollbackID is the restart annotation value of a workload restarted on the
// restored bundle; it differs from every publish's, so it is never mistaken
// for one, and it marks a rollback under way for a replay after a crash.
func rollbackID(restartID string) string { return restartID + "-rollback" }

// keepReplaced records, once per publish, the Secret and ConfigMap content
// the publish is about to overwrite, in the backup Secret. A replay of the
// publish finds it recorded and does not overwrite it with what it wrote.
func (r *MTLSRootRotationReconciler) keepReplaced(ctx context.Context, obj *rotatorv1.MTLSRootRotation, t *target, restartID string) error {
	s := &corev1.Secret{}
	if err := r.reader().Get(ctx, client.ObjectKey{Namespace: obj.Namespace, Name: backupName(obj)}, s); err != nil {
		return fmt.Errorf("reading the backup Secret: %w", err)
	}
	if s.Annotations[ReplacedByAnnotation] == restartID {
		return nil
	}
	keys := keysOf(obj)
	cmCA, hasCMCA := t.ConfigMap.Data[keys.CA]
	s.Data = bundle.ReplacedData(s.Data, bundle.Replaced{
		Bundle: bundle.FromSecret(t.Secret.Data, keys), ConfigMapCA: []byte(cmCA), HasConfigMapCA: hasCMCA,
	}, keys)
	if s.Annotations == nil {
		s.Annotations = map[string]string{}
	}
	s.Annotations[ReplacedByAnnotation] = restartID
	if err := r.Update(ctx, s); err != nil {
		return fmt.Errorf("recording the bundle publish %s replaces: %w", restartID, err)
	}
	return nil
}

// rollBack ends the rotation after a control-plane workload failed to roll
// out on what the current phase published: the Secret and ConfigMap get back
// the content that publish replaced, byte for byte, the stuck workload is
// restarted on it, and the rotation stops as RolledBack until spec.trigger
// changes. With nothing to go back to (a first issuance) or a replaced bundle
// Sentry would refuse, nothing is restored and the rotation waits, Stalled.
//
// The intent is recorded in status before the restore, so that a restarted
// operator finishes it. announce is false when the world shows the rollback
// done already (a pass that read an older status): it raises no new event.
func (r *MTLSRootRotationReconciler) rollBack(ctx context.Context, obj *rotatorv1.MTLSRootRotation, t *target, patcher *patch.SerialPatcher, stuck restart.Ref, announce bool) stepResult {
	rot := obj.Status.Rotation
	// The same words on every pass, so that a replay raises no new event.
	why := fmt.Sprintf("control-plane workload %s did not roll out within %s", stuck, obj.Spec.ControlPlane.GetRolloutTimeout())
	restartID := rotation.RestartID(rot)
	backup := &corev1.Secret{}
	if err := r.reader().Get(ctx, client.ObjectKey{Namespace: obj.Namespace, Name: backupName(obj)}, backup); err != nil {
		return fail(fmt.Errorf("reading the backup Secret: %w", err))
	}
	keys := keysOf(obj)
	if backup.Annotations[ReplacedByAnnotation] != restartID {
		// Published by an operator version that kept no such record.
		r.markStalled(ctx, obj, rotatorv1.RolloutTimeoutReason,
			"%s; no application was restarted; there is no record of the bundle rotation %s replaced, so nothing is restored", why, rot.ID)
		return waitFor(r.poll())
	}
	replaced := bundle.ReplacedFrom(backup.Data, keys)
	if replaced.Bundle.IsEmpty() {
		r.markStalled(ctx, obj, rotatorv1.RolloutTimeoutReason,
			"%s; no application was restarted; the bundle was empty before rotation %s, so there is nothing to roll back to", why, rot.ID)
		return waitFor(r.poll())
	}
	now := r.now()
	parsed, err := validateInstalled(replaced.Bundle, now.Time)
	if err != nil {
		r.markStalled(ctx, obj, rotatorv1.RolloutTimeoutReason,
			"%s; no application was restarted; the bundle rotation %s replaced would not pass Dapr Sentry's checks (%v), so it is not restored", why, rot.ID, err)
		return waitFor(r.poll())
	}
	if pki.Expired(now.Time, parsed.Chain...) {
		r.markStalled(ctx, obj, rotatorv1.RolloutTimeoutReason,
			"%s; no application was restarted; the bundle rotation %s replaced holds an issuer that expired at %s, so restoring it would not help: the new bundle stays",
			why, rot.ID, parsed.Issuer().NotAfter.UTC().Format(time.RFC3339))
		return waitFor(r.poll())
	}
	if rot.RollingBack != stuck.String() {
		rot.RollingBack = stuck.String()
		if err := checkpoint(ctx, patcher, obj); err != nil {
			return fail(fmt.Errorf("recording the rollback: %w", err))
		}
	}
	if err := r.refreshTarget(ctx, t); err != nil {
		return fail(err)
	}
	cmCA := replaced.ConfigMapCA
	if !replaced.HasConfigMapCA {
		cmCA = replaced.Bundle.TrustAnchors
	}
	if err := r.writeBundle(ctx, obj, t, replaced.Bundle, cmCA, rot.ID); err != nil {
		return fail(fmt.Errorf("restoring the bundle: %w", err))
	}
	if err := r.restartWorkload(ctx, stuck, rollbackID(restartID)); err != nil {
		return fail(err)
	}
	setPublished(obj, bundle.Hash(replaced.Bundle), parsed)
	phase := ""
	if rot.Phase != "" {
		phase = fmt.Sprintf(" (%s phase)", rot.Phase)
	}
	if rot.Phase == rotatorv1.PhaseOverlap && obj.Status.RootKeyGeneration > 1 {
		// The new root reached no restored anchor: later rotations go on
		// with the previous key, and the next Rotate makes another.
		obj.Status.RootKeyGeneration--
	}
	rotation.RollBack(rot, now)
	ctrlLog(ctx).Info("rotation rolled back", "rotation", rot.ID, "phase", rot.Phase, "workload", stuck.String())
	msg := fmt.Sprintf("%s after rotation %s published%s: the bundle it replaced was restored to Secret %s/%s and ConfigMap %s/%s and %s restarted on it; no application was restarted in this phase; change spec.trigger to rotate again",
		why, rot.ID, phase, obj.Namespace, t.Secret.Name, obj.Namespace, t.ConfigMap.Name, stuck)
	if announce {
		r.markStalled(ctx, obj, rotatorv1.RolledBackReason, "%s", msg)
		r.Metrics.rotationEnded(obj, rot, ResultRolledBack, now.Time)
	} else {
		setStalled(ctx, obj, rotatorv1.RolledBackReason, msg)
	}
	return waitFor(ctrl.Result{})
}

// Package controllers holds the reconcilers of mtls-rotator.
package controllers

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	"github.com/fluxcd/pkg/runtime/events"
	"github.com/fluxcd/pkg/runtime/patch"
	"github.com/fluxcd/pkg/runtime/predicates"
	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/bundle"
	"github.com/mtls-rotator/mtls-rotator/internal/expiry"
	"github.com/mtls-rotator/mtls-rotator/internal/rotation"
)

// ControllerName names the controller in logs, events and field managers.
const ControllerName = "mtls-rotator"

// ownedConditions are the condition types this controller writes.
var ownedConditions = []string{meta.ReadyCondition, meta.ReconcilingCondition, meta.StalledCondition,
	rotatorv1.TrustBundleDriftCondition, rotatorv1.ExpiringSoonCondition}

// MTLSRootRotationReconciler reconciles MTLSRootRotation objects: it issues
// the root and issuer through cert-manager, publishes them to Dapr Sentry's
// Secret and ConfigMap, and restarts the control plane and the applications.
type MTLSRootRotationReconciler struct {
	client.Client
	// APIReader reads without the cache, for what must not be stale: the
	// issued certificates and the bundle about to be overwritten.
	APIReader     client.Reader
	EventRecorder events.Recorder
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// PollInterval is how often a rotation that waits on rollouts or issuance
	// looks again (watches wake it sooner); 2s when zero.
	PollInterval time.Duration
	// Metrics records Prometheus metrics; nil records none.
	Metrics *Metrics
}

// Namespace-scoped access is granted in the Dapr control-plane namespace only
// (a Role); only workloads and namespaces, which applications span, are
// cluster-wide (a ClusterRole).
// +kubebuilder:rbac:groups=mtls.rotator.dev,namespace=dapr-system,resources=mtlsrotations,verbs=get;list;watch
// +kubebuilder:rbac:groups=mtls.rotator.dev,namespace=dapr-system,resources=mtlsrotations/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=mtls.rotator.dev,namespace=dapr-system,resources=mtlsrotations/finalizers,verbs=update
// +kubebuilder:rbac:groups="",namespace=dapr-system,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=events.k8s.io,namespace=dapr-system,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups="",namespace=dapr-system,resources=secrets,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",namespace=dapr-system,resources=configmaps,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups=cert-manager.io,namespace=dapr-system,resources=certificates;issuers,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=cert-manager.io,namespace=dapr-system,resources=certificates/status,verbs=update
// +kubebuilder:rbac:groups=dapr.io,namespace=dapr-system,resources=configurations,verbs=get
// +kubebuilder:rbac:groups="",resources=namespaces,verbs=get;list;watch
// +kubebuilder:rbac:groups=apps,resources=deployments;statefulsets;daemonsets,verbs=get;list;watch;patch

// SetupWithManager registers the reconciler with the manager.
func (r *MTLSRootRotationReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		Named(ControllerName).
		For(&rotatorv1.MTLSRootRotation{}, builder.WithPredicates(
			predicate.Or(predicate.GenerationChangedPredicate{}, predicates.ReconcileRequestedPredicate{}),
		)).
		Owns(&cmapi.Certificate{}).
		// A sibling created or deleted may start or end a Conflict.
		Watches(&rotatorv1.MTLSRootRotation{}, handler.EnqueueRequestsFromMapFunc(r.inNamespace), builder.WithPredicates(predicate.Funcs{
			UpdateFunc: func(event.UpdateEvent) bool { return false }, GenericFunc: func(event.GenericEvent) bool { return false },
		})).
		// The bundle appearing, or changing under us, wakes the rotations of its namespace.
		Watches(&corev1.Secret{}, handler.EnqueueRequestsFromMapFunc(r.inNamespace)).
		Watches(&corev1.ConfigMap{}, handler.EnqueueRequestsFromMapFunc(r.inNamespace)).
		Complete(r)
}

func (r *MTLSRootRotationReconciler) inNamespace(ctx context.Context, o client.Object) []reconcile.Request {
	list := &rotatorv1.MTLSRootRotationList{}
	if err := r.List(ctx, list, client.InNamespace(o.GetNamespace())); err != nil {
		return nil
	}
	reqs := make([]reconcile.Request, 0, len(list.Items))
	for _, item := range list.Items {
		reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&item)})
	}
	return reqs
}

func (r *MTLSRootRotationReconciler) now() metav1.Time {
	if r.Now != nil {
		return metav1.NewTime(r.Now().UTC().Truncate(time.Second))
	}
	return metav1.NewTime(time.Now().UTC().Truncate(time.Second))
}

func (r *MTLSRootRotationReconciler) poll() ctrl.Result {
	if r.PollInterval > 0 {
		return ctrl.Result{RequeueAfter: r.PollInterval}
	}
	return ctrl.Result{RequeueAfter: 2 * time.Second}
}

func ctrlLog(ctx context.Context) logr.Logger { return ctrl.LoggerFrom(ctx) }

// reader is the uncached reader, or the client when none is set.
func (r *MTLSRootRotationReconciler) reader() client.Reader {
	if r.APIReader != nil {
		return r.APIReader
	}
	return r.Client
}

// pass records what one reconciliation did, so that the deferred finalize
// can tell a stall found now from one left by an earlier pass.
type pass struct {
	ran     bool
	stalled bool
}

type passKey struct{}

func passOf(ctx context.Context) *pass {
	if p, ok := ctx.Value(passKey{}).(*pass); ok {
		return p
	}
	return &pass{}
}

// Reconcile brings one MTLSRootRotation a step closer to its declared state.
func (r *MTLSRootRotationReconciler) Reconcile(ctx context.Context, req ctrl.Request) (result ctrl.Result, retErr error) {
	start := time.Now()
	obj := &rotatorv1.MTLSRootRotation{}
	if err := r.Get(ctx, req.NamespacedName, obj); err != nil {
		if apierrors.IsNotFound(err) {
			r.Metrics.forget(req.Namespace, req.Name)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	patcher := patch.NewSerialPatcher(obj, r.Client)
	p := &pass{}
	ctx = context.WithValue(ctx, passKey{}, p)

	defer func() {
		r.finalizeStatus(obj, p, retErr)
		if p.ran && retErr == nil {
			// Wake exactly when the expiry calls for something next
			// (a warning, a renewal), rather than polling; at once when
			// a renewal fell due while this pass finished a rotation.
			st := r.expiryOf(obj)
			next := st.Next
			if st.Due != expiry.None && !p.stalled && !rotation.InFlight(obj.Status.Rotation) {
				next = r.now().Time
			}
			if !next.IsZero() {
				if d := next.Sub(r.now().Time) + time.Second; result.RequeueAfter == 0 || d < result.RequeueAfter {
					result.RequeueAfter = d
				}
			}
		}
		if err := patcher.Patch(ctx, obj, patch.WithOwnedConditions{Conditions: ownedConditions}, patch.WithFieldOwner(ControllerName)); err != nil && !apierrors.IsNotFound(err) {
			// The status must be retried even after a terminal error, so
			// the reconcile error is kept as text, not wrapped.
			if retErr != nil {
				retErr = fmt.Errorf("patching status: %w (after: %v)", err, retErr)
			} else {
				retErr = fmt.Errorf("patching status: %w", err)
			}
		}
		r.Metrics.recordReconcile(ctx, obj, start)
	}()

	if obj.Spec.Suspend {
		ctrlLog(ctx).Info("reconciliation is suspended")
		return ctrl.Result{}, nil
	}
	p.ran = true
	return r.reconcile(ctx, obj, patcher)
}

// finalizeStatus records what the reconciliation handled; conditions are set
// by the steps themselves, except that a Stalled condition this pass did not
// confirm is dropped.
func (r *MTLSRootRotationReconciler) finalizeStatus(obj *rotatorv1.MTLSRootRotation, p *pass, retErr error) {
	if v, ok := meta.ReconcileAnnotationValue(obj.GetAnnotations()); ok {
		obj.Status.LastHandledReconcileAt = v
	}
	if !p.ran {
		return
	}
	if !p.stalled {
		conditions.Delete(obj, meta.StalledCondition)
	}
	r.markExpiry(obj, r.expiryOf(obj))
	terminal := errors.Is(retErr, reconcile.TerminalError(nil))
	if retErr == nil || p.stalled || terminal {
		obj.Status.ObservedGeneration = obj.Generation
	}
	if retErr != nil && !p.stalled && !terminal {
		conditions.MarkFalse(obj, meta.ReadyCondition, meta.ProgressingWithRetryReason, "%s", retErr)
		conditions.MarkReconciling(obj, meta.ProgressingWithRetryReason, "%s", retErr)
	}
}

// markProgress says the rotation is under way.
func markProgress(obj *rotatorv1.MTLSRootRotation, format string, args ...any) {
	conditions.MarkReconciling(obj, meta.ProgressingReason, format, args...)
	conditions.MarkUnknown(obj, meta.ReadyCondition, meta.ProgressingReason, format, args...)
	conditions.Delete(obj, meta.StalledCondition)
	if obj.Status.Rotation != nil {
		obj.Status.Rotation.Message = fmt.Sprintf(format, args...)
	}
}

// markStalled says the rotation cannot go on without a change in the
// cluster or the spec, with a Warning event the first time.
func (r *MTLSRootRotationReconciler) markStalled(ctx context.Context, obj *rotatorv1.MTLSRootRotation, reason, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if setStalled(ctx, obj, reason, msg) {
		r.EventRecorder.Eventf(obj, nil, corev1.EventTypeWarning, reason, "Rotate", "%s", msg)
	}
}

// setStalled sets the Stalled conditions; it reports whether they changed.
func setStalled(ctx context.Context, obj *rotatorv1.MTLSRootRotation, reason, msg string) bool {
	passOf(ctx).stalled = true
	alreadyStalled := conditions.IsStalled(obj) && conditions.GetReason(obj, meta.StalledCondition) == reason &&
		conditions.GetMessage(obj, meta.StalledCondition) == msg
	conditions.MarkStalled(obj, reason, "%s", msg)
	conditions.MarkFalse(obj, meta.ReadyCondition, reason, "%s", msg)
	conditions.Delete(obj, meta.ReconcilingCondition)
	if obj.Status.Rotation != nil {
		obj.Status.Rotation.Message = msg
	}
	return !alreadyStalled
}

func markReady(obj *rotatorv1.MTLSRootRotation, format string, args ...any) {
	conditions.MarkTrue(obj, meta.ReadyCondition, meta.SucceededReason, format, args...)
	conditions.Delete(obj, meta.ReconcilingCondition)
	conditions.Delete(obj, meta.StalledCondition)
}

// stepResult is what a step returns: advance to the next step, or stop this
// pass with result and err.
type stepResult struct {
	advance bool
	result  ctrl.Result
	err     error
}

func advance() stepResult                        { return stepResult{advance: true} }
func waitFor(res ctrl.Result) stepResult         { return stepResult{result: res} }
func fail(err error) stepResult                  { return stepResult{err: err} }
func stop(res ctrl.Result, err error) stepResult { return stepResult{result: res, err: err} }

func (r *MTLSRootRotationReconciler) reconcile(ctx context.Context, obj *rotatorv1.MTLSRootRotation, patcher *patch.SerialPatcher) (ctrl.Result, error) {
	log := ctrlLog(ctx)

	if other, err := r.conflictingRotation(ctx, obj); err != nil {
		return ctrl.Result{}, err
	} else if other != "" {
		r.markStalled(ctx, obj, rotatorv1.ConflictReason,
			"MTLSRootRotation %s/%s already manages Secret %s or ConfigMap %s; this object touches nothing while it exists",
			obj.Namespace, other, obj.Spec.Target.GetSecretName(), obj.Spec.Target.GetConfigMapName())
		// Creations and deletions of siblings wake it; a sibling retargeted
		// elsewhere is noticed on this schedule.
		return ctrl.Result{RequeueAfter: time.Minute}, nil
	}
	target, stalled, err := r.getTarget(ctx, obj)
	if err != nil || stalled {
		return ctrl.Result{}, err
	}
	observeInstalled(obj, target)
	// Read live, so not on every polling pass of a rotation: once it has
	// been read, only between rotations.
	if obj.Status.DaprConfiguration == nil || !rotation.InFlight(obj.Status.Rotation) {
		if err := r.readDaprConfiguration(ctx, obj); err != nil {
			// Monitoring only: it never holds a rotation up.
			log.Error(err, "reading the Dapr Configuration")
		}
	}
	if err := r.adoptRootKeyGeneration(ctx, obj, target); err != nil {
		return ctrl.Result{}, err
	}
	if obj.Spec.DryRun {
		p, err := r.plan(ctx, obj, target)
		if err != nil {
			return ctrl.Result{}, err
		}
		obj.Status.Plan = p
		msg := fmt.Sprintf("dry run: a %s rotation would issue %d certificates, restart %d control-plane workloads, then %d applications in %d waves per phase%s",
			p.KeyPolicy, len(p.Certificates), len(p.ControlPlane), p.Applications, p.Waves, phaseList(p.Phases))
		if len(p.Blockers) > 0 {
			msg += fmt.Sprintf("; it would stop: %s", p.Blockers[0])
		}
		markReady(obj, "%s", msg)
		r.EventRecorder.Eventf(obj, nil, corev1.EventTypeNormal, "RotationPlanned", "Plan", "%s", msg)
		return ctrl.Result{}, nil
	}

	now := r.now()
	rot := obj.Status.Rotation
	replaced := ""
	if rotation.InFlight(rot) && !published(rot) &&
		(rot.Trigger != obj.Spec.Trigger ||
			(rot.Cause != rotatorv1.CauseRenewal && rot.KeyPolicy != "" && rot.KeyPolicy != obj.Spec.Root.GetKeyPolicy()) ||
			!sameIssuerRef(rot.IssuerRef, obj.Spec.Issuer.IssuerRef)) {
		// Nothing of it was published: a new trigger, key policy (the way
		// out of a RootKeyUnknown stall) or issuer replaces it.
		r.EventRecorder.Eventf(obj, nil, corev1.EventTypeNormal, "RotationReplaced", "Rotate",
			"rotation %s had published nothing; replaced by a rotation for trigger %q with keyPolicy %s, issuing from %s",
			rot.ID, obj.Spec.Trigger, obj.Spec.Root.GetKeyPolicy(), describeIssuerRef(obj.Spec.Issuer.IssuerRef))
		replaced = rot.ID
		r.Metrics.rotationEnded(obj, rot, ResultReplaced, now.Time)
		obj.Status.Rotation, rot = nil, nil
	}
	if rot != nil && rot.Step == rotatorv1.StepCompleted &&
		(obj.Status.LastCompletedRotation == nil || obj.Status.LastCompletedRotation.ID != rot.ID) {
		// Completed, but the record of it was lost (a crash between two
		// patches): record it rather than start it again.
		recordCompleted(obj, rot)
	}
	if rot != nil && rot.Step == rotatorv1.StepRolledBack && rot.Trigger == obj.Spec.Trigger {
		// Rolled back: the failure stays on display, and nothing starts
		// again, until a new trigger asks for another attempt.
		r.markStalled(ctx, obj, rotatorv1.RolledBackReason, "%s", rot.Message)
		return ctrl.Result{}, nil
	}
	if !rotation.InFlight(rot) {
		last := obj.Status.LastCompletedRotation
		cause, renews := rotatorv1.CauseTrigger, expiry.None
		if last != nil && last.Trigger == obj.Spec.Trigger {
			if drift, err := r.drift(ctx, obj, target); err != nil {
				return ctrl.Result{}, err
			} else if drift != "" {
				conditions.MarkTrue(obj, rotatorv1.TrustBundleDriftCondition, rotatorv1.TrustBundleDriftReason, "%s", drift)
				r.markStalled(ctx, obj, rotatorv1.TrustBundleDriftReason,
					"%s; it is not overwritten: change spec.trigger to rotate onto a bundle of this operator (with keyPolicy Rotate if Sentry generated a new CA)", drift)
				return ctrl.Result{}, nil
			}
			conditions.Delete(obj, rotatorv1.TrustBundleDriftCondition)
			if rot != nil && rot.Step == rotatorv1.StepCompleted && rot.KeyPolicy == rotatorv1.KeyPolicyRotate {
				if err := r.dropPreviousRootKey(ctx, obj); err != nil {
					return ctrl.Result{}, err
				}
			}
			if stalled, err := r.importRootKey(ctx, obj); err != nil || stalled {
				return ctrl.Result{}, err
			}
			if err := r.ensureIssuance(ctx, obj); err != nil {
				return ctrl.Result{}, err
			}
			state := r.expiryOf(obj)
			if state.Due == expiry.None {
				markReady(obj, "rotation %s completed at %s", last.ID, last.FinishedAt.Format(time.RFC3339))
				return ctrl.Result{}, nil
			}
			if last.Cause == rotatorv1.CauseRenewal && !state.RenewAt.After(last.FinishedAt.Time) {
				// The last renewal did not move the due moment past its own
				// end: another would do the same, restarting the control
				// plane in a loop.
				r.markStalled(ctx, obj, rotatorv1.RenewalIneffectiveReason,
					"automatic renewal %s completed at %s, but %s, within spec.renewBefore %s: the signer caps its validity or the renewal takes longer than the margin; lower spec.renewBefore or lengthen the certificate, or change spec.trigger",
					last.ID, last.FinishedAt.Format(time.RFC3339), describeDue(obj, state.Due), obj.Spec.GetRenewBefore())
				return ctrl.Result{}, nil
			}
			cause, renews = rotatorv1.CauseRenewal, state.Due
			r.EventRecorder.Eventf(obj, nil, corev1.EventTypeNormal, "RenewalDue", "Renew",
				"%s, within spec.renewBefore %s: renewing the %s with the same key", describeDue(obj, state.Due), obj.Spec.GetRenewBefore(), renewsWhat(state.Due))
		}
		previous := ""
		if last != nil {
			previous = last.ID
		}
		if replaced != "" {
			previous += "/" + replaced
		}
		if rot != nil && rot.Step == rotatorv1.StepRolledBack {
			previous += "/" + rot.ID
		}
		policy := obj.Spec.Root.GetKeyPolicy()
		if cause == rotatorv1.CauseRenewal {
			policy = rotatorv1.KeyPolicyReuse // a renewal keeps the key
		}
		rot = rotation.Start(rotation.NewID(obj.UID, obj.Spec.Trigger, previous), obj.Spec.Trigger, rotation.SpecHash(obj.Spec), policy, now)
		rot.IssuerRef = obj.Spec.Issuer.IssuerRef.DeepCopy()
		rot.Cause, rot.Renews = cause, string(renews)
		obj.Status.Rotation = rot
		obj.Status.Applications = nil
		obj.Status.Plan = nil
		conditions.Delete(obj, rotatorv1.TrustBundleDriftCondition)
		if policy == rotatorv1.KeyPolicyRotate && !obj.Spec.Issuer.External() {
			// A new root key in a new Secret no earlier object left behind;
			// the previous one stays until the rotation completes. Recorded
			// with the start, so that a replay does not start yet another key.
			gen, err := r.freeRootKeyGeneration(ctx, obj, max(obj.Status.RootKeyGeneration, 1)+1)
			if err != nil {
				return ctrl.Result{}, err
			}
			obj.Status.RootKeyGeneration = gen
		}
		markProgress(obj, "rotation %s started", rot.ID)
		started := fmt.Sprintf("trigger %q", obj.Spec.Trigger)
		if cause == rotatorv1.CauseRenewal {
			started = fmt.Sprintf("automatic renewal of the %s", renewsWhat(renews))
		}
		r.EventRecorder.Eventf(obj, nil, corev1.EventTypeNormal, "RotationStarted", "Rotate",
			"rotation %s started (%s)", rot.ID, started)
		log.Info("rotation started", "rotation", rot.ID, "trigger", obj.Spec.Trigger)
		if err := patcher.Patch(ctx, obj, patch.WithOwnedConditions{Conditions: ownedConditions}, patch.WithFieldOwner(ControllerName)); err != nil {
			return ctrl.Result{}, fmt.Errorf("recording the start of rotation %s: %w", rot.ID, err)
		}
	}
	if want := obj.Spec.Root.GetKeyPolicy(); published(rot) && rot.Cause != rotatorv1.CauseRenewal &&
		rot.KeyPolicy != "" && rot.KeyPolicy != want && rot.DeferredKeyPolicy != want {
		// Refused for this rotation: switching policy half-way would publish
		// bundles no phase proved. It finishes with the policy it started
		// with; the new one applies to the next rotation (a new trigger).
		rot.DeferredKeyPolicy = want
		r.EventRecorder.Eventf(obj, nil, corev1.EventTypeWarning, rotatorv1.KeyPolicyChangeDeferredReason, "Rotate",
			"keyPolicy %s refused for rotation %s, which runs with %s and finishes so; change spec.trigger afterwards to rotate with %s",
			want, rot.ID, rot.KeyPolicy, want)
	}
	if published(rot) && !sameIssuerRef(rot.IssuerRef, obj.Spec.Issuer.IssuerRef) && !rot.IssuerRefChangeDeferred {
		// Pinned like the key policy: the phases left were proven for the
		// issuer the rotation started with.
		rot.IssuerRefChangeDeferred = true
		r.EventRecorder.Eventf(obj, nil, corev1.EventTypeWarning, rotatorv1.IssuerRefChangeDeferredReason, "Rotate",
			"spec.issuer.issuerRef refused for rotation %s, which issues from %s and finishes so; change spec.trigger afterwards to rotate onto %s",
			rot.ID, describeIssuerRef(rot.IssuerRef), describeIssuerRef(obj.Spec.Issuer.IssuerRef))
	}
	if rot.KeyPolicy != rotatorv1.KeyPolicyRotate {
		// A Rotate rotation makes its own key; a brought key waits for it.
		if stalled, err := r.importRootKey(ctx, obj); err != nil || stalled {
			return ctrl.Result{}, err
		}
	}
	if err := r.ensureIssuance(ctx, obj); err != nil {
		return ctrl.Result{}, err
	}

	for rotation.InFlight(rot) {
		var res stepResult
		switch rot.Step {
		case rotatorv1.StepIssuing:
			res = r.stepIssuing(ctx, obj, patcher)
		case rotatorv1.StepVerifying:
			res = r.stepVerifying(ctx, obj, target)
		case rotatorv1.StepPublishing:
			res = r.stepPublishing(ctx, obj, target)
		case rotatorv1.StepRestartingControlPlane:
			res = r.stepControlPlane(ctx, obj, target, patcher)
		case rotatorv1.StepRestartingApplications:
			res = r.stepApplications(ctx, obj)
		default:
			return ctrl.Result{}, reconcile.TerminalError(fmt.Errorf("unknown rotation step %q", rot.Step))
		}
		if !res.advance {
			res = r.stallOnExternalCA(ctx, obj, res)
			return res.result, res.err
		}
		finished, phase, startedAt := rot.Step, rot.Phase, stepStartedAt(rot)
		next := rotation.Advance(rot, r.now())
		log.Info("rotation step", "rotation", rot.ID, "step", next)
		if next == rotatorv1.StepCompleted {
			// Recorded in the same patch as the step, so that a crash cannot
			// leave a completed rotation that looks like one to start.
			recordCompleted(obj, rot)
		} else {
			markProgress(obj, "rotation %s: %s", rot.ID, next)
		}
		if err := patcher.Patch(ctx, obj, patch.WithOwnedConditions{Conditions: ownedConditions}, patch.WithFieldOwner(ControllerName)); err != nil {
			return ctrl.Result{}, fmt.Errorf("recording step %s of rotation %s: %w", next, rot.ID, err)
		}
		// Counted once recorded: a replay of an unrecorded step counts once.
		r.Metrics.stepFinished(finished, phase, r.now().Sub(startedAt))
		if next == rotatorv1.StepCompleted {
			r.Metrics.rotationEnded(obj, rot, ResultCompleted, r.now().Time)
		}
	}

	if rot.KeyPolicy == rotatorv1.KeyPolicyRotate {
		if err := r.dropPreviousRootKey(ctx, obj); err != nil {
			// Retried by the steady-state passes.
			ctrlLog(ctx).Error(err, "deleting the previous root key Secret")
		}
	}
	r.EventRecorder.Eventf(obj, nil, corev1.EventTypeNormal, "RotationCompleted", "Rotate", "rotation %s completed", rot.ID)
	log.Info("rotation completed", "rotation", rot.ID)
	return ctrl.Result{}, nil
}

// dropPreviousRootKey deletes the root keys a completed Rotate rotation
// replaced, including one a rolled-back attempt left: no published anchor
// carries them any more. Idempotent.
func (r *MTLSRootRotationReconciler) dropPreviousRootKey(ctx context.Context, obj *rotatorv1.MTLSRootRotation) error {
	for gen := obj.Status.RootKeyGeneration - 1; gen >= 1; gen-- {
		previous := &corev1.Secret{}
		err := r.Get(ctx, client.ObjectKey{Namespace: obj.Namespace, Name: rootSecretNameFor(obj, gen)}, previous)
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return err
		}
		if err := r.Delete(ctx, previous); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("deleting the previous root key Secret %s: %w", previous.Name, err)
		}
		ctrlLog(ctx).Info("previous root key deleted", "secret", previous.Name)
	}
	return nil
}

// freeRootKeyGeneration returns the first generation from gen on whose root
// Secret does not exist: Secrets outlive their object, and a re-created object
// counts from the start again.
func (r *MTLSRootRotationReconciler) freeRootKeyGeneration(ctx context.Context, obj *rotatorv1.MTLSRootRotation, gen int32) (int32, error) {
	for ; ; gen++ {
		err := r.reader().Get(ctx, client.ObjectKey{Namespace: obj.Namespace, Name: rootSecretNameFor(obj, gen)}, &corev1.Secret{})
		if apierrors.IsNotFound(err) {
			return gen, nil
		}
		if err != nil {
			return 0, fmt.Errorf("looking for a free root key Secret: %w", err)
		}
	}
}

// stepStartedAt is when the current step of rot started.
func stepStartedAt(rot *rotatorv1.RotationStatus) time.Time {
	for i := len(rot.Steps) - 1; i >= 0; i-- {
		if s := rot.Steps[i]; s.Name == rot.Step && s.Phase == rot.Phase {
			return s.StartedAt.Time
		}
	}
	return rot.StartedAt.Time
}

// published reports whether a rotation has written anything to the bundle.
func published(rot *rotatorv1.RotationStatus) bool {
	return rot.Step != rotatorv1.StepIssuing && rot.Step != rotatorv1.StepVerifying
}

func phaseList(phases []rotatorv1.RotationPhase) string {
	if len(phases) == 0 {
		return ""
	}
	return fmt.Sprintf(" (phases %v)", phases)
}

// drift names how the Secret and ConfigMap Sentry reads differ from what the
// operator published, or returns "" when they do not. Both are read live: the
// cache may not have seen the operator's own last write.
func (r *MTLSRootRotationReconciler) drift(ctx context.Context, obj *rotatorv1.MTLSRootRotation, t *target) (string, error) {
	if err := r.refreshTarget(ctx, t); err != nil {
		return "", err
	}
	keys := keysOf(obj)
	var parts []string
	live := bundle.FromSecret(t.Secret.Data, keys)
	if obj.Status.PublishedBundleHash != "" && bundle.Hash(live) != obj.Status.PublishedBundleHash {
		what := "its content"
		if issued, _, err := r.issuedBundle(ctx, obj); err == nil && bundle.Hash(issued) == obj.Status.PublishedBundleHash {
			what = bundle.Describe(issued, live, keys)
		}
		parts = append(parts, fmt.Sprintf("Secret %s/%s changed since rotation %s published it: %s",
			obj.Namespace, t.Secret.Name, obj.Status.LastCompletedRotation.ID, what))
	}
	if !bundle.Consistent(t.Secret.Data, t.ConfigMap.Data, keys) {
		parts = append(parts, fmt.Sprintf("ConfigMap %s/%s %s differs from the Secret's, which makes Sentry generate a new CA at its next start",
			obj.Namespace, t.ConfigMap.Name, keys.CA))
	}
	return strings.Join(parts, "; "), nil
}

// recordCompleted records a completed rotation as the last one and marks the
// object Ready.
func recordCompleted(obj *rotatorv1.MTLSRootRotation, rot *rotatorv1.RotationStatus) {
	finished := rot.StartedAt
	if n := len(rot.Steps); n > 0 {
		finished = rot.Steps[n-1].StartedAt
	}
	obj.Status.LastCompletedRotation = &rotatorv1.CompletedRotation{ID: rot.ID, Trigger: rot.Trigger, Cause: rot.Cause, FinishedAt: finished}
	rot.Message = "completed"
	markReady(obj, "rotation %s completed at %s", rot.ID, finished.Format(time.RFC3339))
}

// conflictingRotation returns the name of an older MTLSRootRotation in the
// namespace aiming at the same Secret or ConfigMap, if any.
func (r *MTLSRootRotationReconciler) conflictingRotation(ctx context.Context, obj *rotatorv1.MTLSRootRotation) (string, error) {
	list := &rotatorv1.MTLSRootRotationList{}
	if err := r.List(ctx, list, client.InNamespace(obj.Namespace)); err != nil {
		return "", fmt.Errorf("listing MTLSRootRotations: %w", err)
	}
	for _, other := range list.Items {
		if other.UID == obj.UID || other.DeletionTimestamp != nil {
			continue
		}
		same := other.Spec.Target.GetSecretName() == obj.Spec.Target.GetSecretName() ||
			other.Spec.Target.GetConfigMapName() == obj.Spec.Target.GetConfigMapName()
		older := other.CreationTimestamp.Before(&obj.CreationTimestamp) ||
			(other.CreationTimestamp.Equal(&obj.CreationTimestamp) && other.Name < obj.Name)
		if same && older {
			return other.Name, nil
		}
	}
	return "", nil
}

// target is the Secret and ConfigMap Sentry reads.
type target struct {
	Secret    *corev1.Secret
	ConfigMap *corev1.ConfigMap
}

func (r *MTLSRootRotationReconciler) getTarget(ctx context.Context, obj *rotatorv1.MTLSRootRotation) (*target, bool, error) {
	t := &target{Secret: &corev1.Secret{}, ConfigMap: &corev1.ConfigMap{}}
	for _, o := range []struct {
		kind string
		name string
		obj  client.Object
	}{{"Secret", obj.Spec.Target.GetSecretName(), t.Secret}, {"ConfigMap", obj.Spec.Target.GetConfigMapName(), t.ConfigMap}} {
		err := r.Get(ctx, client.ObjectKey{Namespace: obj.Namespace, Name: o.name}, o.obj)
		if apierrors.IsNotFound(err) {
			r.markStalled(ctx, obj, rotatorv1.TargetNotFoundReason,
				"%s %s/%s that Dapr Sentry reads does not exist: install Dapr in %s or set spec.target", o.kind, obj.Namespace, o.name, obj.Namespace)
			return nil, true, nil
		}
		if err != nil {
			return nil, false, fmt.Errorf("reading %s %s/%s: %w", o.kind, obj.Namespace, o.name, err)
		}
	}
	return t, false, nil
}

// checkpoint persists status now, so that what follows survives a crash.
func checkpoint(ctx context.Context, patcher *patch.SerialPatcher, obj *rotatorv1.MTLSRootRotation) error {
	return patcher.Patch(ctx, obj, patch.WithOwnedConditions{Conditions: ownedConditions}, patch.WithFieldOwner(ControllerName))
}

// Package controllers holds the reconcilers of mtls-rotator.
package controllers

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	"github.com/fluxcd/pkg/runtime/events"
	"github.com/fluxcd/pkg/runtime/predicates"
	"github.com/go-logr/logr"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/expiry"
	"github.com/mtls-rotator/mtls-rotator/internal/rotation"
)

// ControllerName names the controller in logs, events and field managers.
const ControllerName = "mtls-rotator"

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
	// Rollouts: Argo Rollouts is installed (RolloutsInstalled), and its
	// Dapr-enabled Rollouts are applications too; the cache must hold them
	// (CacheOptions).
	Rollouts bool

	// written holds, per object, the lastWrite of its status by this
	// reconciler (see fresh and holdProgress).
	written sync.Map
	// restarts are the restarts this process asked for (see restartMemo).
	restarts restartMemo
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
// +kubebuilder:rbac:groups=dapr.io,resources=configurations,verbs=list
// +kubebuilder:rbac:groups="",resources=namespaces,verbs=get;list;watch
// +kubebuilder:rbac:groups=apps,resources=deployments;statefulsets;daemonsets,verbs=get;list;watch;patch

// SetupWithManager registers the reconciler with the manager.
func (r *MTLSRootRotationReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if err := indexWorkloads(context.Background(), mgr.GetFieldIndexer()); err != nil {
		return err
	}
	b := ctrl.NewControllerManagedBy(mgr).
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
		// What the Dapr pods trust opens gates and ends lazy waits.
		Watches(&corev1.Pod{}, r.podEvents()).
		// A restarted workload's rollout progressing ends a rotation's wait.
		Watches(&appsv1.Deployment{}, r.workloadEvents()).
		Watches(&appsv1.StatefulSet{}, r.workloadEvents()).
		Watches(&appsv1.DaemonSet{}, r.workloadEvents())
	if r.Rollouts {
		b = b.Watches(newRollout(), r.workloadEvents())
	}
	return b.Complete(r)
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

// poll is how long a rotation waiting on rollouts or issuance waits before
// it looks again.
func (r *MTLSRootRotationReconciler) pollInterval() time.Duration {
	if r.PollInterval > 0 {
		return r.PollInterval
	}
	return 2 * time.Second
}

func ctrlLog(ctx context.Context) logr.Logger { return ctrl.LoggerFrom(ctx) }

// reader is the uncached reader, or the client when none is set.
func (r *MTLSRootRotationReconciler) reader() client.Reader {
	if r.APIReader != nil {
		return r.APIReader
	}
	return r.Client
}

// Reconcile brings one MTLSRootRotation a step closer to its declared state.
func (r *MTLSRootRotationReconciler) Reconcile(ctx context.Context, req ctrl.Request) (result ctrl.Result, retErr error) {
	start := time.Now()
	obj, err := r.fresh(ctx, req.NamespacedName)
	if err != nil {
		if apierrors.IsNotFound(err) {
			r.Metrics.forget(req.Namespace, req.Name)
			r.written.Delete(req.NamespacedName)
			r.restarts.forget(req.NamespacedName)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	p := r.newPass(ctx, obj)

	defer func() {
		result, retErr = r.finalize(ctx, p, retErr)
		r.Metrics.recordReconcile(ctx, obj, start)
	}()

	if obj.Spec.Suspend {
		ctrlLog(ctx).Info("reconciliation is suspended")
		return ctrl.Result{}, nil
	}
	p.ran = true
	return ctrl.Result{}, p.reconcile(ctx)
}

// fresh reads the object from the cache, or live when the cache has not yet
// seen the status this reconciler last wrote: a watch event can start a pass
// before the cache catches up with the previous pass's patch, and a pass
// must never act on a status older than its own last write (it would, say,
// announce a refusal twice). Only this reconciler writes the status, so a
// cached status other than the last written is a stale one.
func (r *MTLSRootRotationReconciler) fresh(ctx context.Context, key types.NamespacedName) (*rotatorv1.MTLSRootRotation, error) {
	obj := &rotatorv1.MTLSRootRotation{}
	if err := r.Get(ctx, key, obj); err != nil {
		return nil, err
	}
	if written, ok := r.written.Load(key); ok && written.(lastWrite).hash != statusHash(&obj.Status) {
		if err := r.reader().Get(ctx, key, obj); err != nil {
			return nil, err
		}
	}
	return obj, nil
}

// statusHash identifies a status as it is stored: its JSON, which carries
// times to the second as the API server keeps them.
func statusHash(s *rotatorv1.MTLSRootRotationStatus) [32]byte {
	b, _ := json.Marshal(s)
	return sha256.Sum256(b)
}

// reconcile runs the sub-reconcilers in order until one ends the pass.
func (p *pass) reconcile(ctx context.Context) error {
	for _, sub := range []func(context.Context) error{
		p.reconcileSpec,        // refuse what validation could not, before anything
		p.reconcileConflict,    // touch nothing another object manages
		p.reconcileTarget,      // read what Sentry reads, and what is installed
		p.reconcileConvergence, // observe what the Dapr pods that run trust
		p.reconcileDryRun,      // only plan, when asked to
		p.reconcileRotation,    // decide: start, renew, replace, hold, stall, or go on
		p.reconcileIssuance,    // the cert-manager objects of the rotation
		p.reconcileSteps,       // the step machine
	} {
		if err := sub(ctx); err != nil {
			return err
		}
	}
	return nil
}

// finalize summarises how the pass ended into the conditions, wakes the
// object when its expiry next calls for something, and patches the status
// once (progress at most once per progressWriteInterval). It returns what
// Reconcile returns.
func (r *MTLSRootRotationReconciler) finalize(ctx context.Context, p *pass, passErr error) (ctrl.Result, error) {
	obj := p.obj
	o := outcomeOf(passErr)
	if v, ok := meta.ReconcileAnnotationValue(obj.GetAnnotations()); ok {
		obj.Status.LastHandledReconcileAt = v
	}
	if p.ran {
		r.summarize(p, o)
	}
	if p.ran && o.err == nil {
		// Wake exactly when the expiry calls for something next (a warning,
		// a renewal), rather than polling; at once when a renewal fell due
		// while this pass finished a rotation.
		st := rotation.ExpiryOf(&obj.Spec, &obj.Status, r.now().Time)
		next := st.Next
		if st.Due != expiry.None && o.stall == nil && !rotation.InFlight(obj.Status.Rotation) {
			next = r.now().Time
		}
		if p.completed {
			// The settled state (the backup owned and stripped of keys, the
			// keys and objects the rotation replaced dropped) is kept by
			// the next pass, which no event may bring.
			next = r.now().Time
		}
		if !next.IsZero() {
			if d := next.Sub(r.now().Time) + time.Second; o.result.RequeueAfter == 0 || d < o.result.RequeueAfter {
				o.result.RequeueAfter = d
			}
		}
	}
	if wait, ok := r.holdProgress(p, o); ok {
		if o.result.RequeueAfter == 0 || wait < o.result.RequeueAfter {
			o.result.RequeueAfter = wait
		}
		return o.result, o.err
	}
	if err := p.patch(ctx); err != nil && !apierrors.IsNotFound(err) {
		// The status must be retried even after a terminal error, so the
		// pass error is kept as text, not wrapped.
		if o.err != nil {
			return o.result, fmt.Errorf("patching status: %w (after: %v)", err, o.err)
		}
		return o.result, fmt.Errorf("patching status: %w", err)
	}
	return o.result, o.err
}

// summarize sets the conditions from how the pass ended: a stall is marked
// (with a Warning the first time), a wait says what it waits for, a Stalled
// condition this pass did not confirm is dropped.
func (r *MTLSRootRotationReconciler) summarize(p *pass, o outcome) {
	obj := p.obj
	switch {
	case o.stall != nil:
		if setStalled(obj, o.stall.Reason, o.stall.Message) && !o.stall.Quiet {
			p.event(corev1.EventTypeWarning, o.stall.Reason, "Rotate", "%s", o.stall.Message)
		}
	case o.wait != nil && o.wait.Deferred:
		markDeferred(obj, o.wait.Message)
	case o.wait != nil:
		markProgress(obj, "%s", o.wait.Message)
	default:
		conditions.Delete(obj, meta.StalledCondition)
	}
	r.markExpiry(obj, rotation.ExpiryOf(&obj.Spec, &obj.Status, r.now().Time))
	terminal := errors.Is(o.err, reconcile.TerminalError(nil))
	if o.err == nil || terminal {
		obj.Status.ObservedGeneration = obj.Generation
	}
	if o.err != nil && !terminal {
		conditions.MarkFalse(obj, meta.ReadyCondition, meta.ProgressingWithRetryReason, "%s", o.err)
		conditions.MarkReconciling(obj, meta.ProgressingWithRetryReason, "%s", o.err)
	}
}

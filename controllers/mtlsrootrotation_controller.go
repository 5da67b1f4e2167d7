// Package controllers holds the reconcilers of mtls-rotator.
package controllers

import (
	"context"

	"github.com/fluxcd/pkg/runtime/events"
	"github.com/fluxcd/pkg/runtime/predicates"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
)

// ControllerName names the controller in logs, events and field managers.
const ControllerName = "mtls-rotator"

// MTLSRootRotationReconciler reconciles MTLSRootRotation objects.
//
// The rotation itself (issuance, publishing, ordered restarts) is the subject of
// the same-key rotation feature; until then the reconciler only observes the
// objects, so that the manager, its cache and its RBAC are exercised.
type MTLSRootRotationReconciler struct {
	client.Client
	EventRecorder events.Recorder
}

// +kubebuilder:rbac:groups=mtls.rotator.dev,resources=mtlsrotations,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=mtls.rotator.dev,resources=mtlsrotations/status,verbs=get;update;patch
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// SetupWithManager registers the reconciler with the manager.
func (r *MTLSRootRotationReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		Named(ControllerName).
		For(&rotatorv1.MTLSRootRotation{}, builder.WithPredicates(
			predicate.Or(predicate.GenerationChangedPredicate{}, predicates.ReconcileRequestedPredicate{}),
		)).
		Complete(r)
}

// Reconcile observes one MTLSRootRotation.
func (r *MTLSRootRotationReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	obj := &rotatorv1.MTLSRootRotation{}
	if err := r.Get(ctx, req.NamespacedName, obj); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	ctrl.LoggerFrom(ctx).V(1).Info("observed rotation", "generation", obj.Generation, "suspended", obj.Spec.Suspend)
	return ctrl.Result{}, nil
}

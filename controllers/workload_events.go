package controllers

import (
	"context"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/util/workqueue"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/restart"
	"github.com/mtls-rotator/mtls-rotator/internal/rotation"
)

// A workload a rotation restarted wakes that rotation whenever it changes:
// its rollout progressing is what the rotation waits for, so the wait ends
// when the rollout does, not at the next poll. Only workloads carrying the
// restart annotation of a rotation in flight wake anything; the churn of
// every other workload in the cluster costs a map lookup.

// workloadEvents is the handler of the workload watches.
func (r *MTLSRootRotationReconciler) workloadEvents() handler.EventHandler {
	type queue = workqueue.TypedRateLimitingInterface[reconcile.Request]
	return handler.Funcs{
		UpdateFunc: func(ctx context.Context, e event.UpdateEvent, q queue) { r.wakeRestarter(ctx, e.ObjectNew, q) },
	}
}

// restartIDOf is the restart annotation a workload carries: on its pod
// template, or on an Argo Rollout itself.
func restartIDOf(o client.Object) string {
	if u, ok := o.(*unstructured.Unstructured); ok {
		return u.GetAnnotations()[restart.Annotation]
	}
	return templateAnnotations(o)[restart.Annotation]
}

// wakeRestarter queues the rotation in flight whose restart (or rollback)
// the workload o carries.
func (r *MTLSRootRotationReconciler) wakeRestarter(ctx context.Context, o client.Object, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
	id := restartIDOf(o)
	if id == "" {
		return
	}
	list := &rotatorv1.MTLSRootRotationList{}
	if err := r.List(ctx, list); err != nil {
		return
	}
	for i := range list.Items {
		rot := list.Items[i].Status.Rotation
		if !rotation.InFlight(rot) {
			continue
		}
		if current := rotation.RestartID(rot); id == current || id == rollbackID(current) {
			q.Add(reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])})
		}
	}
}

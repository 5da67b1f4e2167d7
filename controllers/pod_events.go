package controllers

import (
	"context"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/util/workqueue"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/convergence"
)

// A Dapr pod that starts, stops or changes what it trusts wakes the
// rotations of its control plane. One waiting on pods (a closed gate, a lazy
// wait) looks again within podWake; the others refresh status.convergence at
// most once per podCoalesce, however many pods churn: the work queue keeps
// one pending wake per object, at its earliest time.
const (
	podWake     = time.Second
	podCoalesce = 30 * time.Second
)

// podEvents is the handler of the Dapr pod watch.
func (r *MTLSRootRotationReconciler) podEvents() handler.EventHandler {
	type queue = workqueue.TypedRateLimitingInterface[reconcile.Request]
	return handler.Funcs{
		CreateFunc: func(ctx context.Context, e event.CreateEvent, q queue) { r.wakeFor(ctx, e.Object, q) },
		DeleteFunc: func(ctx context.Context, e event.DeleteEvent, q queue) { r.wakeFor(ctx, e.Object, q) },
		UpdateFunc: func(ctx context.Context, e event.UpdateEvent, q queue) {
			if observedChange(e.ObjectOld, e.ObjectNew) {
				r.wakeFor(ctx, e.ObjectNew, q)
			}
		},
	}
}

// observedChange reports whether a pod update changes what convergence
// observes of it; status-only churn (conditions, probes) does not.
func observedChange(before, after client.Object) bool {
	a, okA := before.(*corev1.Pod)
	b, okB := after.(*corev1.Pod)
	if !okA || !okB {
		return true
	}
	oa, liveA := convergence.Observe(a)
	ob, liveB := convergence.Observe(b)
	return liveA != liveB || oa.Terminating != ob.Terminating || oa.ControlPlane != ob.ControlPlane || oa.Owner != ob.Owner || !oa.Started.Equal(ob.Started) ||
		oa.Problem != ob.Problem || !slices.Equal(oa.Anchors, ob.Anchors)
}

// wakeFor queues the rotations of the control plane pod o belongs to (all
// managed ones when the pod names none).
func (r *MTLSRootRotationReconciler) wakeFor(ctx context.Context, o client.Object, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
	list := &rotatorv1.MTLSRootRotationList{}
	var opts []client.ListOption
	if pod, ok := o.(*corev1.Pod); ok {
		if observed, _ := convergence.Observe(pod); observed.ControlPlane != "" {
			opts = append(opts, client.InNamespace(observed.ControlPlane))
		}
	}
	if err := r.List(ctx, list, opts...); err != nil {
		return
	}
	for i := range list.Items {
		after := podCoalesce
		if rot := list.Items[i].Status.Rotation; rot != nil && (rot.WaitingFor == podsWait || rot.WaitingFor == lazyWait) {
			after = podWake
		}
		q.AddAfter(reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])}, after)
	}
}

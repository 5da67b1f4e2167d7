package controllers

import (
	"context"
	"fmt"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/convergence"
)

// pass is one reconciliation of one object: the receiver of every
// sub-reconciler and step. It holds the object, its patcher, what the pass
// read of the world, and the strategy of the rotation in flight.
type pass struct {
	*MTLSRootRotationReconciler
	obj *rotatorv1.MTLSRootRotation
	// sent is the object as read, or as this pass last wrote it.
	sent *rotatorv1.MTLSRootRotation
	log  logr.Logger
	// ran is false when the pass did nothing (suspended).
	ran bool
	// completed: this pass completed the rotation in status; the next one
	// settles it (settle), at once.
	completed bool
	// target is the Secret and ConfigMap Sentry reads, as last read.
	target *target
	// chosen is the strategy of the rotation in flight (see strategy).
	chosen strategy
	// pods are the Dapr sidecar pods observed (see observePods).
	pods []convergence.Pod
	// otherControlPlanes are the workloads whose live Dapr pods all belong
	// to another control plane (see observePods).
	otherControlPlanes map[string]bool
	// daprConfigurationErr is why Dapr's Configurations could not be read
	// this pass, if they could not.
	daprConfigurationErr error
}

func (r *MTLSRootRotationReconciler) newPass(ctx context.Context, obj *rotatorv1.MTLSRootRotation) *pass {
	return &pass{MTLSRootRotationReconciler: r, obj: obj, sent: obj.DeepCopy(), log: ctrlLog(ctx)}
}

// rot is the rotation in status: in flight, or the last one.
func (p *pass) rot() *rotatorv1.RotationStatus { return p.obj.Status.Rotation }

// patch writes the status as it is now, in one merge patch, and nothing
// when it is as last written.
//
// Not Flux's patch helper: that sends the conditions and the rest of the
// status as two patches, so that controllers sharing one object's
// conditions keep each other's. This status has one writer, this
// reconciler, and the second request doubled its writes (measured: 33
// status patches for a rotation of 100 applications, 14 in one patch).
// Every condition is this reconciler's, so the merge patch replacing the
// list loses nobody's.
func (p *pass) patch(ctx context.Context) error {
	if !equality.Semantic.DeepEqual(p.sent.Status, p.obj.Status) {
		// A copy is sent, the object last sent with this status: only the
		// status differs in the patch, and the response decoded into p.obj
		// would replace the status a step holds pointers into.
		sent := p.sent.DeepCopy()
		p.obj.Status.DeepCopyInto(&sent.Status)
		if err := p.Status().Patch(ctx, sent, client.MergeFrom(p.sent), client.FieldOwner(ControllerName)); err != nil {
			return err
		}
		p.sent = sent
	}
	// A write that changed nothing (none was sent) is no write.
	if h := statusHash(&p.obj.Status); !p.wrote(h) {
		p.written.Store(keyOf(p.obj), lastWrite{hash: h, at: p.clock()})
	}
	return nil
}

// wrote reports whether a status of hash h is the last this reconciler wrote.
func (p *pass) wrote(h [32]byte) bool {
	last, ok := p.written.Load(keyOf(p.obj))
	return ok && last.(lastWrite).hash == h
}

func keyOf(obj client.Object) client.ObjectKey { return client.ObjectKeyFromObject(obj) }

// checkpoint persists status now, so that what follows survives a crash:
// record before acting.
func (p *pass) checkpoint(ctx context.Context, what string) error {
	if err := p.patch(ctx); err != nil {
		return fmt.Errorf("recording %s: %w", what, err)
	}
	return nil
}

// event records an event on the object.
func (p *pass) event(eventType, reason, action, format string, args ...any) {
	p.EventRecorder.Eventf(p.obj, nil, eventType, reason, action, format, args...)
}

// normal records a Normal event on the object.
func (p *pass) normal(reason, action, format string, args ...any) {
	p.event(corev1.EventTypeNormal, reason, action, format, args...)
}

// wait ends the pass waiting for something, looking again after d.
func (p *pass) wait(d time.Duration, format string, args ...any) error {
	return &waitError{Message: fmt.Sprintf(format, args...), RetryAfter: d}
}

// poll ends the pass waiting for something, looking again at the poll interval.
func (p *pass) poll(format string, args ...any) error {
	return p.wait(p.pollInterval(), format, args...)
}

// pollUntil is poll for a wait that times out at deadline: it looks again
// at the deadline at the latest, whatever the poll interval, so that a
// timeout is noticed when no watch event comes.
func (p *pass) pollUntil(deadline time.Time, format string, args ...any) error {
	return p.wait(min(p.pollInterval(), deadline.Sub(p.now().Time)+time.Second), format, args...)
}

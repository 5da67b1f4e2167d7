package controllers

import (
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
)

// progressWriteInterval is the least time between two status writes that
// only report progress. A rotation waiting on a thousand rollouts is woken
// by every workload and pod event; writing each new count cost several API
// writes per restart (measured: 4), and a person watching 'kubectl get'
// needs no more.
const progressWriteInterval = 5 * time.Second

// progressMilestones and progressWriteIntervalMax bound the progress writes
// of a long restart of applications: past progressWriteInterval, progress
// waits for the next tenth of the applications, or at most
// progressWriteIntervalMax. A rotation of any size then writes about ten
// times while its applications roll out (at 1,000 applications, one write
// per 5 s was 40 writes).
const (
	progressMilestones       = 10
	progressWriteIntervalMax = 30 * time.Second
)

// lastWrite is the status this reconciler last wrote for an object, and when.
type lastWrite struct {
	hash [32]byte
	at   time.Time
}

// holdProgress reports whether this pass's status write can wait, and for
// how long: the pass ended waiting, what changed since the last write is
// progress only (progressOnly), and that write is less than
// progressWriteInterval old, or the applications are still in the same
// tenth and it is less than progressWriteIntervalMax old. The pass then
// looks again when the hold ends, so progress shows at most that late. A
// step, phase, condition reason or anything else a later pass acts on is
// always written at once.
func (r *MTLSRootRotationReconciler) holdProgress(p *pass, o outcome) (time.Duration, bool) {
	if !p.ran || o.wait == nil || o.wait.Deferred || o.err != nil {
		return 0, false
	}
	last, ok := r.written.Load(keyOf(p.obj))
	if !ok {
		return 0, false
	}
	hold := progressWriteInterval
	if sameMilestone(p.sent.Status.Applications, p.obj.Status.Applications) {
		hold = progressWriteIntervalMax
	}
	left := hold - r.clock().Sub(last.(lastWrite).at)
	if left <= 0 || !progressOnly(&p.sent.Status, &p.obj.Status) {
		return 0, false
	}
	return left, true
}

// sameMilestone reports whether two counts of applications are in the same
// tenth of the total (progressMilestones).
func sameMilestone(a, b *rotatorv1.ApplicationsStatus) bool {
	if a == nil || b == nil || a.Total != b.Total || a.Total == 0 {
		return false
	}
	tenth := func(s *rotatorv1.ApplicationsStatus) int32 {
		return (s.Restarted + s.Skipped) * progressMilestones / s.Total
	}
	return tenth(a) == tenth(b)
}

// progressOnly reports whether after differs from before only in what moves
// while a rotation waits: condition and rotation messages, the
// applications' counts and the observed convergence.
func progressOnly(before, after *rotatorv1.MTLSRootRotationStatus) bool {
	return equality.Semantic.DeepEqual(withoutProgress(before), withoutProgress(after))
}

func withoutProgress(s *rotatorv1.MTLSRootRotationStatus) *rotatorv1.MTLSRootRotationStatus {
	s = s.DeepCopy()
	for i := range s.Conditions {
		// A new message moves lastTransitionTime too (Flux's conditions);
		// a new status or reason is not progress.
		s.Conditions[i].Message, s.Conditions[i].LastTransitionTime = "", metav1.Time{}
	}
	if s.Rotation != nil {
		s.Rotation.Message = ""
	}
	s.Applications, s.Convergence = nil, nil
	return s
}

// clock is the reconciler's time, not rounded.
func (r *MTLSRootRotationReconciler) clock() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

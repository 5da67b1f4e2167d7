package controllers

import (
	"errors"
	"fmt"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
)

// A sub-reconciler or a step returns nil when the pass may go on (a step:
// it is finished, the machine advances), or one of these errors, which end
// the pass and are summarised once in the deferred finalize:
//   - *stallError: nothing more can be done until the cluster or the spec
//     changes; Stalled with a reason;
//   - *waitError: the pass waits for something (a rollout, an issuance);
//     Reconciling with a message, looked at again later;
//   - errDone: the object is where it should be for now; nothing more to do;
//   - any other error: transient, retried with back-off.

// stallError is a stall: a reason and message for the Stalled condition.
type stallError struct {
	Reason  string
	Message string
	// Terminal stalls are not retried: only a change of the object ends them.
	Terminal bool
	// RetryAfter, for a stall that is not terminal, looks again later (zero:
	// only a watch event does).
	RetryAfter time.Duration
	// Quiet raises no Warning event (a replay of a stall already announced).
	Quiet bool
}

func (e *stallError) Error() string { return e.Reason + ": " + e.Message }

// stall returns a stall that is looked at again only on a watch event.
func stall(reason, format string, args ...any) *stallError {
	return &stallError{Reason: reason, Message: fmt.Sprintf(format, args...)}
}

// terminal marks the stall terminal.
func (e *stallError) terminal() *stallError { e.Terminal = true; return e }

// retry looks again after d.
func (e *stallError) retry(d time.Duration) *stallError { e.RetryAfter = d; return e }

// quiet raises no event.
func (e *stallError) quiet() *stallError { e.Quiet = true; return e }

// waitError is a wait: a progress message, and when to look again.
type waitError struct {
	Message    string
	RetryAfter time.Duration
	// Deferred: the mesh works as it is, and the rest of the rotation is
	// scheduled (a lazy rotation's restarts): Ready, not Reconciling.
	Deferred bool
}

func (e *waitError) Error() string { return "waiting: " + e.Message }

// errDone ends a pass that has nothing more to do.
var errDone = errors.New("nothing more to do in this pass")

// outcome is how one pass ended, for the finalize and the return values.
type outcome struct {
	stall  *stallError
	wait   *waitError
	result ctrl.Result
	err    error // what Reconcile returns
}

// outcomeOf sorts the error a pass ended with.
func outcomeOf(err error) outcome {
	var s *stallError
	var w *waitError
	switch {
	case err == nil, errors.Is(err, errDone):
		return outcome{}
	case errors.As(err, &s):
		if s.Terminal {
			return outcome{stall: s, err: reconcile.TerminalError(s)}
		}
		return outcome{stall: s, result: ctrl.Result{RequeueAfter: s.RetryAfter}}
	case errors.As(err, &w):
		return outcome{wait: w, result: ctrl.Result{RequeueAfter: w.RetryAfter}}
	}
	return outcome{err: err}
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

// setStalled sets the Stalled conditions; it reports whether they changed.
func setStalled(obj *rotatorv1.MTLSRootRotation, reason, msg string) bool {
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

// markDeferred says the rotation published and works, and defers the rest:
// Ready, so that a GitOps health check does not wait days on it.
func markDeferred(obj *rotatorv1.MTLSRootRotation, msg string) {
	conditions.MarkTrue(obj, meta.ReadyCondition, rotatorv1.RestartsDeferredReason, "%s", msg)
	conditions.Delete(obj, meta.ReconcilingCondition)
	conditions.Delete(obj, meta.StalledCondition)
	if obj.Status.Rotation != nil {
		obj.Status.Rotation.Message = msg
	}
}

func markReady(obj *rotatorv1.MTLSRootRotation, format string, args ...any) {
	conditions.MarkTrue(obj, meta.ReadyCondition, meta.SucceededReason, format, args...)
	conditions.Delete(obj, meta.ReconcilingCondition)
	conditions.Delete(obj, meta.StalledCondition)
}

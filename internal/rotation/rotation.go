// Package rotation holds the step machine of a rotation: its id, the order of
// its steps and the bookkeeping of their times in status. It makes no API calls.
package rotation

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"slices"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
)

// Steps is the order of the steps of a same-key rotation.
var Steps = []rotatorv1.RotationStep{
	rotatorv1.StepIssuing,
	rotatorv1.StepVerifying,
	rotatorv1.StepPublishing,
	rotatorv1.StepRestartingControlPlane,
	rotatorv1.StepRestartingApplications,
	rotatorv1.StepCompleted,
}

// NewID derives the id of the rotation that follows previousID for trigger on
// the object uid. It is deterministic, so it can be recomputed, and differs from
// the previous rotation's, so that restart annotations change.
func NewID(uid types.UID, trigger, previousID string) string {
	sum := sha256.Sum256([]byte(string(uid) + "\x00" + trigger + "\x00" + previousID))
	return "r-" + hex.EncodeToString(sum[:])[:10]
}

// SpecHash is a short hash of the spec fields that shape a rotation's plan
// (everything but trigger and suspend).
func SpecHash(spec rotatorv1.MTLSRootRotationSpec) string {
	spec.Trigger, spec.Suspend = "", false
	data, _ := json.Marshal(spec)
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])[:16]
}

// Start returns a new rotation at its first step.
func Start(id, trigger, specHash string, now metav1.Time) *rotatorv1.RotationStatus {
	return &rotatorv1.RotationStatus{
		ID: id, Trigger: trigger, SpecHash: specHash,
		Step:      Steps[0],
		StartedAt: now,
		Steps:     []rotatorv1.StepStatus{{Name: Steps[0], StartedAt: now}},
	}
}

// Advance finishes the current step and starts the next one; it returns the
// new step. Advancing a completed rotation changes nothing.
func Advance(r *rotatorv1.RotationStatus, now metav1.Time) rotatorv1.RotationStep {
	i := slices.Index(Steps, r.Step)
	if i < 0 || r.Step == rotatorv1.StepCompleted {
		return r.Step
	}
	for j := range r.Steps {
		if r.Steps[j].Name == r.Step && r.Steps[j].FinishedAt == nil {
			r.Steps[j].FinishedAt = &now
		}
	}
	r.Step = Steps[i+1]
	r.WaitingFor, r.WaitingSince, r.Message = "", nil, ""
	if r.Step == rotatorv1.StepCompleted {
		r.Steps = append(r.Steps, rotatorv1.StepStatus{Name: r.Step, StartedAt: now, FinishedAt: &now})
	} else {
		r.Steps = append(r.Steps, rotatorv1.StepStatus{Name: r.Step, StartedAt: now})
	}
	return r.Step
}

// InFlight reports whether r is a rotation that has not completed.
func InFlight(r *rotatorv1.RotationStatus) bool {
	return r != nil && r.Step != rotatorv1.StepCompleted
}

// Wait records that the step now waits for what, keeping the start of the
// wait while it is the same thing; it returns when the wait began.
func Wait(r *rotatorv1.RotationStatus, what string, now metav1.Time) metav1.Time {
	if r.WaitingFor != what || r.WaitingSince == nil {
		r.WaitingFor, r.WaitingSince = what, &now
	}
	return *r.WaitingSince
}

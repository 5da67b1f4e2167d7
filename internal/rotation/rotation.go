// Package rotation holds what a pass decides before the steps run (Decide:
// start, renew, replace, hold, stall or go on) and the step machine of a
// rotation: its id, the order of its steps and the bookkeeping of their
// times in status. It makes no API calls.
package rotation

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"slices"
	"strings"

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

// Phases is the order of the phases of a Rotate (new root key) rotation; each
// runs Publishing, RestartingControlPlane and RestartingApplications.
var Phases = []rotatorv1.RotationPhase{rotatorv1.PhaseOverlap, rotatorv1.PhaseSwitch, rotatorv1.PhasePrune}

// Start returns a new rotation at its first step; a Rotate rotation starts in
// its first phase.
func Start(id, trigger, specHash string, policy rotatorv1.KeyPolicy, now metav1.Time) *rotatorv1.RotationStatus {
	r := &rotatorv1.RotationStatus{
		ID: id, Trigger: trigger, SpecHash: specHash, KeyPolicy: policy,
		Step:      Steps[0],
		StartedAt: now,
		Steps:     []rotatorv1.StepStatus{{Name: Steps[0], StartedAt: now}},
	}
	if policy == rotatorv1.KeyPolicyRotate {
		r.Phase = Phases[0]
		r.Steps[0].Phase = r.Phase
	}
	return r
}

// Advance finishes the current step and starts the next one; it returns the
// new step. After the applications of a phase that is not the last, the next
// phase starts at Publishing. Advancing a completed rotation changes nothing.
func Advance(r *rotatorv1.RotationStatus, now metav1.Time) rotatorv1.RotationStep {
	i := slices.Index(Steps, r.Step)
	if i < 0 || !InFlight(r) {
		return r.Step
	}
	finishStep(r, now)
	r.Step = Steps[i+1]
	if p := slices.Index(Phases, r.Phase); p >= 0 && p < lastPhase(r) && r.Step == rotatorv1.StepCompleted {
		r.Phase, r.Step = Phases[p+1], rotatorv1.StepPublishing
	}
	r.WaitingFor, r.WaitingSince, r.Message = "", nil, ""
	if r.Step == rotatorv1.StepCompleted {
		r.Steps = append(r.Steps, rotatorv1.StepStatus{Name: r.Step, StartedAt: now, FinishedAt: &now})
	} else {
		r.Steps = append(r.Steps, rotatorv1.StepStatus{Name: r.Step, Phase: r.Phase, StartedAt: now})
	}
	return r.Step
}

// lastPhase is the index of the phase a Rotate rotation ends with: Switch
// when it keeps the root it retires (Prune would publish what Switch did),
// Prune otherwise.
func lastPhase(r *rotatorv1.RotationStatus) int {
	if r.KeepsRetiredRoots {
		return slices.Index(Phases, rotatorv1.PhaseSwitch)
	}
	return len(Phases) - 1
}

// SkipToLastPhase moves a Rotate rotation at Publishing straight to its last
// phase: with nothing installed there is no trust to overlap.
func SkipToLastPhase(r *rotatorv1.RotationStatus) {
	if r.Phase == "" || r.Step != rotatorv1.StepPublishing {
		return
	}
	last := Phases[len(Phases)-1]
	for j := range r.Steps {
		if r.Steps[j].Name == r.Step && r.Steps[j].FinishedAt == nil {
			r.Steps[j].Phase = last
		}
	}
	r.Phase = last
}

// RestartID is the value of the restart annotation for the current phase:
// every phase restarts every workload once.
func RestartID(r *rotatorv1.RotationStatus) string {
	if r.Phase == "" {
		return r.ID
	}
	return r.ID + "-" + strings.ToLower(string(r.Phase))
}

// InFlight reports whether r is a rotation that has neither completed nor
// been rolled back.
func InFlight(r *rotatorv1.RotationStatus) bool {
	return r != nil && r.Step != rotatorv1.StepCompleted && r.Step != rotatorv1.StepRolledBack
}

// BeginRollBack finishes the current step of an in-flight rotation and
// starts RollingBack, naming the workload whose failed rollout it rolls back.
func BeginRollBack(r *rotatorv1.RotationStatus, workload string, now metav1.Time) {
	if !InFlight(r) || r.Step == rotatorv1.StepRollingBack {
		return
	}
	finishStep(r, now)
	r.Step, r.RollingBack = rotatorv1.StepRollingBack, workload
	r.WaitingFor, r.WaitingSince = "", nil
	r.Steps = append(r.Steps, rotatorv1.StepStatus{Name: r.Step, Phase: r.Phase, StartedAt: now})
}

func finishStep(r *rotatorv1.RotationStatus, now metav1.Time) {
	for j := range r.Steps {
		if r.Steps[j].Name == r.Step && r.Steps[j].Phase == r.Phase && r.Steps[j].FinishedAt == nil {
			r.Steps[j].FinishedAt = &now
		}
	}
}

// RollBack ends an in-flight rotation as rolled back: the current step
// finishes now and the rotation stays at RolledBack, which only a new
// rotation replaces. Rolling back a finished rotation changes nothing.
func RollBack(r *rotatorv1.RotationStatus, now metav1.Time) {
	if !InFlight(r) {
		return
	}
	finishStep(r, now)
	r.Step = rotatorv1.StepRolledBack
	r.WaitingFor, r.WaitingSince = "", nil
	r.Steps = append(r.Steps, rotatorv1.StepStatus{Name: r.Step, Phase: r.Phase, StartedAt: now, FinishedAt: &now})
}

// Wait records that the step now waits for what, keeping the start of the
// wait while it is the same thing; it returns when the wait began.
func Wait(r *rotatorv1.RotationStatus, what string, now metav1.Time) metav1.Time {
	if r.WaitingFor != what || r.WaitingSince == nil {
		r.WaitingFor, r.WaitingSince = what, &now
	}
	return *r.WaitingSince
}

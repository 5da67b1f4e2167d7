// Package restart plans the restarts of a rotation: the control plane one
// workload at a time in order, then the applications in bounded waves. The plan
// is recomputed on every pass from what is observed in the cluster; the only
// memory is the restart annotation on each pod template, whose value is the
// rotation id, so replaying a step after a crash restarts nothing twice.
package restart

import (
	"cmp"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
)

// Annotation is set on the pod template of every workload a rotation
// restarts; its value is the rotation id.
const Annotation = "mtls.rotator.dev/restarted-for"

// Patch is the JSON merge patch that restarts a workload for a rotation.
func Patch(rotationID string) []byte {
	p, _ := json.Marshal(map[string]any{
		"spec": map[string]any{"template": map[string]any{"metadata": map[string]any{
			"annotations": map[string]string{Annotation: rotationID},
		}}},
	})
	return p
}

// RestartedFor reports whether a pod template carries the restart of rotationID.
func RestartedFor(templateAnnotations map[string]string, rotationID string) bool {
	return rotationID != "" && templateAnnotations[Annotation] == rotationID
}

// Ref names a workload.
type Ref struct {
	Kind      string
	Namespace string
	Name      string
}

func (r Ref) String() string { return fmt.Sprintf("%s %s/%s", r.Kind, r.Namespace, r.Name) }

// ParseRef reads what Ref.String wrote.
func ParseRef(s string) (Ref, error) {
	kind, rest, ok1 := strings.Cut(s, " ")
	ns, name, ok2 := strings.Cut(rest, "/")
	if !ok1 || !ok2 || kind == "" || ns == "" || name == "" || strings.ContainsAny(name, " /") {
		return Ref{}, fmt.Errorf("%q is not a workload reference (Kind namespace/name)", s)
	}
	return Ref{Kind: kind, Namespace: ns, Name: name}, nil
}

func compareRefs(a, b Ref) int {
	return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Name, b.Name))
}

// Observed is what a pass sees of one workload.
type Observed struct {
	Ref
	// Exists is false when the workload was not found.
	Exists bool
	// Optional control-plane workloads may be missing.
	Optional bool
	// Restarted: its pod template carries this rotation's restart annotation.
	Restarted bool
	// RolledOut: its latest spec is fully rolled out.
	RolledOut bool
	// Waiting explains an incomplete rollout.
	Waiting string
	// Converged: its pods hold what the phase needs already; an application
	// not restarted yet is then skipped.
	Converged bool
}

// ActionType is what the control-plane step must do next.
type ActionType string

const (
	// Restart the workload now.
	Restart ActionType = "Restart"
	// Wait for the workload's rollout.
	Wait ActionType = "Wait"
	// Missing: a required workload does not exist; the rotation cannot go on.
	Missing ActionType = "Missing"
	// Done: every workload is restarted and rolled out.
	Done ActionType = "Done"
)

// ControlPlaneAction is the next action of the control-plane step.
type ControlPlaneAction struct {
	Type ActionType
	// Workload is the one to restart, wait for, or that is missing.
	Workload Observed
	// Skipped lists optional workloads that do not exist.
	Skipped []Ref
	// Completed counts the workloads restarted and rolled out.
	Completed int
}

// NextControlPlane returns the next action for workloads given in restart
// order: the first one not yet restarted and rolled out is restarted or
// awaited; nothing after it is touched.
func NextControlPlane(workloads []Observed) ControlPlaneAction {
	var a ControlPlaneAction
	for _, w := range workloads {
		switch {
		case !w.Exists && w.Optional:
			a.Skipped = append(a.Skipped, w.Ref)
			continue
		case !w.Exists:
			a.Type, a.Workload = Missing, w
			return a
		case !w.Restarted:
			a.Type, a.Workload = Restart, w
			return a
		case !w.RolledOut:
			a.Type, a.Workload = Wait, w
			return a
		}
		a.Completed++
	}
	a.Type = Done
	return a
}

// WavePlan is the next action of the application step.
type WavePlan struct {
	// Restart lists the applications to restart now (a new wave).
	Restart []Ref
	// Waiting lists restarted applications not yet rolled out (the wave in
	// flight); no new wave starts while it is not empty.
	Waiting []Observed
	// Restarted counts the applications restarted and rolled out.
	Restarted int
	// Skipped counts the applications not restarted: their pods were
	// converged already.
	Skipped int
	// Total counts the applications.
	Total int
	// Done: every application is restarted and rolled out, or skipped.
	Done bool
}

// NextWave plans the application restarts: while any restarted application has
// not rolled out, wait for it; otherwise restart up to maxConcurrent of the
// applications not yet restarted, in a stable order (namespace, kind, name).
// An application not restarted whose pods are converged already is skipped.
func NextWave(apps []Observed, maxConcurrent int) WavePlan {
	if maxConcurrent < 1 {
		maxConcurrent = 1
	}
	sorted := slices.Clone(apps)
	slices.SortFunc(sorted, func(a, b Observed) int { return compareRefs(a.Ref, b.Ref) })
	plan := WavePlan{Total: len(sorted)}
	var pending []Ref
	for _, app := range sorted {
		switch {
		case !app.Restarted && app.Converged:
			plan.Skipped++
		case !app.Restarted:
			pending = append(pending, app.Ref)
		case !app.RolledOut:
			plan.Waiting = append(plan.Waiting, app)
		default:
			plan.Restarted++
		}
	}
	switch {
	case len(plan.Waiting) > 0:
	case len(pending) > 0:
		plan.Restart = pending[:min(maxConcurrent, len(pending))]
	default:
		plan.Done = true
	}
	return plan
}

// Waves splits applications into the waves NextWave would restart them in:
// stable order (namespace, kind, name), at most maxConcurrent each.
func Waves(apps []Ref, maxConcurrent int) [][]Ref {
	if maxConcurrent < 1 {
		maxConcurrent = 1
	}
	sorted := slices.Clone(apps)
	slices.SortFunc(sorted, compareRefs)
	var waves [][]Ref
	for len(sorted) > 0 {
		n := min(maxConcurrent, len(sorted))
		waves = append(waves, sorted[:n])
		sorted = sorted[n:]
	}
	return waves
}

// Package restart plans the restarts of a rotation: the control plane one
// workload at a time in order, then the applications in a bounded sliding
// window. The plan
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
	"time"
)

// Annotation is set on the pod template of every workload a rotation
// restarts; its value is the rotation id. AtAnnotation, set with it, says
// when (RFC 3339): each restart's rollout is timed from it.
const (
	Annotation   = "mtls.rotator.dev/restarted-for"
	AtAnnotation = "mtls.rotator.dev/restarted-at"
)

// Patch is the JSON merge patch that restarts a workload for a rotation at
// a moment.
func Patch(rotationID string, at time.Time) []byte {
	p, _ := json.Marshal(map[string]any{
		"spec": map[string]any{"template": map[string]any{"metadata": map[string]any{
			"annotations": map[string]string{Annotation: rotationID, AtAnnotation: at.UTC().Format(time.RFC3339)},
		}}},
	})
	return p
}

// RestartedAt reads when the restart a pod template carries was asked for;
// zero when it does not say.
func RestartedAt(templateAnnotations map[string]string) time.Time {
	at, _ := time.Parse(time.RFC3339, templateAnnotations[AtAnnotation])
	return at
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
	// RestartedAt is when that restart was asked for; zero when unknown.
	RestartedAt time.Time
	// RolledOut: its latest spec is fully rolled out.
	RolledOut bool
	// Waiting explains an incomplete rollout.
	Waiting string
	// Converged: its pods hold what the phase needs already; an application
	// not restarted yet is then skipped.
	Converged bool
	// Pods is how many pods it is meant to run: a restart of one that runs
	// none creates none.
	Pods int32
	// NeverRollsOut says why a restart would never roll it out (its update
	// strategy); "" when one does.
	NeverRollsOut string
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
	// Restart lists the applications to restart now: as many as the window
	// has room for.
	Restart []Ref
	// Waiting lists restarted applications not yet rolled out: the window in
	// flight.
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

// NextWave plans the application restarts as a sliding window: never more
// than maxConcurrent restarted and not yet rolled out, and a new restart, in
// a stable order (namespace, kind, name), as soon as one of them has rolled
// out, so that the slowest does not hold the others back as lock-step waves
// would. An application not restarted whose pods are converged already is
// skipped. The caller stops the window at the first restart overdue
// (Overdue).
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
	free := maxConcurrent - len(plan.Waiting)
	plan.Restart = pending[:max(0, min(free, len(pending)))]
	plan.Done = len(plan.Waiting) == 0 && len(pending) == 0
	return plan
}

// Overdue returns the restarts in waiting whose rollout took longer than
// timeout by now, timed from when each was asked for (from since when that
// is unknown), and the earliest moment one of the others will be.
func Overdue(waiting []Observed, since time.Time, timeout time.Duration, now time.Time) (overdue []Observed, next time.Time) {
	for _, w := range waiting {
		start := w.RestartedAt
		if start.IsZero() {
			start = since
		}
		switch deadline := start.Add(timeout); {
		case now.After(deadline):
			overdue = append(overdue, w)
		case next.IsZero() || deadline.Before(next):
			next = deadline
		}
	}
	return overdue, next
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

// AskedFor marks as restarted, and not rolled out, the workloads observed
// without this rotation's restart that asked says were patched for it less
// than ttl before now: the observation came from a cache that has not yet
// seen the patch. A restart older than ttl and still unseen was undone by
// someone else, and is asked for again.
func AskedFor(observed []Observed, asked map[Ref]time.Time, now time.Time, ttl time.Duration) {
	for i := range observed {
		o := &observed[i]
		at, ok := asked[o.Ref]
		if !ok || o.Restarted || !o.Exists || now.Sub(at) >= ttl {
			continue
		}
		o.Restarted, o.RestartedAt, o.RolledOut, o.Converged = true, at, false, false
		o.Waiting = "its restart is not yet seen by the operator's cache"
	}
}

// Canary picks the application a phase restarts first, alone, so that the
// pods Dapr's injector makes for it show what the injector hands out before
// any other restarts: the one named chosen (recorded when it was picked);
// else one already restarted for this phase (its record was lost); else the
// first, in restart order, of those to restart that runs a pod. False when
// none runs a pod: no restart then makes a pod to learn from, nor one that
// could get stale anchors.
func Canary(apps []Observed, chosen string) (Observed, bool) {
	sorted := slices.Clone(apps)
	slices.SortFunc(sorted, func(a, b Observed) int { return compareRefs(a.Ref, b.Ref) })
	if i := slices.IndexFunc(sorted, func(o Observed) bool { return chosen != "" && o.Ref.String() == chosen }); i >= 0 {
		return sorted[i], true
	}
	if i := slices.IndexFunc(sorted, func(o Observed) bool { return o.Restarted && o.Pods > 0 }); i >= 0 {
		return sorted[i], true
	}
	i := slices.IndexFunc(sorted, func(o Observed) bool { return !o.Restarted && !o.Converged && o.Pods > 0 })
	if i < 0 {
		return Observed{}, false
	}
	return sorted[i], true
}

package controllers

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/convergence"
	"github.com/mtls-rotator/mtls-rotator/internal/eviction"
	"github.com/mtls-rotator/mtls-rotator/internal/restart"
	"github.com/mtls-rotator/mtls-rotator/internal/rotation"
)

// gateGrace is how long a closed gate waits before it stalls: the pod cache
// may trail the rollouts the previous phase just awaited.
const gateGrace = 30 * time.Second

// podsWait is what status.rotation.waitingFor names while a gate is closed.
const podsWait = "Dapr pods"

// observePods lists the live Dapr sidecar pods of this control plane, as the
// cache holds them, once per pass. It notes the workloads whose live pods
// all belong to another control plane: that control plane's rotations
// restart them, not this one's.
func (p *pass) observePods(ctx context.Context) ([]convergence.Pod, error) {
	if p.pods != nil {
		return p.pods, nil
	}
	pods := &corev1.PodList{}
	// Read-only: the cached pods are not copied.
	if err := p.List(ctx, pods, client.MatchingLabels{convergence.InjectedLabel: "true"}, client.UnsafeDisableDeepCopy); err != nil {
		return nil, fmt.Errorf("listing Dapr sidecar pods: %w", err)
	}
	observed := make([]convergence.Pod, 0, len(pods.Items))
	ours, others := map[string]bool{}, map[string]bool{}
	for i := range pods.Items {
		o, live := convergence.Observe(&pods.Items[i])
		switch {
		case !live:
		case o.ControlPlane == "" || o.ControlPlane == p.obj.Namespace:
			observed = append(observed, o)
			ours[o.Workload] = true
		default:
			others[o.Workload] = true
		}
	}
	for w := range others {
		if ours[w] || w == "" {
			delete(others, w)
		}
	}
	p.pods, p.otherControlPlanes = observed, others
	return observed, nil
}

// phaseGate holds the publish of a Switch or Prune phase until the Dapr pods
// that run are ready for it, as observed, whatever the spec restarts:
//   - Switch (the new issuer): every pod trusts the new root;
//   - Prune (the old root removed): likewise, and no certificate of the old
//     issuer can still be in use: every pod started after the Switch phase's
//     control plane restarted (Sentry signing with the new issuer), or
//     Dapr's workloadCertTTL plus allowedClockSkew passed since.
//
// It returns the trust sets the pods hold, for the proof of the publish. A
// closed gate waits, then stalls naming the pods holding it up, and opens by
// itself when they converge.
func (p *pass) phaseGate(ctx context.Context, newRoot string) ([][]string, error) {
	rot := p.rot()
	pods, err := p.observePods(ctx)
	if err != nil {
		return nil, err
	}
	r := convergence.Summarize(pods, p.gateRequirement(newRoot), maxNotConverged)
	if len(r.Stragglers) == 0 {
		if rot.WaitingFor == podsWait {
			p.normal("PodsConverged", "Publish", "rotation %s: all %d Dapr pods are ready for the %s phase", rot.ID, r.Total, rot.Phase)
		}
		return trustSets(r), nil
	}
	now := p.now()
	since := rotation.Wait(rot, podsWait, now)
	msg := fmt.Sprintf("the %s phase of rotation %s waits for %d of %d Dapr pods: %s", rot.Phase, rot.ID, r.Total-r.Converged, r.Total, describeStragglers(r))
	if p.obj.Spec.Applications.EvictUnmanagedPods {
		refused, err := p.evictUnmanaged(ctx, pods, newRoot, fmt.Sprintf("holding the %s phase", rot.Phase))
		if err != nil {
			return nil, err
		}
		if refused != "" {
			msg += "; " + refused
		}
	}
	if now.Sub(since.Time) < gateGrace {
		return nil, p.poll("rotation %s: %s", rot.ID, msg)
	}
	return nil, stall(rotatorv1.PodsNotConvergedReason,
		"%s; pods no rotation restarts (bare pods, Jobs' pods, other owners) must be deleted or recreated; the rotation goes on by itself once they are", msg).
		retry(p.stalledRetry(since.Time))
}

// maxStalledRetry bounds how long a stalled pass waits before it looks
// again by itself.
const maxStalledRetry = 2 * time.Minute

// stalledRetry is how soon a pass stalled since since looks again by
// itself: at the poll interval at first, then after a quarter of the time
// stalled, up to maxStalledRetry. What ends such a stall (a pod deleted or
// started, a workload rolled out) wakes a pass by its own event; the retry
// is the fallback, and each costs requests (an eviction per refused pod, a
// live list).
func (p *pass) stalledRetry(since time.Time) time.Duration {
	return min(max(p.now().Sub(since)/4, p.pollInterval()), maxStalledRetry)
}

// gateRequirement is what every pod must satisfy before the current phase
// publishes.
func (p *pass) gateRequirement(newRoot string) convergence.Requirement {
	req := convergence.Requirement{Roots: []string{newRoot}}
	rot := p.rot()
	if rot.Phase != rotatorv1.PhasePrune {
		return req
	}
	switched := phaseStepFinished(rot, rotatorv1.StepRestartingControlPlane, rotatorv1.PhaseSwitch)
	if switched.IsZero() {
		return req
	}
	ttl, skew := daprCertLifetime(p.obj.Status.DaprConfiguration)
	if p.now().Time.After(switched.Add(ttl + skew)) {
		return req // every certificate of the old issuer has expired
	}
	req.StartedAfter = switched
	req.Why = fmt.Sprintf("before Sentry signed with the new issuer (%s): it may present a certificate of the old issuer until %s (workloadCertTTL %s + allowedClockSkew %s)",
		switched.UTC().Format(time.RFC3339), switched.Add(ttl+skew).UTC().Format(time.RFC3339), ttl, skew)
	return req
}

// gated reports whether the current phase's publish is gated: it follows a
// phase that was published (a rotation that went straight to its last
// phase, over nothing or an expired issuer, is not).
func gated(rot *rotatorv1.RotationStatus) bool {
	previous := map[rotatorv1.RotationPhase]rotatorv1.RotationPhase{rotatorv1.PhaseSwitch: rotatorv1.PhaseOverlap, rotatorv1.PhasePrune: rotatorv1.PhaseSwitch}[rot.Phase]
	return previous != "" && slices.ContainsFunc(rot.Steps, func(s rotatorv1.StepStatus) bool { return s.Phase == previous })
}

// phaseStepFinished is when the step of the phase finished; zero if it did not.
func phaseStepFinished(rot *rotatorv1.RotationStatus, step rotatorv1.RotationStep, phase rotatorv1.RotationPhase) time.Time {
	for _, s := range rot.Steps {
		if s.Name == step && s.Phase == phase && s.FinishedAt != nil {
			return s.FinishedAt.Time
		}
	}
	return time.Time{}
}

// trustSets are the trust sets a report saw held.
func trustSets(r convergence.Report) [][]string {
	sets := make([][]string, 0, len(r.Sets))
	for _, s := range r.Sets {
		sets = append(sets, s.Anchors)
	}
	return sets
}

func describeStragglers(r convergence.Report) string {
	names := make([]string, 0, len(r.Stragglers)+1)
	for _, s := range r.Stragglers {
		owner := s.Owner
		if owner == "" {
			owner = "no owner"
		}
		names = append(names, fmt.Sprintf("%s/%s (%s: %s)", s.Namespace, s.Name, owner, s.Reason))
	}
	if more := r.Total - r.Converged - len(r.Stragglers); more > 0 {
		names = append(names, fmt.Sprintf("and %d more", more))
	}
	return strings.Join(names, ", ")
}

// daprCertLifetime is how long a workload certificate Sentry signed may be
// presented: Dapr's workloadCertTTL and allowedClockSkew, or their defaults.
func daprCertLifetime(c *rotatorv1.DaprConfigurationStatus) (ttl, skew time.Duration) {
	ttl, skew = 24*time.Hour, 15*time.Minute // Dapr's defaults
	if c == nil {
		return ttl, skew
	}
	if d, err := time.ParseDuration(c.WorkloadCertTTL); err == nil && d > 0 {
		ttl = d
	}
	if d, err := time.ParseDuration(c.AllowedClockSkew); err == nil && d >= 0 {
		skew = d
	}
	return ttl, skew
}

// planGates names, for the plan of a new-key rotation, the Dapr pods no
// phase would restart: they keep the original anchors and would hold the
// Switch gate until they are deleted or recreated.
func (p *pass) planGates(ctx context.Context, plan *rotatorv1.RotationPlan) error {
	pods, err := p.observePods(ctx)
	if err != nil {
		return err
	}
	restarted := map[string]bool{}
	if p.obj.Spec.Applications.RestartEnabled() {
		apps, err := p.applications(ctx, "")
		if err != nil {
			return err
		}
		for _, a := range apps {
			restarted[a.Ref.String()] = true
		}
	}
	var held []string
	for _, pod := range pods {
		if !restarted[pod.Workload] {
			held = append(held, fmt.Sprintf("%s/%s (%s)", pod.Namespace, pod.Name, cmp.Or(pod.Owner, "no owner")))
		}
	}
	if len(held) > 0 {
		plan.Blockers = append(plan.Blockers, fmt.Sprintf("%d Dapr pods no phase restarts would hold the Switch phase (PodsNotConverged) until they are deleted or recreated: %s",
			len(held), strings.Join(held[:min(len(held), maxNotConverged)], ", ")))
	}
	return nil
}

// markConverged marks the applications whose pods hold what the current
// phase needs already, so that they are not restarted: the anchors the
// phase published, exactly, and in the Switch phase a start after Sentry
// signed with the new issuer. An application with no pod observed is
// restarted, as when nothing is known of it, unless the rotation is lazy:
// then nothing of it runs on the old anchors, and the pods it starts get the
// new ones from the injector.
func (p *pass) markConverged(ctx context.Context, apps []restart.Observed, lazy bool) error {
	pods, err := p.observePods(ctx)
	if err != nil {
		return err
	}
	published, err := publishedAnchors(p.target.ConfigMap, keysOf(p.obj).CA)
	if err != nil {
		return err
	}
	req := convergence.Requirement{Roots: published, Exactly: true}
	if rot := p.rot(); rot.Phase == rotatorv1.PhaseSwitch {
		req.StartedAfter = phaseStepFinished(rot, rotatorv1.StepRestartingControlPlane, rotatorv1.PhaseSwitch)
		if req.StartedAfter.IsZero() {
			return nil
		}
	}
	seen, unmet := map[string]bool{}, map[string]bool{}
	for _, pod := range pods {
		w := pod.Workload
		seen[w] = true
		unmet[w] = unmet[w] || convergence.Unmet(pod, req) != ""
	}
	for i := range apps {
		w := apps[i].Ref.String()
		apps[i].Converged = (seen[w] || lazy) && !unmet[w]
	}
	return nil
}

// evictUnmanaged evicts the pods holding the current gate that no workload
// restart reaches: their owner, if any, recreates them on the published
// anchors. It says which evictions were refused (a PodDisruptionBudget), or "".
func (p *pass) evictUnmanaged(ctx context.Context, pods []convergence.Pod, newRoot, holding string) (string, error) {
	var evicted, refused []string
	for _, pod := range eviction.Candidates(pods, p.gateRequirement(newRoot)) {
		name := pod.Namespace + "/" + pod.Name
		target := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: pod.Name, Namespace: pod.Namespace}}
		err := p.SubResource("eviction").Create(ctx, target, &policyv1.Eviction{ObjectMeta: target.ObjectMeta})
		switch {
		case err == nil:
			evicted = append(evicted, name)
		case apierrors.IsNotFound(err):
		case apierrors.IsTooManyRequests(err):
			refused = append(refused, name)
		case apierrors.IsForbidden(err):
			return "", stall(rotatorv1.EvictionNotGrantedReason,
				"spec.applications.evictUnmanagedPods is set, but the operator may not evict pods (%v): grant it with the kustomize component config/eviction or the chart's eviction.enabled, or unset evictUnmanagedPods and delete the pods by hand", err).
				retry(30 * time.Second) // no event says the grant came
		default:
			return "", fmt.Errorf("evicting pod %s: %w", name, err)
		}
	}
	if len(evicted) > 0 {
		p.normal(rotatorv1.UnmanagedPodsEvictedReason, "Evict", "rotation %s: evicted %d Dapr pods no workload restart reaches, %s: %s",
			p.rot().ID, len(evicted), holding, strings.Join(evicted[:min(len(evicted), maxNotConverged)], ", "))
	}
	if len(refused) == 0 {
		return "", nil
	}
	return fmt.Sprintf("a PodDisruptionBudget refused the eviction of %s", strings.Join(refused[:min(len(refused), maxNotConverged)], ", ")), nil
}

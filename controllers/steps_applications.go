package controllers

import (
	"context"
	"fmt"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/expiry"
	"github.com/mtls-rotator/mtls-rotator/internal/restart"
	"github.com/mtls-rotator/mtls-rotator/internal/rotation"
)

// applications lists the Dapr applications a rotation restarts: the
// Deployments, StatefulSets, DaemonSets and Argo Rollouts selected whose pod
// template enables Dapr.
func (p *pass) applications(ctx context.Context, restartID string) ([]restart.Observed, error) {
	obj := p.obj
	spec := obj.Spec.Applications
	var namespaces map[string]bool
	if spec.NamespaceSelector != nil {
		sel, err := spec.NamespaceSelector.AsSelector()
		if err != nil {
			return nil, fmt.Errorf("spec.applications.namespaceSelector: %w", err)
		}
		nsList := &corev1.NamespaceList{}
		if err := p.List(ctx, nsList, client.MatchingLabelsSelector{Selector: sel}); err != nil {
			return nil, fmt.Errorf("listing namespaces: %w", err)
		}
		namespaces = map[string]bool{}
		for _, ns := range nsList.Items {
			namespaces[ns.Name] = true
		}
	}
	selector, err := spec.Selector.AsSelector()
	if err != nil {
		return nil, fmt.Errorf("spec.applications.selector: %w", err)
	}
	if _, err := p.observePods(ctx); err != nil {
		return nil, err
	}
	// Only Dapr-enabled workloads are listed (daprEnabledField), and only
	// read: no copy of every workload of the cluster on each pass.
	daprOnly := client.MatchingFields{daprEnabledField: "true"}
	var apps []restart.Observed
	add := func(o client.Object, tmpl map[string]string) {
		if (namespaces == nil || namespaces[o.GetNamespace()]) && daprEnabled(tmpl) {
			a := observe(o, restartID)
			if !p.otherControlPlanes[a.Ref.String()] {
				apps = append(apps, a)
			}
		}
	}
	deployments := &appsv1.DeploymentList{}
	if err := p.List(ctx, deployments, daprOnly, client.MatchingLabelsSelector{Selector: selector}, client.UnsafeDisableDeepCopy); err != nil {
		return nil, fmt.Errorf("listing Deployments: %w", err)
	}
	for i := range deployments.Items {
		add(&deployments.Items[i], deployments.Items[i].Spec.Template.Annotations)
	}
	statefulSets := &appsv1.StatefulSetList{}
	if err := p.List(ctx, statefulSets, daprOnly, client.MatchingLabelsSelector{Selector: selector}, client.UnsafeDisableDeepCopy); err != nil {
		return nil, fmt.Errorf("listing StatefulSets: %w", err)
	}
	for i := range statefulSets.Items {
		add(&statefulSets.Items[i], statefulSets.Items[i].Spec.Template.Annotations)
	}
	daemonSets := &appsv1.DaemonSetList{}
	if err := p.List(ctx, daemonSets, daprOnly, client.MatchingLabelsSelector{Selector: selector}, client.UnsafeDisableDeepCopy); err != nil {
		return nil, fmt.Errorf("listing DaemonSets: %w", err)
	}
	for i := range daemonSets.Items {
		add(&daemonSets.Items[i], daemonSets.Items[i].Spec.Template.Annotations)
	}
	rollouts, err := p.listRollouts(ctx, selector)
	if err != nil {
		return nil, err
	}
	for i := range rollouts {
		add(&rollouts[i], rolloutTemplateAnnotations(&rollouts[i]))
	}
	p.restarts.apply(keyOf(obj), restartID, apps, p.now().Time)
	return apps, nil
}

// stepApplications restarts the Dapr applications that need it, at most
// maxConcurrent at a time (advanceWindow); then, for a same-key rotation with
// applications.evictUnmanagedPods, evicts the pods no restart reached that
// hold only the root certificate it replaced.
func (p *pass) stepApplications(ctx context.Context) error {
	if err := p.restartApplications(ctx); err != nil {
		return err
	}
	return p.evictSameKeyStragglers(ctx)
}

// evictSameKeyStragglers evicts, when asked to, the pods no workload restart
// reaches that do not trust the root a same-key rotation published: they
// would lose every peer when the certificate they hold expires. A new-key
// rotation evicts such pods at its gates instead.
func (p *pass) evictSameKeyStragglers(ctx context.Context) error {
	obj := p.obj
	if !obj.Spec.Applications.EvictUnmanagedPods || p.rot().Phase != "" || obj.Status.Root == nil {
		return nil
	}
	pods, err := p.observePods(ctx)
	if err != nil {
		return err
	}
	refused, err := p.evictUnmanaged(ctx, pods, obj.Status.Root.SHA256Fingerprint, "holding only the root certificate the rotation replaced")
	if err != nil {
		return err
	}
	if refused != "" {
		p.event(corev1.EventTypeWarning, rotatorv1.UnmanagedPodsEvictedReason, "Evict", "rotation %s: %s; they keep the previous root until they are recreated (status.convergence.cutOff)", p.rot().ID, refused)
	}
	return nil
}

// restartApplications restarts the Dapr applications that need it, at most
// maxConcurrent at a time (advanceWindow).
func (p *pass) restartApplications(ctx context.Context) error {
	rot, obj := p.rot(), p.obj
	// Judged on the bundle as published, read live: a cache that has not
	// seen the publish yet would take pods on the anchors from before it for
	// converged, and skip them.
	if err := p.refreshTarget(ctx); err != nil {
		return err
	}
	if rot.Renews == string(expiry.Issuer) {
		changed, err := p.backups().anchorsChanged(ctx, p.target.Secret)
		if err != nil {
			return err
		}
		if !changed {
			p.normal("ApplicationsRestarted", "Restart",
				"rotation %s: applications not restarted: the trust anchors did not change, and sidecars renew their workload certificates from the new issuer on their own", rot.ID)
			return nil
		}
		// cert-manager renewed the root on its own since the last
		// publish: the sidecars' anchors must follow.
	}
	if !obj.Spec.Applications.RestartEnabled() {
		p.normal("ApplicationsRestarted", "Restart",
			"rotation %s: applications not restarted (spec.applications.restart is false): their sidecars keep their trust anchors until their pods are recreated", rot.ID)
		return nil
	}
	if err := p.afterSwitchSecond(); err != nil {
		return err
	}
	apps, err := p.applications(ctx, rotation.RestartID(rot))
	if err != nil {
		return err
	}
	if err := p.markConverged(ctx, apps, p.lazy() != nil); err != nil {
		return err
	}
	if stuck := neverRollOut(apps); stuck != "" {
		return stall(rotatorv1.UpdateStrategyUnsupportedReason,
			"%s, so a restart would never roll them out; no further application is restarted: set their updateStrategy to RollingUpdate without a partition, or recreate their pods and leave them out with spec.applications.selector", stuck).
			retry(30 * time.Second)
	}
	plan := restart.NextWave(apps, obj.Spec.Applications.GetMaxConcurrent())
	obj.Status.Applications = &rotatorv1.ApplicationsStatus{
		Total: int32(plan.Total), Restarted: int32(plan.Restarted), Skipped: int32(plan.Skipped),
		Progress: fmt.Sprintf("%d/%d", plan.Restarted+plan.Skipped, plan.Total),
	}
	return p.advanceWindow(ctx, apps, plan)
}

// afterSwitchSecond holds a Switch phase's application restarts until the
// second after its control plane finished restarting (Sentry signing with the
// new issuer). Start times are kept to the second, and a pod counts as
// started after that moment only in a later second (convergence): a pod
// restarted within the same second would hold the Prune gate for a whole
// workloadCertTTL. The wait is under a second.
func (p *pass) afterSwitchSecond() error {
	rot := p.rot()
	if rot.Phase != rotatorv1.PhaseSwitch {
		return nil
	}
	signed := phaseStepFinished(rot, rotatorv1.StepRestartingControlPlane, rotatorv1.PhaseSwitch)
	if next := signed.Truncate(time.Second).Add(time.Second); !signed.IsZero() && p.now().Time.Before(next) {
		return p.pollUntil(next, "rotation %s: restarting applications from the second after Sentry's restart", rot.ID)
	}
	return nil
}

// neverRollOut names the applications that still need their pods
// replaced and whose update strategy never replaces them, or "".
func neverRollOut(apps []restart.Observed) string {
	var names []string
	for _, a := range apps {
		if a.NeverRollsOut != "" && !a.Converged {
			names = append(names, a.Ref.String()+" "+a.NeverRollsOut)
		}
	}
	if len(names) > 3 {
		names = append(names[:3], fmt.Sprintf("and %d more", len(names)-3))
	}
	return strings.Join(names, "; ")
}

// appsWait is what status.rotation.waitingFor names while applications roll out.
const appsWait = "applications wave"

// advanceWindow moves the sliding window of application restarts: it stops
// at the first restart overdue (none after it starts), opens only once the
// phase's canary showed the injector hands out the published anchors
// (canaryGate), restarts as many as the window has room for, and waits for
// those in flight. Each restart's rollout is timed from its own restart.
func (p *pass) advanceWindow(ctx context.Context, apps []restart.Observed, plan restart.WavePlan) error {
	rot, obj := p.rot(), p.obj
	now, timeout, window := p.now(), obj.Spec.Applications.GetRolloutTimeout(), obj.Spec.Applications.GetMaxConcurrent()
	since := now.Time
	if rot.WaitingFor == appsWait && rot.WaitingSince != nil {
		since = rot.WaitingSince.Time // for restarts that do not say when they were asked for
	}
	overdue, next := restart.Overdue(plan.Waiting, since, timeout, now.Time)
	if len(overdue) > 0 {
		return stall(rotatorv1.RolloutTimeoutReason,
			"applications did not roll out within %s of their restart: %s; no further application is restarted until they do", timeout, describeWaiting(overdue)).
			retry(p.pollInterval())
	}
	// Judged even when every restart is done: a canary that was the last
	// to restart may still have got stale anchors.
	if err := p.canaryGate(ctx, apps); err != nil {
		return err
	}
	if plan.Done {
		skipped := ""
		if plan.Skipped > 0 {
			skipped = fmt.Sprintf("; %d more were not restarted: their pods held what the phase needs already", plan.Skipped)
		}
		p.normal("ApplicationsRestarted", "Restart",
			"rotation %s: restarted %d Dapr applications, at most %d at a time%s%s", rot.ID, plan.Restarted, window, phaseSuffix(rot), skipped)
		return nil
	}
	if err := p.deferRestarts(ctx, plan); err != nil {
		return err
	}
	if len(plan.Restart) == 0 {
		rotation.Wait(rot, appsWait, now)
		return p.pollUntil(next, "rotation %s: waiting for %d applications to roll out (%d/%d done): %s",
			rot.ID, len(plan.Waiting), plan.Restarted, plan.Total, describeWaiting(plan.Waiting))
	}
	if plan.Restarted == 0 && len(plan.Waiting) == 0 {
		// Before the first application of this phase restarts (no canary
		// went first: none runs a pod).
		if err := p.guardPublished(ctx, "the first application"); err != nil {
			return err
		}
	}
	for _, ref := range plan.Restart {
		if err := p.restartWorkload(ctx, ref, rotation.RestartID(rot)); err != nil {
			return err
		}
	}
	if rot.WaitingFor != appsWait {
		rot.WaitingFor, rot.WaitingSince = appsWait, &now
	}
	if deadline := now.Add(timeout); next.IsZero() || deadline.Before(next) {
		next = deadline
	}
	return p.pollUntil(next, "rotation %s: restarted %d more applications, %d rolling out (%d/%d done)",
		rot.ID, len(plan.Restart), len(plan.Restart)+len(plan.Waiting), plan.Restarted, plan.Total)
}

// describeWaiting names the first few applications rolling out.
func describeWaiting(waiting []restart.Observed) string {
	names := make([]string, 0, min(len(waiting), 6))
	for i, w := range waiting {
		if i == 5 {
			names = append(names, fmt.Sprintf("and %d more", len(waiting)-5))
			break
		}
		names = append(names, fmt.Sprintf("%s (%s)", w.Ref, w.Waiting))
	}
	return strings.Join(names, ", ")
}

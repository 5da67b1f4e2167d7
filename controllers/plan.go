package controllers

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/pki"
	"github.com/mtls-rotator/mtls-rotator/internal/restart"
	"github.com/mtls-rotator/mtls-rotator/internal/rotation"
)

// maxPlannedWaves bounds the waves listed in status.plan.
const maxPlannedWaves = 10

// reconcileDryRun, with spec.dryRun, records what the next rotation would do
// in status and an event, and touches nothing else.
func (p *pass) reconcileDryRun(ctx context.Context) error {
	if !p.obj.Spec.DryRun {
		return nil
	}
	plan, err := p.plan(ctx)
	if err != nil {
		return err
	}
	changed := planChanged(p.obj.Status.Plan, plan)
	if !changed {
		plan = p.obj.Status.Plan // its ComputedAt too: a pass that finds the same plan writes nothing
	}
	p.obj.Status.Plan = plan
	msg := fmt.Sprintf("dry run: a %s rotation would issue %d certificates, restart %d control-plane workloads, then %d applications in %d waves per phase%s",
		plan.KeyPolicy, len(plan.Certificates), len(plan.ControlPlane), plan.Applications, plan.Waves, phaseList(plan.Phases))
	if plan.RestartsDeferredUntil != nil {
		msg += fmt.Sprintf("; lazily: only those their owners have not redeployed by %s", plan.RestartsDeferredUntil.UTC().Format(time.RFC3339))
	}
	if plan.KeepsRetiredRoots != "" {
		msg += "; " + plan.KeepsRetiredRoots
	}
	if len(plan.Blockers) > 0 {
		msg += fmt.Sprintf("; it would stop: %s", plan.Blockers[0])
	}
	markReady(p.obj, "%s", msg)
	if changed {
		p.normal("RotationPlanned", "Plan", "%s", msg)
	}
	return errDone
}

// planChanged reports whether plan says anything old did not, the time it
// was computed aside.
func planChanged(old, plan *rotatorv1.RotationPlan) bool {
	if old == nil {
		return true
	}
	same := plan.DeepCopy()
	same.ComputedAt = old.ComputedAt
	return !equality.Semantic.DeepEqual(old, same)
}

func phaseList(phases []rotatorv1.RotationPhase) string {
	if len(phases) == 0 {
		return ""
	}
	return fmt.Sprintf(" (phases %v)", phases)
}

// plan computes what the next rotation would do, reading only: the
// certificates and phases come from the strategy the rotation would run with.
func (p *pass) plan(ctx context.Context) (*rotatorv1.RotationPlan, error) {
	obj := p.obj
	plan := &rotatorv1.RotationPlan{ComputedAt: p.now(), KeyPolicy: obj.Spec.Root.GetKeyPolicy()}
	if err := p.retiredRootsUnknown(); err != nil {
		plan.Blockers = append(plan.Blockers, fmt.Sprintf("Dapr's Configurations cannot be read, so whether the roots it retires stay is not known (%s): %v",
			rotatorv1.DaprConfigurationUnknownReason, err))
	} else if keeps, why := rotation.KeepsRetiredRoots(&obj.Spec.Root.Retired, obj.Status.DaprConfiguration); keeps {
		plan.KeepsRetiredRoots = fmt.Sprintf("the roots it retires stay in the trust anchors until %s after each expires (%s)", obj.Spec.Root.Retired.GetKeepAfterExpiry(), why)
	}
	if err := p.strategyFor(specRotation(obj)).plan(ctx, p.installed(), plan); err != nil {
		return nil, err
	}
	for _, w := range obj.Spec.ControlPlane.GetWorkloads() {
		ref := restart.Ref{Kind: string(w.Kind), Namespace: obj.Namespace, Name: w.Name}
		o, err := workloadObject(ref.Kind)
		if err != nil {
			return nil, err
		}
		err = p.Get(ctx, types.NamespacedName{Namespace: obj.Namespace, Name: w.Name}, o)
		switch {
		case apierrors.IsNotFound(err) && w.Optional:
			plan.ControlPlane = append(plan.ControlPlane, ref.String()+" (optional, not found: skipped)")
		case apierrors.IsNotFound(err):
			plan.ControlPlane = append(plan.ControlPlane, ref.String()+" (not found)")
			plan.Blockers = append(plan.Blockers, fmt.Sprintf("control-plane workload %s does not exist", ref))
		case err != nil:
			return nil, fmt.Errorf("reading %s: %w", ref, err)
		default:
			plan.ControlPlane = append(plan.ControlPlane, ref.String())
			if why := observe(o, "").NeverRollsOut; why != "" {
				plan.Blockers = append(plan.Blockers, fmt.Sprintf("control-plane workload %s %s, so a restart would never roll it out: it would stop (%s)",
					ref, why, rotatorv1.UpdateStrategyUnsupportedReason))
			}
		}
	}
	if obj.Spec.Applications.RestartEnabled() {
		if err := p.planApplications(ctx, plan); err != nil {
			return nil, err
		}
		p.planLazy(plan)
	}
	return plan, nil
}

// planApplications lists the applications a rotation would restart, and
// its first waves.
func (p *pass) planApplications(ctx context.Context, plan *rotatorv1.RotationPlan) error {
	// The plan needs no restart id: nothing is restarted yet.
	apps, err := p.applications(ctx, "")
	if err != nil {
		return err
	}
	refs := make([]restart.Ref, 0, len(apps))
	for _, a := range apps {
		refs = append(refs, a.Ref)
	}
	if stuck := neverRollOut(apps); stuck != "" {
		plan.Blockers = append(plan.Blockers, fmt.Sprintf("%s, so a restart would never roll them out: it would stop (%s)", stuck, rotatorv1.UpdateStrategyUnsupportedReason))
	}
	waves := restart.Waves(refs, p.obj.Spec.Applications.GetMaxConcurrent())
	plan.Applications, plan.Waves = int32(len(refs)), int32(len(waves))
	for _, wave := range waves[:min(len(waves), maxPlannedWaves)] {
		var names []string
		for _, ref := range wave {
			names = append(names, ref.String())
		}
		plan.FirstWaves = append(plan.FirstWaves, rotatorv1.PlannedWave{Applications: names})
	}
	return nil
}

// reuseBlocker says why a same-key rotation over installed would stop, if it would.
func (p *pass) reuseBlocker(ctx context.Context, installed pki.Bundle) string {
	obj := p.obj
	unknown := fmt.Sprintf("the installed trust anchors were not made with the managed root key: a Reuse rotation would stop with %s; use keyPolicy Rotate",
		rotatorv1.RootKeyUnknownReason)
	anchors, err := pki.ParseCertificates(installed.TrustAnchors)
	if err != nil {
		return fmt.Sprintf("the installed trust anchors cannot be parsed (%v): use keyPolicy Rotate", err)
	}
	root := &corev1.Secret{}
	if err := p.reader().Get(ctx, client.ObjectKey{Namespace: obj.Namespace, Name: rootSecretName(obj)}, root); err != nil {
		if obj.Spec.Root.PrivateKeySecretRef != nil {
			return "" // the brought key decides; checked when it is imported
		}
		return unknown
	}
	key, err := pki.ParsePrivateKey(root.Data[corev1.TLSPrivateKeyKey])
	if err != nil {
		return unknown
	}
	for _, a := range anchors {
		if pki.KeyMatches(key, a) {
			return ""
		}
	}
	return unknown
}

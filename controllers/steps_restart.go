package controllers

import (
	"context"
	"fmt"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/restart"
	"github.com/mtls-rotator/mtls-rotator/internal/rollout"
	"github.com/mtls-rotator/mtls-rotator/internal/rotation"
)

// workloadObject returns an empty object of a workload kind.
func workloadObject(kind string) (client.Object, error) {
	switch rotatorv1.WorkloadKind(kind) {
	case rotatorv1.Deployment:
		return &appsv1.Deployment{}, nil
	case rotatorv1.StatefulSet:
		return &appsv1.StatefulSet{}, nil
	case rotatorv1.DaemonSet:
		return &appsv1.DaemonSet{}, nil
	}
	return nil, fmt.Errorf("unsupported workload kind %q", kind)
}

// templateAnnotations returns the pod template annotations of a workload.
func templateAnnotations(o client.Object) map[string]string {
	switch w := o.(type) {
	case *appsv1.Deployment:
		return w.Spec.Template.Annotations
	case *appsv1.StatefulSet:
		return w.Spec.Template.Annotations
	case *appsv1.DaemonSet:
		return w.Spec.Template.Annotations
	}
	return nil
}

// observe reports what a rotation needs to know of one workload object (an
// Argo Rollout is unstructured).
func observe(o client.Object, rotationID string) restart.Observed {
	obs := restart.Observed{Exists: true}
	var st rollout.Status
	var tmpl map[string]string
	switch w := o.(type) {
	case *unstructured.Unstructured:
		return observeRollout(w, rotationID)
	case *appsv1.Deployment:
		obs.Ref = restart.Ref{Kind: string(rotatorv1.Deployment), Namespace: w.Namespace, Name: w.Name}
		st, tmpl, obs.Pods = rollout.Deployment(w), w.Spec.Template.Annotations, ptr.Deref(w.Spec.Replicas, 1)
	case *appsv1.StatefulSet:
		obs.Ref = restart.Ref{Kind: string(rotatorv1.StatefulSet), Namespace: w.Namespace, Name: w.Name}
		st, tmpl, obs.Pods = rollout.StatefulSet(w), w.Spec.Template.Annotations, ptr.Deref(w.Spec.Replicas, 1)
		obs.NeverRollsOut = rollout.StatefulSetNeverRollsOut(w)
	case *appsv1.DaemonSet:
		obs.Ref = restart.Ref{Kind: string(rotatorv1.DaemonSet), Namespace: w.Namespace, Name: w.Name}
		st, tmpl, obs.Pods = rollout.DaemonSet(w), w.Spec.Template.Annotations, w.Status.DesiredNumberScheduled
		obs.NeverRollsOut = rollout.DaemonSetNeverRollsOut(w)
	}
	obs.Restarted = restart.RestartedFor(tmpl, rotationID)
	if obs.Restarted {
		obs.RestartedAt = restart.RestartedAt(tmpl)
	}
	obs.RolledOut, obs.Waiting = st.Done, st.Reason
	return obs
}

func (p *pass) restartWorkload(ctx context.Context, ref restart.Ref, rotationID string) error {
	if ref.Kind == rolloutKind {
		return p.restartRollout(ctx, ref, rotationID)
	}
	o, err := workloadObject(ref.Kind)
	if err != nil {
		return err
	}
	o.SetNamespace(ref.Namespace)
	o.SetName(ref.Name)
	now := p.now().Time
	if err := p.Patch(ctx, o, client.RawPatch(types.MergePatchType, restart.Patch(rotationID, now)), client.FieldOwner(ControllerName)); err != nil {
		return fmt.Errorf("restarting %s: %w", ref, err)
	}
	p.restarts.record(keyOf(p.obj), rotationID, ref, now)
	p.log.Info("workload restarted", "kind", ref.Kind, "namespace", ref.Namespace, "name", ref.Name, "rotation", rotationID)
	return nil
}

// stepControlPlane restarts the control-plane workloads one at a time, in
// order, each awaited until fully rolled out. One that does not roll out
// within the timeout rolls the rotation back.
func (p *pass) stepControlPlane(ctx context.Context) error {
	rot, obj := p.rot(), p.obj
	observed, rolledBack, err := p.controlPlane(ctx)
	if err != nil {
		return err
	}
	if rolledBack != nil {
		// This pass read the status from before a rollback that is done in
		// the world: finish it again, which is idempotent, and quietly.
		return p.beginRollBack(ctx, *rolledBack)
	}
	if rot.RollingBack != "" {
		// Recorded by an operator version that rolled back within this step.
		ref, err := restart.ParseRef(rot.RollingBack)
		if err != nil {
			return fmt.Errorf("status.rotation.rollingBack: %w", err)
		}
		return p.beginRollBack(ctx, ref)
	}
	a := restart.NextControlPlane(observed)
	now, timeout := p.now(), obj.Spec.ControlPlane.GetRolloutTimeout()
	workloads := len(obj.Spec.ControlPlane.GetWorkloads())
	switch a.Type {
	case restart.Missing:
		return stall(rotatorv1.WorkloadNotFoundReason,
			"control-plane workload %s does not exist; no application was restarted (mark it optional in spec.controlPlane.workloads if this Dapr version has none)", a.Workload.Ref).retry(30 * time.Second)
	case restart.Restart:
		if why := a.Workload.NeverRollsOut; why != "" {
			return stall(rotatorv1.UpdateStrategyUnsupportedReason,
				"control-plane workload %s %s, so a restart would never roll it out; nothing was restarted: set its updateStrategy to RollingUpdate without a partition", a.Workload.Ref, why).
				retry(30 * time.Second)
		}
		if err := p.guardPublished(ctx, a.Workload.Ref.String()); err != nil {
			return err
		}
		if err := p.restartWorkload(ctx, a.Workload.Ref, rotation.RestartID(rot)); err != nil {
			return err
		}
		rot.WaitingFor, rot.WaitingSince = a.Workload.Ref.String(), &now
		return p.pollUntil(now.Add(timeout), "rotation %s: restarted %s (%d of %d control-plane workloads done)", rot.ID, a.Workload.Ref, a.Completed, workloads-len(a.Skipped))
	case restart.Wait:
		since := rotation.Wait(rot, a.Workload.Ref.String(), now)
		if now.Sub(since.Time) > timeout {
			p.log.Info("control-plane rollout timed out", "workload", a.Workload.Ref.String(), "waiting", a.Workload.Waiting)
			return p.beginRollBack(ctx, a.Workload.Ref)
		}
		return p.pollUntil(since.Add(timeout), "rotation %s: waiting for %s to roll out: %s", rot.ID, a.Workload.Ref, a.Workload.Waiting)
	}
	for _, s := range a.Skipped {
		p.normal("WorkloadSkipped", "Restart", "optional control-plane workload %s does not exist; skipped", s)
	}
	p.normal("ControlPlaneRestarted", "Restart", "rotation %s: restarted %d control-plane workloads in order%s", rot.ID, a.Completed, phaseSuffix(rot))
	return nil
}

// controlPlane observes the control-plane workloads for the current phase's
// restart, and names one already restarted on a rollback, if any.
func (p *pass) controlPlane(ctx context.Context) ([]restart.Observed, *restart.Ref, error) {
	obj, restartID := p.obj, rotation.RestartID(p.rot())
	workloads := obj.Spec.ControlPlane.GetWorkloads()
	observed := make([]restart.Observed, 0, len(workloads))
	var rolledBack *restart.Ref
	for _, w := range workloads {
		o, err := workloadObject(string(w.Kind))
		if err != nil {
			return nil, nil, err
		}
		ref := restart.Ref{Kind: string(w.Kind), Namespace: obj.Namespace, Name: w.Name}
		if err := p.Get(ctx, types.NamespacedName{Namespace: obj.Namespace, Name: w.Name}, o); apierrors.IsNotFound(err) {
			observed = append(observed, restart.Observed{Ref: ref, Optional: w.Optional})
			continue
		} else if err != nil {
			return nil, nil, fmt.Errorf("reading %s: %w", ref, err)
		}
		obs := observe(o, restartID)
		obs.Optional = w.Optional
		observed = append(observed, obs)
		if restart.RestartedFor(templateAnnotations(o), rollbackID(restartID)) {
			rolledBack = &obs.Ref
		}
	}
	p.restarts.apply(keyOf(obj), restartID, observed, p.now().Time)
	return observed, rolledBack, nil
}

package controllers

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/fluxcd/pkg/runtime/patch"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/expiry"
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

// observe reports what a rotation needs to know of one workload object.
func observe(o client.Object, rotationID string) restart.Observed {
	obs := restart.Observed{Exists: true}
	var st rollout.Status
	var tmpl map[string]string
	switch w := o.(type) {
	case *appsv1.Deployment:
		obs.Ref = restart.Ref{Kind: string(rotatorv1.Deployment), Namespace: w.Namespace, Name: w.Name}
		st, tmpl = rollout.Deployment(w), w.Spec.Template.Annotations
	case *appsv1.StatefulSet:
		obs.Ref = restart.Ref{Kind: string(rotatorv1.StatefulSet), Namespace: w.Namespace, Name: w.Name}
		st, tmpl = rollout.StatefulSet(w), w.Spec.Template.Annotations
	case *appsv1.DaemonSet:
		obs.Ref = restart.Ref{Kind: string(rotatorv1.DaemonSet), Namespace: w.Namespace, Name: w.Name}
		st, tmpl = rollout.DaemonSet(w), w.Spec.Template.Annotations
	}
	obs.Restarted = restart.RestartedFor(tmpl, rotationID)
	obs.RolledOut, obs.Waiting = st.Done, st.Reason
	return obs
}

func (r *MTLSRootRotationReconciler) restartWorkload(ctx context.Context, ref restart.Ref, rotationID string) error {
	o, err := workloadObject(ref.Kind)
	if err != nil {
		return err
	}
	o.SetNamespace(ref.Namespace)
	o.SetName(ref.Name)
	if err := r.Patch(ctx, o, client.RawPatch(types.MergePatchType, restart.Patch(rotationID)), client.FieldOwner(ControllerName)); err != nil {
		return fmt.Errorf("restarting %s: %w", ref, err)
	}
	ctrlLog(ctx).Info("workload restarted", "kind", ref.Kind, "namespace", ref.Namespace, "name", ref.Name, "rotation", rotationID)
	return nil
}

// stepControlPlane restarts the control-plane workloads one at a time, in
// order, each awaited until fully rolled out.
func (r *MTLSRootRotationReconciler) stepControlPlane(ctx context.Context, obj *rotatorv1.MTLSRootRotation, t *target, patcher *patch.SerialPatcher) stepResult {
	rot := obj.Status.Rotation
	workloads := obj.Spec.ControlPlane.GetWorkloads()
	observed := make([]restart.Observed, 0, len(workloads))
	var rollingBack *restart.Ref
	for _, w := range workloads {
		o, err := workloadObject(string(w.Kind))
		if err != nil {
			return fail(err)
		}
		ref := restart.Ref{Kind: string(w.Kind), Namespace: obj.Namespace, Name: w.Name}
		if err := r.Get(ctx, types.NamespacedName{Namespace: obj.Namespace, Name: w.Name}, o); apierrors.IsNotFound(err) {
			observed = append(observed, restart.Observed{Ref: ref, Optional: w.Optional})
			continue
		} else if err != nil {
			return fail(fmt.Errorf("reading %s: %w", ref, err))
		}
		obs := observe(o, rotation.RestartID(rot))
		obs.Optional = w.Optional
		observed = append(observed, obs)
		if restart.RestartedFor(templateAnnotations(o), rollbackID(rotation.RestartID(rot))) {
			rollingBack = &obs.Ref
		}
	}
	if rollingBack != nil {
		// This pass read the status from before a rollback that is done in
		// the world: finish it again, which is idempotent, and quietly.
		return r.rollBack(ctx, obj, t, patcher, *rollingBack, false)
	}
	if rot.RollingBack != "" {
		// A rollback was under way when the operator stopped: finish it.
		ref, err := restart.ParseRef(rot.RollingBack)
		if err != nil {
			return fail(fmt.Errorf("status.rotation.rollingBack: %w", err))
		}
		return r.rollBack(ctx, obj, t, patcher, ref, true)
	}

	a := restart.NextControlPlane(observed)
	now := r.now()
	switch a.Type {
	case restart.Missing:
		r.markStalled(ctx, obj, rotatorv1.WorkloadNotFoundReason,
			"control-plane workload %s does not exist; no application was restarted (mark it optional in spec.controlPlane.workloads if this Dapr version has none)", a.Workload.Ref)
		return waitFor(ctrl.Result{RequeueAfter: 30 * time.Second})
	case restart.Restart:
		if err := r.restartWorkload(ctx, a.Workload.Ref, rotation.RestartID(rot)); err != nil {
			return fail(err)
		}
		rot.WaitingFor, rot.WaitingSince = a.Workload.Ref.String(), &now
		markProgress(obj, "rotation %s: restarted %s (%d of %d control-plane workloads done)", rot.ID, a.Workload.Ref, a.Completed, len(workloads)-len(a.Skipped))
		return waitFor(r.poll())
	case restart.Wait:
		since := rotation.Wait(rot, a.Workload.Ref.String(), now)
		timeout := obj.Spec.ControlPlane.GetRolloutTimeout()
		if now.Sub(since.Time) > timeout {
			ctrlLog(ctx).Info("control-plane rollout timed out", "workload", a.Workload.Ref.String(), "waiting", a.Workload.Waiting)
			return r.rollBack(ctx, obj, t, patcher, a.Workload.Ref, true)
		}
		markProgress(obj, "rotation %s: waiting for %s to roll out: %s", rot.ID, a.Workload.Ref, a.Workload.Waiting)
		return waitFor(r.poll())
	}
	for _, s := range a.Skipped {
		r.EventRecorder.Eventf(obj, nil, corev1.EventTypeNormal, "WorkloadSkipped", "Restart",
			"optional control-plane workload %s does not exist; skipped", s)
	}
	r.EventRecorder.Eventf(obj, nil, corev1.EventTypeNormal, "ControlPlaneRestarted", "Restart",
		"rotation %s: restarted %d control-plane workloads in order%s", rot.ID, a.Completed, phaseSuffix(rot))
	return advance()
}

func phaseSuffix(rot *rotatorv1.RotationStatus) string {
	if rot.Phase == "" {
		return ""
	}
	return " (" + string(rot.Phase) + " phase)"
}

// applications lists the Dapr applications a rotation restarts.
func (r *MTLSRootRotationReconciler) applications(ctx context.Context, obj *rotatorv1.MTLSRootRotation) ([]restart.Observed, error) {
	spec := obj.Spec.Applications
	var namespaces map[string]bool
	if spec.NamespaceSelector != nil {
		sel, err := metav1.LabelSelectorAsSelector(spec.NamespaceSelector)
		if err != nil {
			return nil, fmt.Errorf("spec.applications.namespaceSelector: %w", err)
		}
		nsList := &corev1.NamespaceList{}
		if err := r.List(ctx, nsList, client.MatchingLabelsSelector{Selector: sel}); err != nil {
			return nil, fmt.Errorf("listing namespaces: %w", err)
		}
		namespaces = map[string]bool{}
		for _, ns := range nsList.Items {
			namespaces[ns.Name] = true
		}
	}
	selector := labels.Everything()
	if spec.Selector != nil {
		sel, err := metav1.LabelSelectorAsSelector(spec.Selector)
		if err != nil {
			return nil, fmt.Errorf("spec.applications.selector: %w", err)
		}
		selector = sel
	}
	var apps []restart.Observed
	add := func(o client.Object, tmpl map[string]string) {
		if namespaces != nil && !namespaces[o.GetNamespace()] {
			return
		}
		if tmpl[rotatorv1.DaprEnabledAnnotation] != rotatorv1.DaprEnabledAnnotationValue {
			return
		}
		apps = append(apps, observe(o, rotation.RestartID(obj.Status.Rotation)))
	}
	deployments := &appsv1.DeploymentList{}
	if err := r.List(ctx, deployments, client.MatchingLabelsSelector{Selector: selector}); err != nil {
		return nil, fmt.Errorf("listing Deployments: %w", err)
	}
	for i := range deployments.Items {
		add(&deployments.Items[i], deployments.Items[i].Spec.Template.Annotations)
	}
	statefulSets := &appsv1.StatefulSetList{}
	if err := r.List(ctx, statefulSets, client.MatchingLabelsSelector{Selector: selector}); err != nil {
		return nil, fmt.Errorf("listing StatefulSets: %w", err)
	}
	for i := range statefulSets.Items {
		add(&statefulSets.Items[i], statefulSets.Items[i].Spec.Template.Annotations)
	}
	daemonSets := &appsv1.DaemonSetList{}
	if err := r.List(ctx, daemonSets, client.MatchingLabelsSelector{Selector: selector}); err != nil {
		return nil, fmt.Errorf("listing DaemonSets: %w", err)
	}
	for i := range daemonSets.Items {
		add(&daemonSets.Items[i], daemonSets.Items[i].Spec.Template.Annotations)
	}
	return apps, nil
}

// anchorsChanged reports whether the rotation published other trust anchors
// than the ones installed before it (kept in the backup Secret).
func (r *MTLSRootRotationReconciler) anchorsChanged(ctx context.Context, obj *rotatorv1.MTLSRootRotation) (bool, error) {
	keys := keysOf(obj)
	backup, current := &corev1.Secret{}, &corev1.Secret{}
	if err := r.reader().Get(ctx, client.ObjectKey{Namespace: obj.Namespace, Name: backupName(obj)}, backup); err != nil {
		return false, fmt.Errorf("reading the backup Secret: %w", err)
	}
	if err := r.reader().Get(ctx, client.ObjectKey{Namespace: obj.Namespace, Name: obj.Spec.Target.GetSecretName()}, current); err != nil {
		return false, fmt.Errorf("reading Secret %s/%s: %w", obj.Namespace, obj.Spec.Target.GetSecretName(), err)
	}
	return !bytes.Equal(backup.Data[keys.CA], current.Data[keys.CA]), nil
}

// stepApplications restarts the Dapr applications in waves of at most
// maxConcurrent, each wave awaited before the next starts.
func (r *MTLSRootRotationReconciler) stepApplications(ctx context.Context, obj *rotatorv1.MTLSRootRotation) stepResult {
	rot := obj.Status.Rotation
	if rot.Renews == string(expiry.Issuer) {
		changed, err := r.anchorsChanged(ctx, obj)
		if err != nil {
			return fail(err)
		}
		if !changed {
			r.EventRecorder.Eventf(obj, nil, corev1.EventTypeNormal, "ApplicationsRestarted", "Restart",
				"rotation %s: applications not restarted: the trust anchors did not change, and sidecars renew their workload certificates from the new issuer on their own", rot.ID)
			return advance()
		}
		// cert-manager renewed the root on its own since the last
		// publish: the sidecars' anchors must follow.
	}
	if !obj.Spec.Applications.RestartEnabled() {
		r.EventRecorder.Eventf(obj, nil, corev1.EventTypeNormal, "ApplicationsRestarted", "Restart",
			"rotation %s: applications not restarted (spec.applications.restart is false): their sidecars keep their trust anchors until their pods are recreated", rot.ID)
		return advance()
	}
	apps, err := r.applications(ctx, obj)
	if err != nil {
		return fail(err)
	}
	plan := restart.NextWave(apps, obj.Spec.Applications.GetMaxConcurrent())
	obj.Status.Applications = &rotatorv1.ApplicationsStatus{
		Total: int32(plan.Total), Restarted: int32(plan.Restarted), Progress: fmt.Sprintf("%d/%d", plan.Restarted, plan.Total),
	}
	now := r.now()
	switch {
	case plan.Done:
		r.EventRecorder.Eventf(obj, nil, corev1.EventTypeNormal, "ApplicationsRestarted", "Restart",
			"rotation %s: restarted %d Dapr applications in waves of at most %d%s", rot.ID, plan.Total, obj.Spec.Applications.GetMaxConcurrent(), phaseSuffix(rot))
		return advance()
	case len(plan.Restart) > 0:
		for _, ref := range plan.Restart {
			if err := r.restartWorkload(ctx, ref, rotation.RestartID(rot)); err != nil {
				return fail(err)
			}
		}
		rot.WaitingFor, rot.WaitingSince = "applications wave", &now
		markProgress(obj, "rotation %s: restarting %d applications (%d/%d done)", rot.ID, len(plan.Restart), plan.Restarted, plan.Total)
		return waitFor(r.poll())
	}
	since := rotation.Wait(rot, "applications wave", now)
	names := make([]string, 0, len(plan.Waiting))
	for i, w := range plan.Waiting {
		if i == 5 {
			names = append(names, fmt.Sprintf("and %d more", len(plan.Waiting)-5))
			break
		}
		names = append(names, fmt.Sprintf("%s (%s)", w.Ref, w.Waiting))
	}
	timeout := obj.Spec.Applications.GetRolloutTimeout()
	if now.Sub(since.Time) > timeout {
		r.markStalled(ctx, obj, rotatorv1.RolloutTimeoutReason,
			"applications did not roll out within %s: %s; no further wave starts until they do", timeout, strings.Join(names, ", "))
		return waitFor(r.poll())
	}
	markProgress(obj, "rotation %s: waiting for %d applications to roll out (%d/%d done): %s",
		rot.ID, len(plan.Waiting), plan.Restarted, plan.Total, strings.Join(names, ", "))
	return waitFor(r.poll())
}

package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/restart"
	"github.com/mtls-rotator/mtls-rotator/internal/rollout"
)

// Where Argo Rollouts is installed, a Rollout whose pod template is Dapr
// enabled is an application too. It is restarted through its
// spec.restartAt, which its controller honours by evicting every pod created
// before that time, at the pace its strategy allows, without a new revision:
// a template change would start a full release, analysis steps and all. The
// rotation id goes into a metadata annotation, so that a replayed restart is
// recognised and not repeated.

// +kubebuilder:rbac:groups=argoproj.io,resources=rollouts,verbs=get;list;watch;patch

// RolloutGVK is the kind of an Argo Rollout.
var RolloutGVK = schema.GroupVersionKind{Group: "argoproj.io", Version: "v1alpha1", Kind: "Rollout"}

// rolloutKind is an Argo Rollout's kind in a restart.Ref.
const rolloutKind = "Rollout"

func newRollout() *unstructured.Unstructured {
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(RolloutGVK)
	return u
}

// RolloutsInstalled reports whether the cluster serves Argo Rollouts. It is
// asked once, at start: a CRD installed later takes a restart of the operator.
func RolloutsInstalled(cfg *rest.Config) (bool, error) { return Served(cfg, RolloutGVK) }

// Served reports whether the API server serves a kind.
func Served(cfg *rest.Config, gvk schema.GroupVersionKind) (bool, error) {
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return false, err
	}
	resources, err := dc.ServerResourcesForGroupVersion(gvk.GroupVersion().String())
	if apierrors.IsNotFound(err) {
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("discovering %s: %w", gvk.GroupVersion(), err)
	}
	for _, r := range resources.APIResources {
		if r.Kind == gvk.Kind {
			return true, nil
		}
	}
	return false, nil
}

// TrimRollout keeps of an Argo Rollout only what a rotation reads: identity,
// labels, the restart annotation, replicas, spec.restartAt, the pod-template
// annotations it checks, and the restart's progress.
func TrimRollout(obj any) (any, error) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return obj, nil
	}
	t := newRollout()
	t.SetName(u.GetName())
	t.SetNamespace(u.GetNamespace())
	t.SetUID(u.GetUID())
	t.SetResourceVersion(u.GetResourceVersion())
	t.SetGeneration(u.GetGeneration())
	t.SetLabels(u.GetLabels())
	t.SetCreationTimestamp(u.GetCreationTimestamp())
	t.SetDeletionTimestamp(u.GetDeletionTimestamp())
	if id, ok := u.GetAnnotations()[restart.Annotation]; ok {
		t.SetAnnotations(map[string]string{restart.Annotation: id})
	}
	for _, path := range [][]string{{"spec", "replicas"}, {"spec", "restartAt"}, {"status", "restartedAt"}, {"status", "availableReplicas"}} {
		if v, found, _ := unstructured.NestedFieldNoCopy(u.Object, path...); found {
			_ = unstructured.SetNestedField(t.Object, v, path...)
		}
	}
	tmpl := rolloutTemplateAnnotations(u)
	for _, k := range keptTemplateAnnotations {
		if v, ok := tmpl[k]; ok {
			_ = unstructured.SetNestedField(t.Object, v, "spec", "template", "metadata", "annotations", k)
		}
	}
	return t, nil
}

// rolloutTemplateAnnotations are the pod-template annotations of a Rollout.
func rolloutTemplateAnnotations(u *unstructured.Unstructured) map[string]string {
	a, _, _ := unstructured.NestedStringMap(u.Object, "spec", "template", "metadata", "annotations")
	return a
}

// listRollouts lists the Argo Rollouts selector selects, when installed.
func (p *pass) listRollouts(ctx context.Context, selector labels.Selector) ([]unstructured.Unstructured, error) {
	if !p.Rollouts {
		return nil, nil
	}
	list := &unstructured.UnstructuredList{}
	list.SetGroupVersionKind(RolloutGVK.GroupVersion().WithKind(RolloutGVK.Kind + "List"))
	if err := p.List(ctx, list, client.MatchingLabelsSelector{Selector: selector}, client.UnsafeDisableDeepCopy); err != nil {
		return nil, fmt.Errorf("listing Argo Rollouts: %w", err)
	}
	return list.Items, nil
}

// observeRollout is observe for an Argo Rollout: restarted when it carries
// the rotation id, rolled out once its controller restarted every pod.
func observeRollout(u *unstructured.Unstructured, rotationID string) restart.Observed {
	st := rollout.ArgoRollout(u)
	obs := restart.Observed{
		Ref:    restart.Ref{Kind: rolloutKind, Namespace: u.GetNamespace(), Name: u.GetName()},
		Exists: true, Restarted: restart.RestartedFor(u.GetAnnotations(), rotationID),
		RolledOut: st.Done, Waiting: st.Reason, Pods: 1,
	}
	if replicas, found, _ := unstructured.NestedInt64(u.Object, "spec", "replicas"); found {
		obs.Pods = int32(replicas)
	}
	if obs.Restarted {
		restartAt, _, _ := unstructured.NestedString(u.Object, "spec", "restartAt")
		obs.RestartedAt, _ = time.Parse(time.RFC3339, restartAt)
	}
	return obs
}

// rolloutRestartPatch restarts an Argo Rollout for a rotation at now.
func rolloutRestartPatch(rotationID string, now time.Time) []byte {
	p, _ := json.Marshal(map[string]any{
		"metadata": map[string]any{"annotations": map[string]string{restart.Annotation: rotationID}},
		"spec":     map[string]any{"restartAt": now.UTC().Format(time.RFC3339)},
	})
	return p
}

// restartRollout asks Argo Rollouts to restart every pod of a Rollout.
func (p *pass) restartRollout(ctx context.Context, ref restart.Ref, rotationID string) error {
	u := newRollout()
	u.SetNamespace(ref.Namespace)
	u.SetName(ref.Name)
	now := p.now().Time
	patch := client.RawPatch(types.MergePatchType, rolloutRestartPatch(rotationID, now))
	if err := p.Patch(ctx, u, patch, client.FieldOwner(ControllerName)); err != nil {
		return fmt.Errorf("restarting %s: %w", ref, err)
	}
	p.restarts.record(keyOf(p.obj), rotationID, ref, now)
	p.log.Info("workload restarted", "kind", ref.Kind, "namespace", ref.Namespace, "name", ref.Name, "rotation", rotationID)
	return nil
}

// daprEnabled reports whether pod-template annotations enable Dapr.
func daprEnabled(tmpl map[string]string) bool {
	return tmpl[rotatorv1.DaprEnabledAnnotation] == rotatorv1.DaprEnabledAnnotationValue
}

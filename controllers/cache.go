package controllers

import (
	"context"
	"fmt"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/convergence"
	"github.com/mtls-rotator/mtls-rotator/internal/restart"
)

// CacheOptions scope the manager's cache: MTLSRootRotations, Secrets,
// ConfigMaps and cert-manager objects only in the managed namespaces (the Dapr
// control-plane namespaces); workloads in every namespace, trimmed to what a
// rotation reads so that many thousands of them cost little memory.
//
// With rollouts (Argo Rollouts installed), Rollouts are cached too, trimmed,
// as unstructured objects: the client must then cache those (ClientOptions).
func CacheOptions(namespaces []string, rollouts bool) (cache.Options, error) {
	if len(namespaces) == 0 {
		return cache.Options{}, fmt.Errorf("at least one managed namespace is required")
	}
	scoped, managed := map[string]cache.Config{}, map[string]bool{}
	for _, ns := range namespaces {
		scoped[ns], managed[ns] = cache.Config{}, true
	}
	trim := trimWorkloads(managed)
	byObject := map[client.Object]cache.ByObject{
		&rotatorv1.MTLSRootRotation{}: {Namespaces: scoped},
		// Only the Secrets it manages, each labeled with its object: Sentry's
		// (labeled as the operator publishes to it), the backup, and the
		// root and issuer cert-manager writes. Not a Helm release, a token
		// or anything else the Dapr namespace holds.
		&corev1.Secret{}:      {Namespaces: scoped, Label: managedSecrets},
		&corev1.ConfigMap{}:   {Namespaces: scoped},
		&cmapi.Certificate{}:  {Namespaces: scoped},
		&cmapi.Issuer{}:       {Namespaces: scoped},
		&appsv1.Deployment{}:  {Transform: trim},
		&appsv1.StatefulSet{}: {Transform: trim},
		&appsv1.DaemonSet{}:   {Transform: trim},
		&corev1.Namespace{}:   {Transform: trimNamespace},
		// Only pods Dapr's injector patched, each reduced to the roots it holds.
		&corev1.Pod{}: {Label: labels.SelectorFromSet(labels.Set{convergence.InjectedLabel: "true"}), Transform: TrimPod},
	}
	if rollouts {
		byObject[newRollout()] = cache.ByObject{Transform: TrimRollout}
	}
	return cache.Options{ByObject: byObject, DefaultTransform: cache.TransformStripManagedFields()}, nil
}

// managedSecrets selects the Secrets labeled with the object they belong to.
var managedSecrets = func() labels.Selector {
	req, err := labels.NewRequirement(OwnerLabel, selection.Exists, nil)
	if err != nil {
		panic(err) // a constant key: cannot fail
	}
	return labels.NewSelector().Add(*req)
}()

// ClientOptions are the manager client's: unstructured objects (Argo
// Rollouts) are read from the cache like the typed ones.
func ClientOptions() client.Options {
	return client.Options{Cache: &client.CacheOptions{Unstructured: true}}
}

// keptTemplateAnnotations are the pod-template annotations a rotation reads.
var keptTemplateAnnotations = []string{rotatorv1.DaprEnabledAnnotation, restart.Annotation, restart.AtAnnotation}

func trimMeta(m metav1.ObjectMeta) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Name: m.Name, Namespace: m.Namespace, UID: m.UID, ResourceVersion: m.ResourceVersion,
		Generation: m.Generation, Labels: m.Labels, CreationTimestamp: m.CreationTimestamp, DeletionTimestamp: m.DeletionTimestamp,
	}
}

func trimTemplate(t *metav1.ObjectMeta) metav1.ObjectMeta {
	var kept map[string]string
	for _, k := range keptTemplateAnnotations {
		if v, ok := t.Annotations[k]; ok {
			if kept == nil {
				kept = map[string]string{}
			}
			kept[k] = v
		}
	}
	return metav1.ObjectMeta{Annotations: kept}
}

// TrimWorkload keeps of a Deployment, StatefulSet or DaemonSet only what a
// rotation reads: identity, labels, generation, replicas, the pod-template
// annotations it checks, and status.
func TrimWorkload(obj any) (any, error) {
	switch w := obj.(type) {
	case *appsv1.Deployment:
		t := &appsv1.Deployment{TypeMeta: w.TypeMeta, ObjectMeta: trimMeta(w.ObjectMeta), Status: w.Status}
		t.Spec.Replicas = w.Spec.Replicas
		t.Spec.Template.ObjectMeta = trimTemplate(&w.Spec.Template.ObjectMeta)
		return t, nil
	case *appsv1.StatefulSet:
		t := &appsv1.StatefulSet{TypeMeta: w.TypeMeta, ObjectMeta: trimMeta(w.ObjectMeta), Status: w.Status}
		t.Spec.Replicas = w.Spec.Replicas
		t.Spec.Template.ObjectMeta = trimTemplate(&w.Spec.Template.ObjectMeta)
		return t, nil
	case *appsv1.DaemonSet:
		t := &appsv1.DaemonSet{TypeMeta: w.TypeMeta, ObjectMeta: trimMeta(w.ObjectMeta), Status: w.Status}
		t.Spec.Template.ObjectMeta = trimTemplate(&w.Spec.Template.ObjectMeta)
		return t, nil
	}
	return obj, nil
}

// trimWorkloads is the cache's transform of workloads: TrimWorkload, and
// outside the managed namespaces (where the control plane runs) a workload
// whose pod template does not enable Dapr is kept as its identity alone, in
// a PartialObjectMetadata (264 bytes where the smallest Deployment takes
// 1,232). Most of a cluster's workloads are such: no rotation selects,
// restarts or waits on them, so they are not worth 10,000 typed copies.
// A change that enables Dapr arrives as an update, and is trimmed in full.
//
// The cache then holds two types for one kind. Nothing reads a foreign
// workload from it: a pass lists workloads through daprEnabledField, which
// indexes no foreign one; it gets by name only control-plane workloads, in
// the managed namespaces; the event handlers take any client.Object.
func trimWorkloads(managed map[string]bool) func(any) (any, error) {
	return func(obj any) (any, error) {
		w, ok := obj.(client.Object)
		if !ok || managed[w.GetNamespace()] || daprEnabled(templateAnnotations(w)) {
			return TrimWorkload(obj)
		}
		switch obj.(type) {
		case *appsv1.Deployment, *appsv1.StatefulSet, *appsv1.DaemonSet:
			return &metav1.PartialObjectMetadata{ObjectMeta: metav1.ObjectMeta{
				Name: w.GetName(), Namespace: w.GetNamespace(), UID: w.GetUID(), ResourceVersion: w.GetResourceVersion(),
			}}, nil
		}
		return TrimWorkload(obj)
	}
}

// TrimPod keeps of a Dapr sidecar pod only what convergence reads: no spec,
// no PEM (convergence.Trim).
func TrimPod(obj any) (any, error) {
	if pod, ok := obj.(*corev1.Pod); ok {
		return convergence.Trim(pod), nil
	}
	return obj, nil
}

func trimNamespace(obj any) (any, error) {
	if ns, ok := obj.(*corev1.Namespace); ok {
		return &corev1.Namespace{TypeMeta: ns.TypeMeta, ObjectMeta: trimMeta(ns.ObjectMeta)}, nil
	}
	return obj, nil
}

// daprEnabledField indexes the cached workloads by whether their pod
// template enables Dapr: a pass lists the Dapr applications alone, not a
// copy of every workload of the cluster (measured: 12 MB per pass with
// 10,000 foreign Deployments).
const daprEnabledField = "mtls.rotator.dev/dapr-enabled"

func indexDaprEnabled(obj client.Object) []string {
	if daprEnabled(templateAnnotations(obj)) {
		return []string{"true"}
	}
	return nil
}

// indexWorkloads registers daprEnabledField for the workload kinds.
func indexWorkloads(ctx context.Context, indexer client.FieldIndexer) error {
	for _, obj := range []client.Object{&appsv1.Deployment{}, &appsv1.StatefulSet{}, &appsv1.DaemonSet{}} {
		if err := indexer.IndexField(ctx, obj, daprEnabledField, indexDaprEnabled); err != nil {
			return fmt.Errorf("indexing %T by %s: %w", obj, daprEnabledField, err)
		}
	}
	return nil
}

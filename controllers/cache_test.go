package controllers

import (
	"fmt"
	"runtime"
	"testing"

	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/restart"
	"github.com/mtls-rotator/mtls-rotator/internal/rollout"
)

// realisticDeployment is a Deployment as clusters hold them: a Dapr-enabled pod
// template with containers, env, probes, and the usual bulky annotations.
func realisticDeployment(i int) *appsv1.Deployment {
	env := make([]corev1.EnvVar, 20)
	for j := range env {
		env[j] = corev1.EnvVar{Name: fmt.Sprintf("SETTING_%d", j), Value: fmt.Sprintf("value-%d-%d", i, j)}
	}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{
			Name: fmt.Sprintf("app-%05d", i), Namespace: fmt.Sprintf("team-%03d", i%200), Generation: 3, ResourceVersion: "12345",
			Labels:        map[string]string{"app": fmt.Sprintf("app-%05d", i), "team": "payments"},
			Annotations:   map[string]string{"kubectl.kubernetes.io/last-applied-configuration": string(make([]byte, 2048))},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl", FieldsV1: &metav1.FieldsV1{Raw: make([]byte, 1024)}}},
		},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](3),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("app-%05d", i)}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{
					Labels: map[string]string{"app": fmt.Sprintf("app-%05d", i)},
					Annotations: map[string]string{
						rotatorv1.DaprEnabledAnnotation: "true", "dapr.io/app-id": fmt.Sprintf("app-%05d", i),
						"dapr.io/app-port": "8080", "dapr.io/config": "tracing", restart.Annotation: "r-0123456789",
					},
				},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{
					Name: "app", Image: "registry.example/app:1.2.3", Env: env,
					Resources:      corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m")}},
					ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz"}}},
				}}},
			},
		},
		Status: appsv1.DeploymentStatus{ObservedGeneration: 3, Replicas: 3, UpdatedReplicas: 3, AvailableReplicas: 3, ReadyReplicas: 3},
	}
}

func TestTrimWorkloadKeepsWhatARotationReads(t *testing.T) {
	g := NewWithT(t)
	full := realisticDeployment(1)
	out, err := TrimWorkload(full)
	g.Expect(err).NotTo(HaveOccurred())
	trimmed := out.(*appsv1.Deployment)
	g.Expect(observe(trimmed, "r-0123456789")).To(Equal(observe(full, "r-0123456789")))
	g.Expect(rollout.Deployment(trimmed)).To(Equal(rollout.Deployment(full)))
	g.Expect(trimmed.Spec.Template.Annotations).To(Equal(map[string]string{
		rotatorv1.DaprEnabledAnnotation: "true", restart.Annotation: "r-0123456789",
	}))
	g.Expect(trimmed.Labels).To(Equal(full.Labels), "label selectors still match")
	g.Expect(trimmed.Spec.Template.Spec.Containers).To(BeEmpty())
	g.Expect(trimmed.Annotations).To(BeEmpty())
	g.Expect(trimmed.ManagedFields).To(BeEmpty())

	for _, obj := range []any{
		&appsv1.StatefulSet{Spec: appsv1.StatefulSetSpec{Template: full.Spec.Template}},
		&appsv1.DaemonSet{Spec: appsv1.DaemonSetSpec{Template: full.Spec.Template}},
	} {
		out, err := TrimWorkload(obj)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(observe(out.(client.Object), "r-0123456789").Restarted).To(BeTrue())
	}
}

// TestForeignWorkloadsAreCachedAsTheirIdentity: outside the control-plane
// namespaces, a workload that does not enable Dapr keeps only its identity;
// a Dapr application, and any workload of the control plane, are trimmed as
// TrimWorkload does.
func TestForeignWorkloadsAreCachedAsTheirIdentity(t *testing.T) {
	g := NewWithT(t)
	trim := trimWorkloads(map[string]bool{"dapr-system": true})
	foreign := realisticDeployment(1)
	delete(foreign.Spec.Template.Annotations, rotatorv1.DaprEnabledAnnotation)
	controlPlane := foreign.DeepCopy()
	controlPlane.Namespace = "dapr-system"
	foreign.UID = "uid-1"

	out, err := trim(foreign)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(out).To(Equal(&metav1.PartialObjectMetadata{ObjectMeta: metav1.ObjectMeta{
		Name: foreign.Name, Namespace: foreign.Namespace, UID: "uid-1", ResourceVersion: foreign.ResourceVersion}}))
	for _, obj := range []any{
		&appsv1.StatefulSet{ObjectMeta: foreign.ObjectMeta, Spec: appsv1.StatefulSetSpec{Template: foreign.Spec.Template}},
		&appsv1.DaemonSet{ObjectMeta: foreign.ObjectMeta, Spec: appsv1.DaemonSetSpec{Template: foreign.Spec.Template}},
	} {
		out, err := trim(obj)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(out.(client.Object).GetLabels()).To(BeEmpty(), "%T", obj)
	}

	for _, obj := range []*appsv1.Deployment{realisticDeployment(2), controlPlane} {
		want, _ := TrimWorkload(obj.DeepCopy())
		got, err := trim(obj)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(got).To(Equal(want), obj.Namespace+"/"+obj.Name)
	}
}

// TestCacheTransformsAreIdempotent: client-go transforms an object twice
// when the API server streams the initial list (WatchList), so every
// transform of the cache must leave what it made as it is.
func TestCacheTransformsAreIdempotent(t *testing.T) {
	foreign := realisticDeployment(1)
	delete(foreign.Spec.Template.Annotations, rotatorv1.DaprEnabledAnnotation)
	k := newPKI(t)
	trim := trimWorkloads(map[string]bool{"dapr-system": true})
	for name, tt := range map[string]struct {
		transform func(any) (any, error)
		obj       client.Object
	}{
		"Dapr application":   {trim, realisticDeployment(2)},
		"foreign Deployment": {trim, foreign},
		"sidecar pod":        {TrimPod, sidecarPod("team", "a-1", "a", "dapr-system", k.old.CertPEM())},
		"namespace":          {trimNamespace, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "team", Labels: map[string]string{"env": "prod"}}}},
		"Argo Rollout":       {TrimRollout, argoRollout("team", "r", "r-1", true)},
	} {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			once, err := tt.transform(tt.obj)
			g.Expect(err).NotTo(HaveOccurred())
			twice, err := tt.transform(once.(client.Object).DeepCopyObject())
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(twice).To(Equal(once))
		})
	}
}

// BenchmarkWorkloadCacheMemory measures what 10,000 Deployments cost in the
// cache: untrimmed, trimmed as the operator caches Dapr applications, and
// as it caches a foreign (not Dapr-enabled) workload.
func BenchmarkWorkloadCacheMemory(b *testing.B) {
	const n = 10000
	foreign := trimWorkloads(map[string]bool{"dapr-system": true})
	for _, mode := range []string{"full", "trimmed", "foreign"} {
		b.Run(mode, func(b *testing.B) {
			var perObject float64
			for b.Loop() {
				objs := make([]any, n)
				runtime.GC()
				var before, after runtime.MemStats
				runtime.ReadMemStats(&before)
				for i := range objs {
					d := realisticDeployment(i)
					switch mode {
					case "trimmed":
						objs[i], _ = TrimWorkload(d)
					case "foreign":
						delete(d.Spec.Template.Annotations, rotatorv1.DaprEnabledAnnotation)
						objs[i], _ = foreign(d)
					default:
						objs[i] = d
					}
				}
				runtime.GC()
				runtime.ReadMemStats(&after)
				perObject = float64(after.HeapAlloc-before.HeapAlloc) / n
				runtime.KeepAlive(objs)
			}
			b.ReportMetric(perObject, "B/deployment")
			b.ReportMetric(perObject*n/(1<<20), "MiB/10k")
		})
	}
}

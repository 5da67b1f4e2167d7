package cli

import (
	"bytes"
	"testing"

	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/convergence"
	"github.com/mtls-rotator/mtls-rotator/internal/pki"
	"github.com/mtls-rotator/mtls-rotator/internal/pki/pkitest"
)

func controlledBy(apiVersion, kind, name string) []metav1.OwnerReference {
	return []metav1.OwnerReference{{APIVersion: apiVersion, Kind: kind, Name: name, UID: "u", Controller: ptr.To(true)}}
}

func sidecar(namespace, name string, anchors []byte, owners []metav1.OwnerReference) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, OwnerReferences: owners,
		Labels: map[string]string{convergence.InjectedLabel: "true"}}}
	env := []corev1.EnvVar{{Name: convergence.ControlPlaneEnv, Value: "dapr-system"}}
	if anchors != nil {
		env = append(env, corev1.EnvVar{Name: convergence.TrustAnchorsEnv, Value: string(anchors)})
	}
	p.Spec.Containers = []corev1.Container{{Name: convergence.SidecarContainer, Env: env}}
	p.Status.Phase = corev1.PodRunning
	return p
}

func TestInspectCluster(t *testing.T) {
	g := NewWithT(t)
	old, current := pkitest.NewRoot(t, pkitest.Options{}), pkitest.NewRoot(t, pkitest.Options{})
	scheme := runtime.NewScheme()
	g.Expect(clientgoscheme.AddToScheme(scheme)).To(Succeed())
	g.Expect(rotatorv1.AddToScheme(scheme)).To(Succeed())
	objs := []client.Object{
		&appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Name: "web-7d4", Namespace: "team", OwnerReferences: controlledBy("apps/v1", "Deployment", "web")}},
		&appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Name: "orphan-rs", Namespace: "team"}},
		&appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Name: "canary-6c7", Namespace: "team", OwnerReferences: controlledBy("argoproj.io/v1alpha1", "Rollout", "canary")}},
		sidecar("team", "canary-6c7-a", old.CertPEM(), controlledBy("apps/v1", "ReplicaSet", "canary-6c7")),
		sidecar("team", "web-7d4-a", current.CertPEM(), controlledBy("apps/v1", "ReplicaSet", "web-7d4")),
		sidecar("team", "web-7d4-b", old.CertPEM(), controlledBy("apps/v1", "ReplicaSet", "web-7d4")),
		sidecar("team", "orphan-rs-x", old.CertPEM(), controlledBy("apps/v1", "ReplicaSet", "orphan-rs")),
		sidecar("team", "db-0", old.CertPEM(), controlledBy("apps/v1", "StatefulSet", "db")),
		sidecar("jobs", "nightly-x", old.CertPEM(), controlledBy("batch/v1", "Job", "nightly")),
		sidecar("jobs", "bare", nil, nil),
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "dapr-trust-bundle", Namespace: "dapr-system"},
			Data: map[string]string{"ca.crt": string(append(old.CertPEM(), current.CertPEM()...))}},
	}
	c := fake.NewClientBuilder().WithScheme(scheme).WithObjects(objs...).Build()

	in, err := inspectCluster(t.Context(), c, "dapr-system")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(in.Root).To(Equal(pki.Fingerprint(current.Cert)), "without an MTLSRootRotation, the newest anchor Sentry's ConfigMap holds")
	g.Expect(in.RootFrom).To(Equal("ConfigMap dapr-system/dapr-trust-bundle"))
	g.Expect(in.Pods).To(Equal(7))
	g.Expect(in.Converged).To(Equal(1))
	short := convergence.Short(pki.Fingerprint(old.Cert))
	notTrusted := "it does not trust root " + convergence.Short(in.Root)
	g.Expect(in.NotConverged).To(Equal([]unconvergedPod{
		{Namespace: "jobs", Name: "bare", Owner: "none (a bare pod)", Roots: []string{},
			Reason: "its trust anchors cannot be read: its daprd container has no DAPR_TRUST_ANCHORS"},
		{Namespace: "jobs", Name: "nightly-x", Owner: "Job nightly", Roots: []string{short}, Reason: notTrusted},
		{Namespace: "team", Name: "canary-6c7-a", Owner: "Rollout canary", Restartable: true, Roots: []string{short}, Reason: notTrusted},
		{Namespace: "team", Name: "db-0", Owner: "StatefulSet db", Restartable: true, Roots: []string{short}, Reason: notTrusted},
		{Namespace: "team", Name: "orphan-rs-x", Owner: "ReplicaSet orphan-rs", Roots: []string{short}, Reason: notTrusted},
		{Namespace: "team", Name: "web-7d4-b", Owner: "Deployment web", Restartable: true, Roots: []string{short}, Reason: notTrusted},
	}))
	var out bytes.Buffer
	g.Expect(printInspection(&out, in)).To(Succeed())
	g.Expect(out.String()).To(ContainSubstring("control plane dapr-system: 1 of 7 Dapr pods trust root " + convergence.Short(in.Root)))
	g.Expect(out.String()).To(MatchRegexp(`team\s+web-7d4-b\s+Deployment web\s+yes\s+` + short))
	g.Expect(out.String()).NotTo(ContainSubstring("BEGIN"))

	// The root an MTLSRootRotation published comes first.
	g.Expect(c.Create(t.Context(), &rotatorv1.MTLSRootRotation{ObjectMeta: metav1.ObjectMeta{Name: "mesh", Namespace: "dapr-system"}})).To(Succeed())
	obj := &rotatorv1.MTLSRootRotation{}
	g.Expect(c.Get(t.Context(), client.ObjectKey{Namespace: "dapr-system", Name: "mesh"}, obj)).To(Succeed())
	obj.Status.Root = &rotatorv1.CertificateStatus{SHA256Fingerprint: pki.Fingerprint(old.Cert)}
	g.Expect(c.Update(t.Context(), obj)).To(Succeed())
	in, err = inspectCluster(t.Context(), c, "dapr-system")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(in.RootFrom).To(Equal("MTLSRootRotation dapr-system/mesh"))
	g.Expect(in.Converged).To(Equal(5))

	// Nothing to tell the required root from: an error, not a guess.
	_, err = inspectCluster(t.Context(), c, "elsewhere")
	g.Expect(err).To(MatchError(ContainSubstring("no MTLSRootRotation in elsewhere has published a root")))
}

func TestInspectRefusesBadFlags(t *testing.T) {
	g := NewWithT(t)
	for _, args := range [][]string{{"inspect", "-o", "yaml"}, {"inspect", "extra"}, {"inspect", "--nope"}} {
		var stdout, stderr bytes.Buffer
		g.Expect(Run(args, &stdout, &stderr)).To(Equal(2), "%v", args)
		g.Expect(stderr.String()).NotTo(BeEmpty())
	}
}

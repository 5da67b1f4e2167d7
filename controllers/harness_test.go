package controllers

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"github.com/fluxcd/pkg/runtime/events"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/bundle"
	"github.com/mtls-rotator/mtls-rotator/internal/convergence"
	"github.com/mtls-rotator/mtls-rotator/internal/pki"
	"github.com/mtls-rotator/mtls-rotator/internal/pki/pkitest"
	"github.com/mtls-rotator/mtls-rotator/internal/restart"
	"github.com/mtls-rotator/mtls-rotator/internal/rotation"
)

// The step tests run each step, sub-reconciler and strategy against a fake
// client with builders and a fixed clock. They prove the branches of a
// step, including API errors the local cluster cannot produce; the e2e suite
// proves the behaviour against real components.

const ns = "dapr-system"

var t0 = time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)

func testScheme(t testing.TB) *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, cmapi.AddToScheme, rotatorv1.AddToScheme} {
		if err := add(s); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// Builders: a base object changed by setters.

type objSetter func(*rotatorv1.MTLSRootRotation)

// rotationObj is an MTLSRootRotation with a two-workload control plane.
func rotationObj(set ...objSetter) *rotatorv1.MTLSRootRotation {
	obj := &rotatorv1.MTLSRootRotation{
		ObjectMeta: metav1.ObjectMeta{Name: "mesh", Namespace: ns, UID: "uid-1", Generation: 1, CreationTimestamp: metav1.NewTime(t0.Add(-48 * time.Hour))},
		Spec: rotatorv1.MTLSRootRotationSpec{Trigger: "a", ControlPlane: rotatorv1.ControlPlaneSpec{Workloads: []rotatorv1.ControlPlaneWorkload{
			{Kind: rotatorv1.Deployment, Name: "dapr-sentry"}, {Kind: rotatorv1.Deployment, Name: "dapr-sidecar-injector"},
		}}},
	}
	obj.Status.ObservedGeneration = -1
	for _, f := range set {
		f(obj)
	}
	return obj
}

// atStep puts a rotation for the spec's trigger at step (and phase).
func atStep(step rotatorv1.RotationStep, policy rotatorv1.KeyPolicy, phase rotatorv1.RotationPhase) objSetter {
	return func(obj *rotatorv1.MTLSRootRotation) {
		obj.Spec.Root.KeyPolicy = policy
		rot := rotation.Start("r-1", obj.Spec.Trigger, "h", policy, metav1.NewTime(t0.Add(-time.Hour)))
		rot.Cause = rotatorv1.CauseTrigger
		rot.Step, rot.Phase = step, phase
		rot.Steps = []rotatorv1.StepStatus{{Name: step, Phase: phase, StartedAt: metav1.NewTime(t0.Add(-time.Minute))}}
		obj.Status.Rotation = rot
		if policy == rotatorv1.KeyPolicyRotate {
			obj.Status.RootKeyGeneration = 2
		}
	}
}

func withRotation(f func(*rotatorv1.RotationStatus)) objSetter {
	return func(obj *rotatorv1.MTLSRootRotation) { f(obj.Status.Rotation) }
}

func withSpec(f func(*rotatorv1.MTLSRootRotationSpec)) objSetter {
	return func(obj *rotatorv1.MTLSRootRotation) { f(&obj.Spec) }
}

// canaryVerified records that the phase's canary, workload ("Kind
// namespace/name"), showed the published anchors: the window is open.
func canaryVerified(workload string) objSetter {
	return withRotation(func(r *rotatorv1.RotationStatus) {
		r.Canary = &rotatorv1.CanaryStatus{RestartID: rotation.RestartID(r), Workload: workload, Pod: "team/canary-x",
			VerifiedAt: &metav1.Time{Time: t0.Add(-time.Minute)}}
	})
}

// pkiSet is the certificates of a test: the installed root and issuer
// (old), and what cert-manager issued (root renewed with the same key, and
// a root of a new key with its issuer).
type pkiSet struct {
	old, oldIssuer       *pkitest.CA
	renewed, renewIssuer *pkitest.CA
	fresh, freshIssuer   *pkitest.CA
}

func newPKI(t testing.TB) *pkiSet {
	old := pkitest.NewRoot(t, pkitest.Options{NotBefore: t0.Add(-48 * time.Hour), Validity: 365 * 24 * time.Hour})
	renewed := pkitest.RenewRoot(t, old, pkitest.Options{NotBefore: t0.Add(-time.Hour), Validity: 365 * 24 * time.Hour})
	fresh := pkitest.NewRoot(t, pkitest.Options{CommonName: "fresh", NotBefore: t0.Add(-time.Hour), Validity: 365 * 24 * time.Hour})
	issuer := func(parent *pkitest.CA) *pkitest.CA {
		return pkitest.NewIssuer(t, parent, pkitest.Options{NotBefore: t0.Add(-time.Hour), Validity: 90 * 24 * time.Hour})
	}
	return &pkiSet{old: old, oldIssuer: issuer(old), renewed: renewed, renewIssuer: issuer(renewed), fresh: fresh, freshIssuer: issuer(fresh)}
}

func bundleFrom(t testing.TB, issuer *pkitest.CA, anchors ...*pkitest.CA) pki.Bundle {
	var ca []byte
	for _, a := range anchors {
		ca = append(ca, a.CertPEM()...)
	}
	return pki.Bundle{TrustAnchors: ca, IssuerChain: issuer.CertPEM(), IssuerKey: issuer.KeyPEM(t)}
}

// trustBundle is the Secret and ConfigMap Sentry reads, holding b.
func trustBundle(b pki.Bundle) []client.Object {
	data, _ := bundle.SecretData(nil, b, keysOf(rotationObj()))
	cm := map[string]string{}
	if len(b.TrustAnchors) > 0 {
		cm["ca.crt"] = string(b.TrustAnchors)
	}
	return []client.Object{
		// Labeled, as the operator's publish leaves it.
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "dapr-trust-bundle", Namespace: ns, ResourceVersion: "1", Labels: map[string]string{OwnerLabel: "mesh"}}, Data: data},
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "dapr-trust-bundle", Namespace: ns, ResourceVersion: "1"}, Data: cm},
	}
}

// issued is the Secret cert-manager writes for a Certificate.
func issued(t testing.TB, name string, crt, ca *pkitest.CA) *corev1.Secret {
	return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Type: corev1.SecretTypeTLS, Data: map[string][]byte{
		corev1.TLSCertKey: crt.CertPEM(), corev1.TLSPrivateKeyKey: crt.KeyPEM(t), cmmeta.TLSCAKey: ca.CertPEM(),
	}}
}

// certificate is a cert-manager Certificate at revision, Ready unless set otherwise.
func certificate(name string, revision int, set ...func(*cmapi.Certificate)) *cmapi.Certificate {
	c := &cmapi.Certificate{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Generation: 1}}
	if revision > 0 {
		c.Status.Revision = ptr.To(revision)
	}
	c.Status.Conditions = []cmapi.CertificateCondition{{Type: cmapi.CertificateConditionReady, Status: cmmeta.ConditionTrue, ObservedGeneration: 1, Message: "up to date"}}
	c.Status.NotBefore = &metav1.Time{Time: t0.Add(-time.Hour)}
	for _, f := range set {
		f(c)
	}
	return c
}

func failedAt(at time.Time) func(*cmapi.Certificate) {
	return func(c *cmapi.Certificate) {
		c.Status.LastFailureTime = &metav1.Time{Time: at}
		c.Status.Conditions[0].Status, c.Status.Conditions[0].Message = cmmeta.ConditionFalse, "signer refused"
	}
}

// deployment is a Deployment, rolled out, restarted for restartID when it is set.
func deployment(name, restartID string, set ...func(*appsv1.Deployment)) *appsv1.Deployment {
	d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Generation: 1}}
	d.Spec.Replicas = ptr.To[int32](1)
	if restartID != "" {
		d.Spec.Template.Annotations = map[string]string{restart.Annotation: restartID}
	}
	d.Status = appsv1.DeploymentStatus{ObservedGeneration: 1, Replicas: 1, UpdatedReplicas: 1, AvailableReplicas: 1, ReadyReplicas: 1}
	for _, f := range set {
		f(d)
	}
	return d
}

// stuck is a Deployment whose new pods never become available.
func stuck(d *appsv1.Deployment) { d.Status.AvailableReplicas, d.Status.UnavailableReplicas = 0, 1 }

func daprApp(namespace, name, restartID string) *appsv1.Deployment {
	d := deployment(name, restartID)
	d.Namespace = namespace
	if d.Spec.Template.Annotations == nil {
		d.Spec.Template.Annotations = map[string]string{}
	}
	d.Spec.Template.Annotations[rotatorv1.DaprEnabledAnnotation] = rotatorv1.DaprEnabledAnnotationValue
	return d
}

// harness runs steps of one object against a fake client.
type harness struct {
	t      *testing.T
	client client.WithWatch
	rec    *events.FakeRecorder
	r      *MTLSRootRotationReconciler
	writes []string
	events []string
	// fail, when set, fails a write: verb and "Kind/name" of the object.
	fail func(verb, object string) error
}

func newHarness(t *testing.T, objs ...client.Object) *harness {
	h := &harness{t: t, rec: events.NewFakeRecorder(100, false)}
	record := func(verb string, obj any) error {
		name := describeObject(obj)
		if h.fail != nil {
			if err := h.fail(verb, name); err != nil {
				return err
			}
		}
		h.writes = append(h.writes, verb+" "+name)
		return nil
	}
	h.client = fake.NewClientBuilder().WithScheme(testScheme(t)).WithObjects(objs...).
		WithStatusSubresource(&rotatorv1.MTLSRootRotation{}, &cmapi.Certificate{}, &cmapi.Issuer{}).
		WithIndex(&appsv1.Deployment{}, daprEnabledField, indexDaprEnabled).
		WithIndex(&appsv1.StatefulSet{}, daprEnabledField, indexDaprEnabled).
		WithIndex(&appsv1.DaemonSet{}, daprEnabledField, indexDaprEnabled).
		WithInterceptorFuncs(interceptor.Funcs{
			Create: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
				if err := record("create", obj); err != nil {
					return err
				}
				return c.Create(ctx, obj, opts...)
			},
			Update: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.UpdateOption) error {
				if err := record("update", obj); err != nil {
					return err
				}
				return c.Update(ctx, obj, opts...)
			},
			Patch: func(ctx context.Context, c client.WithWatch, obj client.Object, p client.Patch, opts ...client.PatchOption) error {
				if err := record("patch", obj); err != nil {
					return err
				}
				return c.Patch(ctx, obj, p, opts...)
			},
			Apply: func(ctx context.Context, c client.WithWatch, obj runtime.ApplyConfiguration, opts ...client.ApplyOption) error {
				if err := record("apply", obj); err != nil {
					return err
				}
				return c.Apply(ctx, obj, opts...)
			},
			Delete: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.DeleteOption) error {
				if err := record("delete", obj); err != nil {
					return err
				}
				return c.Delete(ctx, obj, opts...)
			},
			SubResourceUpdate: func(ctx context.Context, c client.Client, sub string, obj client.Object, opts ...client.SubResourceUpdateOption) error {
				if err := record(sub+"-update", obj); err != nil {
					return err
				}
				return c.SubResource(sub).Update(ctx, obj, opts...)
			},
			SubResourcePatch: func(ctx context.Context, c client.Client, sub string, obj client.Object, p client.Patch, opts ...client.SubResourcePatchOption) error {
				if err := record(sub+"-patch", obj); err != nil {
					return err
				}
				return c.SubResource(sub).Patch(ctx, obj, p, opts...)
			},
		}).Build()
	h.r = &MTLSRootRotationReconciler{Client: h.client, EventRecorder: h.rec, Now: func() time.Time { return t0 }, PollInterval: 2 * time.Second}
	return h
}

// describeObject names an object as "Kind/name" for the write log.
func describeObject(obj any) string {
	switch o := obj.(type) {
	case *unstructured.Unstructured:
		return o.GetKind() + "/" + o.GetName()
	case client.Object:
		kind := fmt.Sprintf("%T", o)
		kind = kind[strings.LastIndex(kind, ".")+1:]
		return kind + "/" + o.GetName()
	case interface{ GetName() *string }:
		kind := fmt.Sprintf("%T", o)
		kind = strings.TrimSuffix(kind[strings.LastIndex(kind, ".")+1:], "ApplyConfiguration")
		return kind + "/" + ptr.Deref(o.GetName(), "")
	}
	return fmt.Sprintf("%T", obj)
}

// pass starts a pass over the object as the fake cluster holds it, with the
// target read, as the sub-reconcilers before the steps leave it.
func (h *harness) pass(name string) *pass {
	h.t.Helper()
	obj := &rotatorv1.MTLSRootRotation{}
	if err := h.client.Get(h.t.Context(), client.ObjectKey{Namespace: ns, Name: name}, obj); err != nil {
		h.t.Fatal(err)
	}
	p := h.r.newPass(ctrl.LoggerInto(h.t.Context(), ctrl.Log), obj)
	p.ran = true
	if err := p.reconcileTarget(h.t.Context()); err != nil {
		h.t.Fatalf("reading the target: %v", err)
	}
	h.writes = nil
	return p
}

// eventReasons are the reasons of the events recorded so far, in order.
func (h *harness) eventReasons() []string {
	for _, e := range h.rec.GetEvents() { // drains the recorder
		h.events = append(h.events, e.Reason)
	}
	return h.events
}

// get reads an object from the fake cluster.
func (h *harness) get(obj client.Object, name string) client.Object {
	h.t.Helper()
	if err := h.client.Get(h.t.Context(), client.ObjectKey{Namespace: ns, Name: name}, obj); err != nil {
		h.t.Fatal(err)
	}
	return obj
}

// kindOf sorts how a step or sub-reconciler ended, for table tests: "" (go
// on), "wait", "deferred" (a lazy wait), "done", "stall:<Reason>" (with "!" when terminal), or "error".
func kindOf(err error) string {
	var s *stallError
	var w *waitError
	switch {
	case err == nil:
		return ""
	case errors.Is(err, errDone):
		return "done"
	case errors.As(err, &s):
		if s.Terminal {
			return "stall!:" + s.Reason
		}
		return "stall:" + s.Reason
	case errors.As(err, &w) && w.Deferred:
		return "deferred"
	case errors.As(err, &w):
		return "wait"
	}
	return "error"
}

// errAPI is the error a failed write returns.
var errAPI = errors.New("injected API error")

// failing fails every write of verb on object (a prefix of "Kind/name").
func failing(verb, object string) func(string, string) error {
	return func(v, o string) error {
		if v == verb && strings.HasPrefix(o, object) {
			return errAPI
		}
		return nil
	}
}

// sidecarPod is a pod Dapr's injector patched: labelled, with daprd holding
// anchors, for the control plane in controlPlane.
func sidecarPod(namespace, name, owner, controlPlane string, anchors []byte) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, Labels: map[string]string{convergence.InjectedLabel: "true"}}}
	env := []corev1.EnvVar{{Name: convergence.ControlPlaneEnv, Value: controlPlane}}
	if anchors != nil {
		env = append(env, corev1.EnvVar{Name: convergence.TrustAnchorsEnv, Value: string(anchors)})
	}
	p.Spec.Containers = []corev1.Container{{Name: "app"}, {Name: convergence.SidecarContainer, Env: env}}
	if owner != "" {
		p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: owner, UID: "rs", Controller: ptr.To(true)}}
		if i := strings.LastIndex(owner, "-"); i > 0 {
			// A Deployment's ReplicaSet, <deployment>-<hash>, as the label says.
			p.Labels[convergence.PodTemplateHashLabel] = owner[i+1:]
		}
	}
	p.Status.Phase = corev1.PodRunning
	return p
}

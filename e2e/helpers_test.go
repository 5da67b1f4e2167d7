package e2e

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"github.com/fluxcd/cli-utils/pkg/kstatus/status"
	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	"github.com/fluxcd/pkg/runtime/conditions/check"
	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/controllers"
	"github.com/mtls-rotator/mtls-rotator/e2e/cluster"
	"github.com/mtls-rotator/mtls-rotator/e2e/fixture"
	"github.com/mtls-rotator/mtls-rotator/internal/health"
	"github.com/mtls-rotator/mtls-rotator/internal/pki/pkitest"
	"github.com/mtls-rotator/mtls-rotator/internal/rollout"
)

// freshBundle brings the fixture back to a fresh Helm install: no
// MTLSRootRotation, and an empty dapr-trust-bundle Secret and ConfigMap.
func freshBundle(t *testing.T) {
	t.Helper()
	g := NewWithT(t)
	ctx := t.Context()
	g.Expect(k8sClient.DeleteAllOf(ctx, &rotatorv1.MTLSRootRotation{}, client.InNamespace(fixture.ControlPlaneNamespace))).To(Succeed())
	g.Eventually(func(g Gomega) {
		list := &rotatorv1.MTLSRootRotationList{}
		g.Expect(k8sClient.List(ctx, list, client.InNamespace(fixture.ControlPlaneNamespace))).To(Succeed())
		g.Expect(list.Items).To(BeEmpty())
	}).WithTimeout(30 * time.Second).Should(Succeed())
	// The garbage collector removes owned cert-manager objects in its own
	// time; one left behind would re-issue into a Secret deleted below.
	for _, list := range []client.ObjectList{&cmapi.CertificateList{}, &cmapi.IssuerList{}} {
		g.Eventually(func(g Gomega) {
			g.Expect(k8sClient.List(ctx, list, client.InNamespace(fixture.ControlPlaneNamespace), client.HasLabels{controllers.OwnerLabel})).To(Succeed())
			items, err := apimeta.ExtractList(list)
			g.Expect(err).NotTo(HaveOccurred())
			for _, item := range items {
				_ = k8sClient.Delete(ctx, item.(client.Object))
			}
			g.Expect(items).To(BeEmpty())
		}).WithTimeout(30 * time.Second).Should(Succeed())
	}
	// Root and issuer Secrets outlive their MTLSRootRotation by design; a
	// fresh install has none.
	g.Expect(k8sClient.DeleteAllOf(ctx, &corev1.Secret{}, client.InNamespace(fixture.ControlPlaneNamespace),
		client.HasLabels{controllers.OwnerLabel})).To(Succeed())
	setBundle(t, nil, nil)
}

// setBundle writes the Secret and ConfigMap data as given, as Helm or Sentry would.
func setBundle(t *testing.T, secretData map[string][]byte, configMapData map[string]string) {
	t.Helper()
	g := NewWithT(t)
	s, cm := readBundle(t)
	s.Data = secretData
	cm.Data = configMapData
	g.Expect(k8sClient.Update(t.Context(), s)).To(Succeed())
	g.Expect(k8sClient.Update(t.Context(), cm)).To(Succeed())
}

// newRotation creates an MTLSRootRotation in the Dapr namespace and deletes it
// at the end of the test.
func newRotation(t *testing.T, name string, spec rotatorv1.MTLSRootRotationSpec) types.NamespacedName {
	t.Helper()
	obj := &rotatorv1.MTLSRootRotation{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: fixture.ControlPlaneNamespace}, Spec: spec}
	NewWithT(t).Expect(k8sClient.Create(t.Context(), obj)).To(Succeed())
	t.Cleanup(func() { _ = k8sClient.Delete(context.Background(), obj) })
	return client.ObjectKeyFromObject(obj)
}

// waitStalled waits for Stalled with reason, returning the object.
func waitStalled(t *testing.T, key types.NamespacedName, reason string) *rotatorv1.MTLSRootRotation {
	t.Helper()
	var obj *rotatorv1.MTLSRootRotation
	NewWithT(t).Eventually(func(g Gomega) {
		obj = &rotatorv1.MTLSRootRotation{}
		g.Expect(k8sClient.Get(t.Context(), key, obj)).To(Succeed())
		g.Expect(conditions.IsStalled(obj)).To(BeTrue(), "conditions: %+v", obj.Status.Conditions)
		g.Expect(conditions.GetReason(obj, meta.StalledCondition)).To(Equal(reason))
		g.Expect(conditions.IsFalse(obj, meta.ReadyCondition)).To(BeTrue())
		// Conditions and the rest of status are patched one after the other.
		g.Expect(obj.Status.ObservedGeneration).To(Equal(obj.Generation))
	}).WithTimeout(2 * time.Minute).WithPolling(200 * time.Millisecond).Should(Succeed())
	return obj
}

// kstatusOf computes the kstatus of an object, as Flux's health checks and
// Argo CD's generic health do.
func kstatusOf(t *testing.T, obj client.Object) status.Status {
	t.Helper()
	data, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		t.Fatal(err)
	}
	res, err := status.Compute(&unstructured.Unstructured{Object: data})
	if err != nil {
		t.Fatal(err)
	}
	return res.Status
}

// argoHealthOf runs the Argo CD health script of config/argocd on the object
// as the cluster holds it now.
func argoHealthOf(t *testing.T, key types.NamespacedName) health.Result {
	t.Helper()
	script := repoFile(t, "config", "argocd", "health.lua")
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(rotatorv1.GroupVersion.WithKind(rotatorv1.MTLSRootRotationKind))
	if err := k8sClient.Get(t.Context(), key, u); err != nil {
		t.Fatal(err)
	}
	res, err := health.Evaluate(string(script), u.Object)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// checkConditions runs Flux's conditions checker (kstatus rules for the
// Ready, Reconciling and Stalled conditions).
func checkConditions(t *testing.T, obj *rotatorv1.MTLSRootRotation) {
	t.Helper()
	check.NewChecker(k8sClient, &check.Conditions{
		NegativePolarity: []string{meta.StalledCondition, meta.ReconcilingCondition},
	}).WithT(NewWithT(t)).CheckErr(t.Context(), obj)
}

// bundleUnchanged asserts the Secret and ConfigMap still hold what they held.
func bundleUnchanged(t *testing.T, before *corev1.Secret, beforeCM *corev1.ConfigMap) {
	t.Helper()
	g := NewWithT(t)
	s, cm := readBundle(t)
	g.Expect(s.Data).To(Equal(before.Data))
	g.Expect(cm.Data).To(Equal(beforeCM.Data))
	g.Expect(s.ResourceVersion).To(Equal(before.ResourceVersion), "the Secret was not written")
	g.Expect(cm.ResourceVersion).To(Equal(beforeCM.ResourceVersion), "the ConfigMap was not written")
}

// installSentryBundle writes what Sentry writes when it generates its own CA:
// an ECDSA P-256 root and issuer, the root key thrown away. It returns the root.
func installSentryBundle(t *testing.T) *pkitest.CA {
	t.Helper()
	root, _ := sentryBundle(t, pkitest.Options{}, pkitest.Options{})
	return root
}

// installExpiredSentryBundle installs a Sentry-made bundle from two days ago
// whose issuer, valid for a day, has expired.
func installExpiredSentryBundle(t *testing.T) (root, issuer *pkitest.CA) {
	t.Helper()
	madeAt := time.Now().Add(-48 * time.Hour)
	return sentryBundle(t, pkitest.Options{NotBefore: madeAt}, pkitest.Options{NotBefore: madeAt, Validity: 24 * time.Hour})
}

func sentryBundle(t *testing.T, rootOpts, issuerOpts pkitest.Options) (root, issuer *pkitest.CA) {
	t.Helper()
	root = pkitest.NewRoot(t, rootOpts)
	issuer = pkitest.NewIssuer(t, root, issuerOpts)
	setBundle(t,
		map[string][]byte{"ca.crt": root.CertPEM(), "issuer.crt": issuer.CertPEM(), "issuer.key": issuer.KeyPEM(t)},
		map[string]string{"ca.crt": string(root.CertPEM())})
	return root, issuer
}

// holdSentry keeps the pods Sentry's Deployment creates from now on unready,
// until the test ends or recoverWorkload.
func holdSentry(t *testing.T) {
	t.Helper()
	testInjector.HoldUnready(fixture.ControlPlaneNamespace, fixture.Sentry)
	t.Cleanup(func() { testInjector.Release(fixture.ControlPlaneNamespace, fixture.Sentry) })
}

// repoFile reads a file of the repository.
func repoFile(t *testing.T, path ...string) []byte {
	t.Helper()
	root, err := cluster.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(append([]string{root}, path...)...))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// updateRotation writes obj's spec and annotations onto the latest version of
// the object: the operator patches its status all the time, so an update of
// an object read a moment ago may conflict.
func updateRotation(t *testing.T, obj *rotatorv1.MTLSRootRotation) {
	t.Helper()
	spec, annotations := obj.Spec.DeepCopy(), obj.Annotations
	NewWithT(t).Eventually(func() error {
		latest := &rotatorv1.MTLSRootRotation{}
		if err := k8sClient.Get(t.Context(), client.ObjectKeyFromObject(obj), latest); err != nil {
			return err
		}
		latest.Spec = *spec
		if annotations != nil {
			latest.Annotations = annotations
		}
		return k8sClient.Update(t.Context(), latest)
	}).WithTimeout(10 * time.Second).WithPolling(100 * time.Millisecond).Should(Succeed())
}

// readControlPlane returns a fixture control-plane workload's pod-template
// annotations and rollout state.
func readControlPlane(ctx context.Context, w fixture.Workload) (map[string]string, rollout.Status, error) {
	key := types.NamespacedName{Namespace: fixture.ControlPlaneNamespace, Name: w.Name}
	if w.Kind == "StatefulSet" {
		s := &appsv1.StatefulSet{}
		if err := k8sClient.Get(ctx, key, s); err != nil {
			return nil, rollout.Status{}, err
		}
		return s.Spec.Template.Annotations, rollout.StatefulSet(s), nil
	}
	d := &appsv1.Deployment{}
	if err := k8sClient.Get(ctx, key, d); err != nil {
		return nil, rollout.Status{}, err
	}
	return d.Spec.Template.Annotations, rollout.Deployment(d), nil
}

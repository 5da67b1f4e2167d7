package e2e

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
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
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/controllers"
	"github.com/mtls-rotator/mtls-rotator/e2e/cluster"
	"github.com/mtls-rotator/mtls-rotator/e2e/fixture"
	"github.com/mtls-rotator/mtls-rotator/internal/health"
	"github.com/mtls-rotator/mtls-rotator/internal/pki"
	"github.com/mtls-rotator/mtls-rotator/internal/pki/pkitest"
	"github.com/mtls-rotator/mtls-rotator/internal/restart"
	"github.com/mtls-rotator/mtls-rotator/internal/rollout"
)

// This file holds what more than one test file uses: the fixture's trust
// bundle, MTLSRootRotation objects and their events, the fixture's workloads
// and their restarts, other namespaces and issuers, and the availability
// oracle. The operator under test is started by operator_test.go.

// ----- The fixture's trust bundle -----

// bundleKey names the dapr-trust-bundle Secret and ConfigMap of the fixture.
var bundleKey = types.NamespacedName{Namespace: fixture.ControlPlaneNamespace, Name: fixture.TrustBundleName}

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
	// fresh install has none, and Sentry's Secret carries no operator label.
	g.Expect(k8sClient.DeleteAllOf(ctx, &corev1.Secret{}, client.InNamespace(fixture.ControlPlaneNamespace),
		client.HasLabels{controllers.OwnerLabel}, client.MatchingFieldsSelector{Selector: fields.OneTermNotEqualSelector("metadata.name", bundleKey.Name)})).To(Succeed())
	s, _ := readBundle(t)
	g.Expect(k8sClient.Patch(ctx, s, client.RawPatch(types.MergePatchType,
		fmt.Appendf(nil, `{"metadata":{"labels":{%q:null}}}`, controllers.OwnerLabel)))).To(Succeed())
	setBundle(t, nil, nil)
}

// readBundle reads the fixture's dapr-trust-bundle Secret and ConfigMap.
func readBundle(t *testing.T) (*corev1.Secret, *corev1.ConfigMap) {
	t.Helper()
	s, cm := &corev1.Secret{}, &corev1.ConfigMap{}
	g := NewWithT(t)
	g.Expect(k8sClient.Get(t.Context(), bundleKey, s)).To(Succeed())
	g.Expect(k8sClient.Get(t.Context(), bundleKey, cm)).To(Succeed())
	return s, cm
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

// parseOne parses the first certificate of PEM data.
func parseOne(t *testing.T, data []byte) *x509.Certificate {
	t.Helper()
	certs, err := pki.ParseCertificates(data)
	if err != nil {
		t.Fatal(err)
	}
	return certs[0]
}

// ----- MTLSRootRotation objects -----

// newRotation creates an MTLSRootRotation in the Dapr namespace and deletes it
// at the end of the test.
func newRotation(t *testing.T, name string, spec rotatorv1.MTLSRootRotationSpec) types.NamespacedName {
	t.Helper()
	obj := &rotatorv1.MTLSRootRotation{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: fixture.ControlPlaneNamespace}, Spec: spec}
	NewWithT(t).Expect(k8sClient.Create(t.Context(), obj)).To(Succeed())
	t.Cleanup(func() { _ = k8sClient.Delete(context.Background(), obj) })
	return client.ObjectKeyFromObject(obj)
}

// getRotation reads an MTLSRootRotation as the cluster holds it now.
func getRotation(t *testing.T, key types.NamespacedName) *rotatorv1.MTLSRootRotation {
	t.Helper()
	obj := &rotatorv1.MTLSRootRotation{}
	NewWithT(t).Expect(k8sClient.Get(t.Context(), key, obj)).To(Succeed())
	return obj
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

// requestReconcile asks for a reconcile the way 'flux reconcile' does (the
// reconcile.fluxcd.io/requestedAt annotation set to token) and waits until
// the operator reports it handled.
func requestReconcile(t *testing.T, key types.NamespacedName, token string) {
	t.Helper()
	obj := getRotation(t, key)
	obj.Annotations = map[string]string{meta.ReconcileRequestAnnotation: token}
	updateRotation(t, obj)
	NewWithT(t).Eventually(func() string { return getRotation(t, key).Status.LastHandledReconcileAt }).
		WithTimeout(30 * time.Second).Should(Equal(token))
}

// waitRotationCompleted waits until the object is Ready with trigger completed.
func waitRotationCompleted(t *testing.T, key types.NamespacedName, trigger string) *rotatorv1.MTLSRootRotation {
	t.Helper()
	var obj *rotatorv1.MTLSRootRotation
	NewWithT(t).Eventually(func(g Gomega) {
		obj = &rotatorv1.MTLSRootRotation{}
		g.Expect(k8sClient.Get(t.Context(), key, obj)).To(Succeed())
		g.Expect(obj.Status.LastCompletedRotation).NotTo(BeNil(), "status: %+v", obj.Status)
		g.Expect(obj.Status.LastCompletedRotation.Trigger).To(Equal(trigger))
		g.Expect(conditions.IsReady(obj)).To(BeTrue(), "conditions: %+v", obj.Status.Conditions)
		g.Expect(obj.Status.ObservedGeneration).To(Equal(obj.Generation))
	}).WithTimeout(3 * time.Minute).WithPolling(250 * time.Millisecond).Should(Succeed())
	return obj
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

// publishedPhases lists, in order, the phases of the rotation in status that
// published a trust bundle.
func publishedPhases(obj *rotatorv1.MTLSRootRotation) []rotatorv1.RotationPhase {
	var phases []rotatorv1.RotationPhase
	for _, s := range obj.Status.Rotation.Steps {
		if s.Name == rotatorv1.StepPublishing {
			phases = append(phases, s.Phase)
		}
	}
	return phases
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

// ----- Events -----

// eventsFor returns the events recorded for an MTLSRootRotation, by reason.
func eventsFor(t *testing.T, key types.NamespacedName) map[string][]corev1.Event {
	t.Helper()
	uid := getRotation(t, key).UID // events of an earlier object of the same name do not count
	events := &corev1.EventList{}
	NewWithT(t).Expect(k8sClient.List(t.Context(), events, client.InNamespace(key.Namespace))).To(Succeed())
	byReason := map[string][]corev1.Event{}
	for _, e := range events.Items {
		if e.InvolvedObject.Kind == rotatorv1.MTLSRootRotationKind && e.InvolvedObject.UID == uid {
			byReason[e.Reason] = append(byReason[e.Reason], e)
		}
	}
	return byReason
}

// eventCount is how many times an event of reason was recorded for an
// MTLSRootRotation: a repeated event is one Event whose Count goes up.
func eventCount(t *testing.T, key types.NamespacedName, reason string) int32 {
	t.Helper()
	var n int32
	for _, e := range eventsFor(t, key)[reason] {
		n += max(e.Count, 1)
	}
	return n
}

// ----- The fixture's workloads and their restarts -----

// sentryWorkload is the fixture's Sentry Deployment.
var sentryWorkload = fixture.Workload{Kind: "Deployment", Name: fixture.Sentry}

// workloadRef names a Deployment or StatefulSet.
type workloadRef struct{ Kind, Namespace, Name string }

func (w workloadRef) String() string { return w.Kind + " " + w.Namespace + "/" + w.Name }

// object returns an empty object of the workload's kind, with its name.
func (w workloadRef) object() client.Object {
	om := metav1.ObjectMeta{Namespace: w.Namespace, Name: w.Name}
	if w.Kind == "StatefulSet" {
		return &appsv1.StatefulSet{ObjectMeta: om}
	}
	return &appsv1.Deployment{ObjectMeta: om}
}

func controlPlaneRef(w fixture.Workload) workloadRef {
	return workloadRef{Kind: w.Kind, Namespace: fixture.ControlPlaneNamespace, Name: w.Name}
}

func appRef(app fixture.App) workloadRef {
	return workloadRef{Kind: "Deployment", Namespace: app.Namespace, Name: app.Name}
}

// daprApps returns the fixture's Dapr-enabled applications.
func daprApps() []fixture.App {
	var apps []fixture.App
	for _, app := range fixtureOpts.AppList() {
		if app.Dapr {
			apps = append(apps, app)
		}
	}
	return apps
}

// restartTargets lists every workload a rotation of the fixture restarts:
// the control plane in order, then every Dapr application.
func restartTargets() []workloadRef {
	var refs []workloadRef
	for _, w := range fixture.ControlPlane {
		refs = append(refs, controlPlaneRef(w))
	}
	for _, app := range daprApps() {
		refs = append(refs, appRef(app))
	}
	return refs
}

// readWorkload returns a workload's pod-template annotations and rollout state.
func readWorkload(ctx context.Context, w workloadRef) (map[string]string, rollout.Status, error) {
	obj := w.object()
	if err := k8sClient.Get(ctx, client.ObjectKeyFromObject(obj), obj); err != nil {
		return nil, rollout.Status{}, err
	}
	switch o := obj.(type) {
	case *appsv1.StatefulSet:
		return o.Spec.Template.Annotations, rollout.StatefulSet(o), nil
	case *appsv1.Deployment:
		return o.Spec.Template.Annotations, rollout.Deployment(o), nil
	}
	return nil, rollout.Status{}, fmt.Errorf("%s: not a Deployment or StatefulSet", w)
}

// readControlPlane returns a fixture control-plane workload's pod-template
// annotations and rollout state.
func readControlPlane(ctx context.Context, w fixture.Workload) (map[string]string, rollout.Status, error) {
	return readWorkload(ctx, controlPlaneRef(w))
}

// revisionTemplates returns the pod-template annotations of every revision
// the workload's controller keeps: the ReplicaSets of a Deployment, the
// ControllerRevisions of a StatefulSet. A restart that was later overwritten
// on the workload still shows here.
func revisionTemplates(ctx context.Context, g Gomega, w workloadRef) []map[string]string {
	var out []map[string]string
	selector := client.MatchingLabels{"app": w.Name}
	if w.Kind == "StatefulSet" {
		revs := &appsv1.ControllerRevisionList{}
		g.Expect(k8sClient.List(ctx, revs, client.InNamespace(w.Namespace), selector)).To(Succeed())
		for _, rev := range revs.Items {
			var data struct {
				Spec struct {
					Template struct {
						Metadata struct {
							Annotations map[string]string `json:"annotations"`
						} `json:"metadata"`
					} `json:"template"`
				} `json:"spec"`
			}
			g.Expect(json.Unmarshal(rev.Data.Raw, &data)).To(Succeed(), "ControllerRevision %s/%s", rev.Namespace, rev.Name)
			out = append(out, data.Spec.Template.Metadata.Annotations)
		}
		return out
	}
	sets := &appsv1.ReplicaSetList{}
	g.Expect(k8sClient.List(ctx, sets, client.InNamespace(w.Namespace), selector)).To(Succeed())
	for _, rs := range sets.Items {
		out = append(out, rs.Spec.Template.Annotations)
	}
	return out
}

// restartedRevisions counts the revisions of a workload restarted for id.
func restartedRevisions(ctx context.Context, g Gomega, w workloadRef, id string) int {
	n := 0
	for _, annotations := range revisionTemplates(ctx, g, w) {
		if restart.RestartedFor(annotations, id) {
			n++
		}
	}
	return n
}

// assertRestartedOnce checks that every control-plane workload and every Dapr
// application has exactly one revision carrying the rotation id, and that no
// other application has one.
func assertRestartedOnce(t *testing.T, id string) {
	t.Helper()
	g := NewWithT(t)
	for _, w := range fixture.ControlPlane {
		n := restartedRevisions(t.Context(), g, controlPlaneRef(w), id)
		g.Expect(n).To(Equal(1), "%s has %d revisions for %s", w.Name, n, id)
	}
	for _, app := range fixtureOpts.AppList() {
		want := 0
		if app.Dapr {
			want = 1
		}
		g.Expect(restartedRevisions(t.Context(), g, appRef(app), id)).To(Equal(want), "%s restarted %d times for %s", app.Name, want, id)
	}
}

// restartedApps names the applications whose pod template carries the
// restart of id.
func restartedApps(t *testing.T, id string) []string {
	t.Helper()
	var names []string
	for _, app := range fixtureOpts.AppList() {
		annotations, _, err := readWorkload(t.Context(), appRef(app))
		NewWithT(t).Expect(err).NotTo(HaveOccurred())
		if restart.RestartedFor(annotations, id) {
			names = append(names, app.Name)
		}
	}
	return names
}

// restartWorkload restarts a workload as the operator does: restart.Patch
// sets the restart annotation of its pod template to id.
func restartWorkload(t *testing.T, w workloadRef, id string) {
	t.Helper()
	NewWithT(t).Expect(k8sClient.Patch(t.Context(), w.object(), client.RawPatch(types.MergePatchType, restart.Patch(id, time.Now())))).To(Succeed())
}

// redeployByOwners redeploys Dapr applications as their owners would, the
// way kubectl rollout restart does, and waits for them to roll out.
func redeployByOwners(t *testing.T, apps ...fixture.App) {
	t.Helper()
	g := NewWithT(t)
	for _, app := range apps {
		d := &appsv1.Deployment{}
		g.Expect(k8sClient.Get(t.Context(), types.NamespacedName{Namespace: app.Namespace, Name: app.Name}, d)).To(Succeed())
		patch := client.MergeFrom(d.DeepCopy())
		if d.Spec.Template.Annotations == nil {
			d.Spec.Template.Annotations = map[string]string{}
		}
		d.Spec.Template.Annotations["kubectl.kubernetes.io/restartedAt"] = time.Now().Format(time.RFC3339Nano)
		g.Expect(k8sClient.Patch(t.Context(), d, patch)).To(Succeed())
	}
	for _, app := range apps {
		waitDeploymentRolledOut(t, app.Namespace, app.Name)
	}
}

// waitDeploymentRolledOut waits until a Deployment's latest spec is fully rolled out.
func waitDeploymentRolledOut(t *testing.T, ns, name string) {
	t.Helper()
	NewWithT(t).Eventually(func(g Gomega) {
		d := &appsv1.Deployment{}
		g.Expect(k8sClient.Get(t.Context(), types.NamespacedName{Namespace: ns, Name: name}, d)).To(Succeed())
		g.Expect(fixture.DeploymentRolledOut(d)).To(BeTrue(), "Deployment %s/%s status %+v", ns, name, d.Status)
	}).WithTimeout(60 * time.Second).WithPolling(100 * time.Millisecond).Should(Succeed())
}

// holdUnready keeps the pods that the workload app's controller creates from
// now on unready, until the test ends or recoverWorkload.
func holdUnready(t *testing.T, namespace, app string) {
	t.Helper()
	testInjector.HoldUnready(namespace, app)
	t.Cleanup(func() { testInjector.Release(namespace, app) })
}

// holdSentry keeps the pods Sentry's Deployment creates from now on unready,
// until the test ends or recoverWorkload.
func holdSentry(t *testing.T) {
	t.Helper()
	holdUnready(t, fixture.ControlPlaneNamespace, fixture.Sentry)
}

// recoverWorkload releases a held workload and deletes its stuck pods, so that
// its controller replaces them with pods that become ready.
func recoverWorkload(t *testing.T, namespace, app string) {
	t.Helper()
	testInjector.Release(namespace, app)
	pods := &corev1.PodList{}
	NewWithT(t).Expect(k8sClient.List(t.Context(), pods, client.InNamespace(namespace), client.MatchingLabels{"app": app})).To(Succeed())
	for _, p := range pods.Items {
		if _, stuck := p.Annotations[cluster.StayUnreadyAnnotation]; stuck {
			NewWithT(t).Expect(k8sClient.Delete(t.Context(), &p)).To(Succeed())
		}
	}
}

// ----- Namespaces, issuers and other control planes -----

// createNamespace creates a namespace with a unique name for one test.
func createNamespace(t *testing.T, prefix string) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-"}}
	NewWithT(t).Expect(k8sClient.Create(t.Context(), ns)).To(Succeed())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := k8sClient.Delete(ctx, ns); err != nil {
			t.Log(fmt.Sprintf("deleting namespace %s: %v", ns.Name, err))
		}
	})
	return ns.Name
}

// createOrReplace creates obj, replacing an earlier test's object of the same
// name, and deletes it at the end of the test.
func createOrReplace(t *testing.T, obj client.Object) {
	t.Helper()
	g := NewWithT(t)
	ctx := t.Context()
	_ = k8sClient.Delete(ctx, obj.DeepCopyObject().(client.Object))
	g.Eventually(func() error {
		err := k8sClient.Create(ctx, obj)
		if apierrors.IsAlreadyExists(err) {
			obj.SetResourceVersion("")
		}
		return err
	}).WithTimeout(30 * time.Second).Should(Succeed())
	t.Cleanup(func() { _ = k8sClient.Delete(context.Background(), obj) })
}

// certManagerNamespace is where the test cert-manager reads ClusterIssuer Secrets.
const certManagerNamespace = "cert-manager"

// caIssuer creates a cert-manager CA issuer (an Issuer in namespace, or a
// ClusterIssuer when namespace is empty) signing with ca, whose Secret holds
// caCertPEM as the certificate and extraCA, when set, as ca.crt.
func caIssuer(t *testing.T, namespace, name string, ca *pkitest.CA, caCertPEM, extraCA []byte) {
	t.Helper()
	secretNS := namespace
	if namespace == "" {
		secretNS = certManagerNamespace
		if err := k8sClient.Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: certManagerNamespace}}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	data := map[string][]byte{corev1.TLSCertKey: caCertPEM, corev1.TLSPrivateKeyKey: ca.KeyPEM(t)}
	if extraCA != nil {
		data["ca.crt"] = extraCA
	}
	createOrReplace(t, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name + "-ca", Namespace: secretNS}, Type: corev1.SecretTypeTLS, Data: data})
	spec := cmapi.IssuerSpec{IssuerConfig: cmapi.IssuerConfig{CA: &cmapi.CAIssuer{SecretName: name + "-ca"}}}
	if namespace == "" {
		createOrReplace(t, &cmapi.ClusterIssuer{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: spec})
	} else {
		createOrReplace(t, &cmapi.Issuer{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace}, Spec: spec})
	}
}

// secondControlPlane makes namespace stand for another cluster's Dapr control
// plane: an empty trust bundle and no workloads.
func secondControlPlane(t *testing.T, namespace string) {
	t.Helper()
	g := NewWithT(t)
	if err := k8sClient.Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	g.Expect(k8sClient.DeleteAllOf(t.Context(), &rotatorv1.MTLSRootRotation{}, client.InNamespace(namespace))).To(Succeed())
	createOrReplace(t, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: fixture.TrustBundleName, Namespace: namespace}})
	createOrReplace(t, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: fixture.TrustBundleName, Namespace: namespace}})
}

// bundleIn reads the published bundle of a namespace and checks it as Sentry would.
func bundleIn(t *testing.T, namespace string) *pki.ParsedBundle {
	t.Helper()
	g := NewWithT(t)
	s, cm := &corev1.Secret{}, &corev1.ConfigMap{}
	key := types.NamespacedName{Namespace: namespace, Name: fixture.TrustBundleName}
	g.Expect(k8sClient.Get(t.Context(), key, s)).To(Succeed())
	g.Expect(k8sClient.Get(t.Context(), key, cm)).To(Succeed())
	g.Expect(cm.Data["ca.crt"]).To(Equal(string(s.Data["ca.crt"])))
	b := pki.Bundle{TrustAnchors: s.Data["ca.crt"], IssuerChain: s.Data["issuer.crt"], IssuerKey: s.Data["issuer.key"]}
	parsed, err := b.Validate(time.Now())
	g.Expect(err).NotTo(HaveOccurred())
	return parsed
}

// ----- Repository files -----

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

// ----- The availability oracle -----

// availabilityOracle checks, at every moment it observes, that every pair of
// running Dapr pods would complete an mTLS handshake, and that every Dapr pod
// accepts every running sentry: each peer's workload certificate (signed by
// the issuer the sentry pod serving it had loaded) must verify, with Go's x509
// verification, under the trust anchors the other peer was injected with.
type availabilityOracle struct {
	t        *testing.T
	mu       sync.Mutex
	moments  int
	mixed    int // moments with pods on more than one issuer
	failures map[string]bool
	peers    map[string]bool                // every Dapr pod checked, as namespace/name
	leaves   map[string][]*x509.Certificate // by pod UID and issuer hash
	cancel   context.CancelFunc
	done     chan struct{}
}

func startOracle(t *testing.T) *availabilityOracle {
	ctx, cancel := context.WithCancel(t.Context())
	o := &availabilityOracle{t: t, failures: map[string]bool{}, peers: map[string]bool{}, leaves: map[string][]*x509.Certificate{}, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(o.done)
		for ctx.Err() == nil {
			if err := o.observe(ctx); err != nil && ctx.Err() == nil {
				o.fail("observing: %v", err)
			}
			time.Sleep(25 * time.Millisecond)
		}
	}()
	return o
}

func (o *availabilityOracle) stop() {
	o.cancel()
	<-o.done
}

func (o *availabilityOracle) fail(format string, args ...any) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.failures[fmt.Sprintf(format, args...)] = true
}

// peer is one party of the mesh at one moment.
type peer struct {
	name    string
	anchors []*x509.Certificate
	chains  [][]*x509.Certificate // one per sentry that may have issued its certificate
	issuers []string
}

// chainFor returns a workload certificate for a pod signed by an issuer,
// minted once and reused, as a sidecar keeps its certificate.
func (o *availabilityOracle) chainFor(uid types.UID, spiffe, issuerHash string) ([]*x509.Certificate, error) {
	key := string(uid) + "/" + issuerHash
	o.mu.Lock()
	chain, ok := o.leaves[key]
	o.mu.Unlock()
	if ok {
		return chain, nil
	}
	m, ok := testInjector.Issuer(issuerHash)
	if !ok {
		return nil, fmt.Errorf("unknown issuer %s", issuerHash)
	}
	issuerChain, err := pki.ParseCertificates(m.Chain)
	if err != nil {
		return nil, fmt.Errorf("issuer %s: %w", issuerHash, err)
	}
	signer, err := pki.ParsePrivateKey(m.Key)
	if err != nil {
		return nil, fmt.Errorf("issuer %s key: %w", issuerHash, err)
	}
	leaf := pkitest.NewWorkload(o.t, &pkitest.CA{Cert: issuerChain[0], Key: signer}, spiffe, 24*time.Hour)
	chain = append([]*x509.Certificate{leaf.Cert}, issuerChain...)
	o.mu.Lock()
	o.leaves[key] = chain
	o.mu.Unlock()
	return chain, nil
}

func running(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning }

func (o *availabilityOracle) observe(ctx context.Context) error {
	pods := &corev1.PodList{}
	if err := k8sClient.List(ctx, pods); err != nil {
		return err
	}
	var sidecars, sentries []peer
	issuersSeen := map[string]bool{}
	for i := range pods.Items {
		p := &pods.Items[i]
		if !running(p) {
			continue
		}
		switch {
		case p.Namespace == fixture.ControlPlaneNamespace && p.Labels["app"] == fixture.Sentry:
			hash := p.Annotations[fixture.IssuerAnnotation]
			m, ok := testInjector.Issuer(hash)
			if !ok || len(m.Anchors) == 0 {
				continue // a sentry started on an empty bundle has nothing to serve
			}
			anchors, err := pki.ParseCertificates(m.Anchors)
			if err != nil {
				return err
			}
			chain, err := o.chainFor(p.UID, "spiffe://cluster.local/ns/dapr-system/dapr-sentry", hash)
			if err != nil {
				return err
			}
			sentries = append(sentries, peer{name: "sentry " + p.Name, anchors: anchors, chains: [][]*x509.Certificate{chain}, issuers: []string{hash}})
		case p.Annotations[fixture.SentryIssuersAnnotation] != "" || p.Annotations[fixture.EnabledAnnotation] == "true":
			anchorsPEM, _ := fixture.TrustAnchors(p)
			name := p.Namespace + "/" + p.Name
			if anchorsPEM == "" {
				o.fail("%s has no trust anchors", name)
				continue
			}
			anchors, err := pki.ParseCertificates([]byte(anchorsPEM))
			if err != nil {
				o.fail("%s has unparsable trust anchors: %v", name, err)
				continue
			}
			pr := peer{name: name, anchors: anchors}
			for _, hash := range strings.Split(p.Annotations[fixture.SentryIssuersAnnotation], ",") {
				if hash == "" {
					continue
				}
				chain, err := o.chainFor(p.UID, "spiffe://cluster.local/ns/"+p.Namespace+"/"+p.Labels["app"], hash)
				if err != nil {
					return err
				}
				pr.chains = append(pr.chains, chain)
				pr.issuers = append(pr.issuers, hash)
				issuersSeen[hash] = true
			}
			if len(pr.chains) == 0 {
				o.fail("%s started when no sentry was ready", name)
				continue
			}
			sidecars = append(sidecars, pr)
		}
	}
	now := time.Now()
	for _, a := range sidecars {
		for _, b := range sidecars {
			if a.name == b.name {
				continue
			}
			for i, chain := range b.chains {
				if err := pki.VerifyChain(chain, a.anchors, now); err != nil {
					o.fail("%s rejects %s (certificate from issuer %s): %v", a.name, b.name, b.issuers[i], err)
				}
			}
		}
		for _, s := range sentries {
			if err := pki.VerifyChain(s.chains[0], a.anchors, now); err != nil {
				o.fail("%s rejects %s: %v", a.name, s.name, err)
			}
		}
	}
	o.mu.Lock()
	for _, p := range sidecars {
		o.peers[p.name] = true
	}
	o.moments++
	if len(issuersSeen) > 1 {
		o.mixed++
	}
	o.mu.Unlock()
	return nil
}

func (o *availabilityOracle) report() (moments, mixed int, failures []string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for f := range o.failures {
		failures = append(failures, f)
	}
	return o.moments, o.mixed, failures
}

// checked reports whether the oracle checked a Dapr pod whose namespace/name
// starts with prefix.
func (o *availabilityOracle) checked(prefix string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	for name := range o.peers {
		if strings.HasPrefix(name, prefix) {
			return true
		}
	}
	return false
}

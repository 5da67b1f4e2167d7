package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	. "github.com/onsi/gomega"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/e2e/cluster"
	"github.com/mtls-rotator/mtls-rotator/e2e/dapr"
	"github.com/mtls-rotator/mtls-rotator/e2e/fixture"
	"github.com/mtls-rotator/mtls-rotator/internal/pki"
)

// daprSidecarImage is the daprd image Dapr's own injector hands out in the
// suite: a pod whose daprd has it was patched by Dapr, not the stand-in.
const daprSidecarImage = "daprio/daprd:e2e"

// realDapr is Dapr's own Sentry and sidecar injector running in the suite's
// cluster (see dapr.ControlPlane), with its state in dir.
type realDapr struct {
	*dapr.ControlPlane
	dir string
}

// Dapr's control plane Configuration in the suite: SVIDs that live 20 s,
// so that every sidecar renews its SVID within any rotation.
var suiteMTLS = dapr.MTLS{WorkloadCertTTL: 20 * time.Second, AllowedClockSkew: 2 * time.Second}

// startRealDapr runs Dapr's Sentry and injector for the rest of the test;
// the fixture's injector steps aside meanwhile.
func startRealDapr(t *testing.T) *realDapr {
	t.Helper()
	ns, dir := fixture.ControlPlaneNamespace, t.TempDir()
	cp, err := dapr.RunControlPlane(t.Context(), dapr.ControlPlaneOptions{Client: k8sClient, Kubeconfig: testCluster.Kubeconfig,
		Namespace: ns, TrustBundle: fixture.TrustBundleName, Sentry: fixture.Sentry, Injector: fixture.SidecarInjector,
		SidecarImage: daprSidecarImage, MTLS: suiteMTLS, Dir: dir})
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	t.Cleanup(func() {
		cp.Stop()
		setSystemConfiguration(context.Background(), t, true) // the fixture's TTLs again
		if t.Failed() {
			t.Log(cp.Log())
		}
	})
	// Their new pods are ready once their processes serve (the supervisors
	// mark them), as a readiness probe on Dapr's healthz makes them.
	for _, app := range []string{fixture.Sentry, fixture.SidecarInjector} {
		holdUnready(t, ns, app)
	}
	testInjector.StepAside(true)
	t.Cleanup(func() { testInjector.StepAside(false) })
	return &realDapr{ControlPlane: cp, dir: dir}
}

// assertInjectorSignedByPublishedIssuer: the serving certificate of the
// injector process serving now, which Dapr's Sentry signed at its start,
// verifies under the issuer the Secret holds: Sentry signs with what was
// published.
func assertInjectorSignedByPublishedIssuer(g Gomega, t *testing.T, real *realDapr) {
	t.Helper()
	conn, err := tls.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", real.Injector.Serving().Port), &tls.Config{
		InsecureSkipVerify: true, //nolint:gosec // the certificate is inspected below, not trusted
		ServerName:         dapr.InjectorName + "." + fixture.ControlPlaneNamespace + ".svc",
	})
	g.Expect(err).NotTo(HaveOccurred())
	defer conn.Close()
	leaf := conn.ConnectionState().PeerCertificates[0]
	s, _ := readBundle(t)
	issuers, err := pki.ParseCertificates(s.Data["issuer.crt"])
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(leaf.CheckSignatureFrom(issuers[0])).To(Succeed(), "the injector's certificate is signed with the published issuer")
}

// issuedUnderRealDapr has an operator issue a first bundle for a new
// MTLSRootRotation called name, then runs Dapr's Sentry and injector on it.
func issuedUnderRealDapr(t *testing.T, name string) (types.NamespacedName, *realDapr) {
	t.Helper()
	freshBundle(t)
	startOperator(t)
	key := newRotation(t, name, rotatorv1.MTLSRootRotationSpec{Trigger: "first", Applications: rotatorv1.ApplicationsSpec{MaxConcurrent: 3}})
	waitRotationCompleted(t, key, "first")
	return key, startRealDapr(t)
}

// injectedByDapr reads the daprd of a pod Dapr's own injector patched: its
// trust anchors, false when Dapr's injector did not patch it.
func injectedByDapr(pod *corev1.Pod) (string, bool) {
	for _, c := range pod.Spec.Containers {
		if c.Name == fixture.SidecarContainer && c.Image == daprSidecarImage {
			anchors, _ := fixture.TrustAnchors(pod)
			return anchors, true
		}
	}
	return "", false
}

// publishedAnchorsNow are the anchors the ConfigMap holds.
func publishedAnchorsNow(t *testing.T) string {
	t.Helper()
	_, anchors := trustBundleNow(t)
	return anchors
}

// TestRotationsUnderDaprsOwnInjector: with Dapr's own Sentry and injector
// in the cluster, and the operator on no allow-list of the injector, the
// canary's pods, created by the ReplicaSet controller, are patched by Dapr's
// injector with the published anchors, and a same-key rotation completes,
// every application's new pods patched by Dapr. With the injector's mount
// not refreshed (kubelet's delay), the next rotation stops at its canary
// (InjectorStale) with nothing else restarted; once the mount catches up
// and the canary's pods are recreated, it completes.
func TestRotationsUnderDaprsOwnInjector(t *testing.T) {
	g, ctx := NewWithT(t), t.Context()
	key, real := issuedUnderRealDapr(t, "real-dapr")
	g.Expect(real.Sentry.Serving().LoadedFromStore()).To(BeTrue(), "Sentry takes the operator's bundle")
	mesh := startMesh(t, real)
	calls := callsNow(t, mesh)
	assertInjectorSignedByPublishedIssuer(g, t, real)

	// A pod of system:masters, created in dry-run mode: what Dapr's injector hands out now.
	probe := func() *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "probe", Namespace: daprApps()[0].Namespace,
			Annotations: map[string]string{fixture.EnabledAnnotation: "true", fixture.AppIDAnnotation: "probe"}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "fixture.invalid/app"}}}}
	}
	p := probe()
	g.Expect(k8sClient.Create(ctx, p, client.DryRunAll)).To(Succeed())
	anchors, patched := injectedByDapr(p)
	g.Expect(patched).To(BeTrue(), "Dapr's injector patches a pod of system:masters")
	g.Expect(anchors).To(Equal(publishedAnchorsNow(t)))

	obj := getRotation(t, key)
	obj.Spec.Trigger = "second"
	updateRotation(t, obj)
	done := waitRotationCompleted(t, key, "second")
	assertRestartedOnce(t, done.Status.LastCompletedRotation.ID)
	assertAppsPatchedByDaprWith(t, publishedAnchorsNow(t))
	g.Expect(done.Status.Rotation.Canary.VerifiedAt).NotTo(BeNil())
	for _, s := range []interface{ Processes() int }{real.Sentry, real.Injector} {
		g.Expect(s.Processes()).To(BeNumerically(">=", 2), "a process restarted with its pod")
	}
	g.Expect(real.Sentry.Err()).NotTo(HaveOccurred())
	g.Expect(real.Injector.Err()).NotTo(HaveOccurred())
	g.Expect(real.Sentry.Serving().LoadedFromStore()).To(BeTrue())
	assertInjectorSignedByPublishedIssuer(g, t, real)
	calls = assertCallsHeldThrough(t, mesh, calls, "same-key rotation")

	// The mount lags: Dapr's injector keeps the anchors it has.
	real.Anchors.Hold(true)
	obj = getRotation(t, key)
	obj.Spec.Trigger = "third"
	updateRotation(t, obj)
	stalled := waitStalled(t, key, rotatorv1.InjectorStaleReason)
	canary := canaryApp(t, stalled.Status.Rotation.Canary)
	g.Expect(conditions.GetMessage(stalled, meta.StalledCondition)).To(ContainSubstring("restarted first, got trust anchors"))
	id := stalled.Status.Rotation.ID
	g.Consistently(func() []string { return restartedApps(t, id) }).
		WithTimeout(3*time.Second).WithPolling(200*time.Millisecond).Should(Equal([]string{canary.Name}), "no other application restarts onto the old anchors")

	real.Anchors.Hold(false)
	g.Eventually(func(g Gomega) {
		p := probe()
		g.Expect(k8sClient.Create(ctx, p, client.DryRunAll)).To(Succeed())
		anchors, _ := injectedByDapr(p)
		g.Expect(anchors).To(Equal(publishedAnchorsNow(t)))
	}).WithTimeout(30*time.Second).WithPolling(500*time.Millisecond).Should(Succeed(), "Dapr's injector reloads the anchors once the mount catches up")
	redeployByOwners(t, canary)
	done = waitRotationCompleted(t, key, "third")
	g.Expect(restartedApps(t, done.Status.LastCompletedRotation.ID)).To(HaveLen(len(daprApps())))
	g.Expect(strings.HasPrefix(done.Status.Rotation.Canary.Pod, canary.Namespace+"/"+canary.Name+"-")).To(BeTrue())
	assertCallsHeldThrough(t, mesh, calls, "same-key rotation held at a stale injector")
}

// TestTakeOverWhatDaprsSentryGenerated: Dapr's own Sentry, started on an
// empty trust bundle as on a fresh install, makes a CA of its own (its root
// key thrown away) and writes it; the applications, recreated, get it from
// Dapr's injector. A Rotate rotation then takes the install over through
// Overlap, Switch and Prune under Dapr's own processes, restarted with their
// pods in every phase: each phase's canary and in the end every
// application's pods patched by Dapr's injector with the published anchors
// alone, and the injector's certificate, from the Sentry serving last,
// signed with the published issuer.
func TestTakeOverWhatDaprsSentryGenerated(t *testing.T) {
	g := NewWithT(t)
	real, generated := onWhatDaprsSentryGenerated(t)
	generatedRoots, err := pki.ParseCertificates([]byte(generated))
	g.Expect(err).NotTo(HaveOccurred())
	mesh := startMesh(t, real)
	calls := callsNow(t, mesh)

	startOperator(t)
	key := newRotation(t, "take-over", rotatorv1.MTLSRootRotationSpec{
		Trigger: "take-over", Root: rotatorv1.RootSpec{KeyPolicy: rotatorv1.KeyPolicyRotate},
		Applications: rotatorv1.ApplicationsSpec{MaxConcurrent: 2},
	})
	done := waitRotationCompleted(t, key, "take-over")
	g.Expect(publishedPhases(done)).To(Equal([]rotatorv1.RotationPhase{rotatorv1.PhaseOverlap, rotatorv1.PhaseSwitch, rotatorv1.PhasePrune}))
	for _, phase := range []string{"overlap", "switch", "prune"} {
		assertRestartedOnce(t, done.Status.LastCompletedRotation.ID+"-"+phase)
	}
	published := publishedAnchorsNow(t)
	roots, err := pki.ParseCertificates([]byte(published))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(roots).To(HaveLen(1), "the root Sentry made is pruned")
	g.Expect(pki.SamePublicKey(roots[0], generatedRoots[0])).To(BeFalse())
	assertAppsPatchedByDaprWith(t, published)
	g.Expect(real.Sentry.Processes()).To(BeNumerically(">=", 4), "Sentry restarted with its pod in every phase")
	g.Expect(real.Sentry.Err()).NotTo(HaveOccurred())
	g.Expect(real.Injector.Err()).NotTo(HaveOccurred())
	g.Expect(real.Sentry.Serving().LoadedFromStore()).To(BeTrue())
	assertInjectorSignedByPublishedIssuer(g, t, real)
	assertCallsHeldThrough(t, mesh, calls, "takeover of Sentry's own CA (Overlap, Switch, Prune)")
}

// TestRollbackRestoresWhatDaprsSentryGenerated: a takeover of the CA Dapr's
// Sentry generated, whose restart of Sentry never serves (its new pod cannot
// start, as on a node that cannot pull the image), rolls back: the bundle
// Sentry made, its JWT key and JWKS included, is restored byte for byte, and
// Dapr's Sentry, started on the rollback's pod, takes it as its own (a byte
// off and it would make a new CA, cutting every sidecar off) and signs the
// sidecars' renewed SVIDs with its issuer. No call between any two sidecars
// fails, before the rollback or after.
func TestRollbackRestoresWhatDaprsSentryGenerated(t *testing.T) {
	g := NewWithT(t)
	real, _ := onWhatDaprsSentryGenerated(t)
	mesh := startMesh(t, real)
	calls := callsNow(t, mesh)
	before, beforeCM := readBundle(t)
	g.Expect(before.Data).To(HaveKey("jwt.key"), "Sentry made a JWT key too")

	original := real.Sentry.Serving()
	real.Sentry.Hold()
	startOperator(t)
	key := newRotation(t, "rollback-under-dapr", rotateWithShortRollouts())
	rolledBack := expectRolledBack(t, key, before, beforeCM)
	g.Expect(rolledBack.Status.Rotation.Phase).To(Equal(rotatorv1.PhaseOverlap))
	g.Expect(real.Sentry.Processes()).To(Equal(1), "no Sentry ran on the Overlap bundle")

	real.Sentry.Release()
	g.Eventually(func() bool { return real.Sentry.Serving() != original }).WithTimeout(60*time.Second).Should(BeTrue(),
		"Sentry serves from the rollback's pod: %v", real.Sentry.Err())
	restarted := real.Sentry.Serving()
	g.Expect(real.Sentry.Processes()).To(Equal(2))
	g.Expect(restarted.LoadedFromStore()).To(BeTrue(), "Dapr's Sentry takes the restored bundle as its CA")
	// Every sidecar renews its SVID again, from the restarted Sentry alone.
	afterRestart := callsNow(t, mesh)
	g.Eventually(func() int { return callsNow(t, mesh).Renewals - afterRestart.Renewals }).
		WithTimeout(2*suiteMTLS.WorkloadCertTTL + 20*time.Second).WithPolling(time.Second).Should(BeNumerically(">=", liveSidecars(afterRestart)))
	assertCallsHeldThrough(t, mesh, calls, "a takeover rolled back at Sentry, then renewals from Sentry restarted on the restored bundle")
	g.Expect(real.Sentry.Serving()).To(BeIdenticalTo(restarted))
	g.Expect(restarted.GeneratedCA()).To(BeFalse(), "no CA of its own")
	s, _ := readBundle(t)
	g.Expect(bytes.Equal(s.Data["ca.crt"], before.Data["ca.crt"])).To(BeTrue(), "Sentry's root is still the published one")
}

// onWhatDaprsSentryGenerated runs Dapr's Sentry and injector on an empty
// trust bundle, as on a fresh install: Sentry makes a CA of its own (its root
// key thrown away), and the applications, recreated, get its anchors from
// Dapr's injector. It returns those anchors.
func onWhatDaprsSentryGenerated(t *testing.T) (*realDapr, string) {
	t.Helper()
	g := NewWithT(t)
	freshBundle(t)
	real := startRealDapr(t)
	g.Expect(real.Sentry.Serving().GeneratedCA()).To(BeTrue(), "Dapr's Sentry makes its CA on an empty bundle")
	generated := publishedAnchorsNow(t)
	g.Expect(generated).NotTo(BeEmpty())
	redeployByOwners(t, daprApps()...)
	assertAppsPatchedByDaprWith(t, generated)
	return real, generated
}

// assertAppsPatchedByDaprWith: every live pod of every Dapr application was
// patched by Dapr's own injector, with anchors.
func assertAppsPatchedByDaprWith(t *testing.T, anchors string) {
	t.Helper()
	g := NewWithT(t)
	for _, app := range daprApps() {
		for _, p := range appPods(t, app) {
			got, patched := injectedByDapr(&p)
			g.Expect(patched).To(BeTrue(), "pod %s/%s was patched by Dapr's injector", p.Namespace, p.Name)
			g.Expect(got).To(Equal(anchors), "pod %s/%s holds the anchors", p.Namespace, p.Name)
		}
	}
}

// TestPodsNoRestartReachesHoldTheGatesUnderDaprsInjector: a bare pod and a
// Job's pod, both patched by Dapr's own injector (the bare pod's creator is
// system:masters, the Job's pod the job controller's), hold a new-key
// rotation at its Switch (Stalled PodsNotConverged, naming them) with the
// Overlap bundle in place; once they are gone it completes.
func TestPodsNoRestartReachesHoldTheGatesUnderDaprsInjector(t *testing.T) {
	g, ctx := NewWithT(t), t.Context()
	key, real := issuedUnderRealDapr(t, "gated-by-dapr")
	mesh := startMesh(t, real)
	calls := callsNow(t, mesh)

	const ns = "apps-a"
	bare := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "bare-under-dapr", Namespace: ns, Labels: map[string]string{"app": "bare-under-dapr"},
		Annotations: map[string]string{fixture.EnabledAnnotation: "true", fixture.AppIDAnnotation: "bare-under-dapr"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "fixture.invalid/app"}}}}
	jobPod := fixture.DaprPodTemplate("job-under-dapr")
	jobPod.Annotations[cluster.KeepRunningAnnotation] = "true"
	jobPod.Spec.RestartPolicy = corev1.RestartPolicyNever
	job := &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Name: "job-under-dapr", Namespace: ns},
		Spec: batchv1.JobSpec{BackoffLimit: ptr.To[int32](20), Template: jobPod}}
	for _, o := range []client.Object{bare, job} {
		g.Expect(k8sClient.Create(ctx, o)).To(Succeed())
		t.Cleanup(func() {
			_ = k8sClient.Delete(context.Background(), o, client.PropagationPolicy(metav1.DeletePropagationForeground))
		})
	}
	g.Eventually(func(g Gomega) {
		for _, app := range []string{"bare-under-dapr", "job-under-dapr"} {
			pods := &corev1.PodList{}
			g.Expect(k8sClient.List(ctx, pods, client.InNamespace(ns), client.MatchingLabels{"app": app})).To(Succeed())
			g.Expect(pods.Items).To(HaveLen(1))
			_, patched := injectedByDapr(&pods.Items[0])
			g.Expect(patched).To(BeTrue(), "%s was patched by Dapr's injector", pods.Items[0].Name)
			g.Expect(running(&pods.Items[0])).To(BeTrue())
		}
	}).WithTimeout(60 * time.Second).WithPolling(250 * time.Millisecond).Should(Succeed())

	obj := getRotation(t, key)
	obj.Spec.Trigger, obj.Spec.Root.KeyPolicy = "new-key", rotatorv1.KeyPolicyRotate
	updateRotation(t, obj)
	stalled := waitStalled(t, key, rotatorv1.PodsNotConvergedReason)
	g.Expect(stalled.Status.Rotation.Phase).To(Equal(rotatorv1.PhaseSwitch))
	msg := conditions.GetMessage(stalled, meta.StalledCondition)
	g.Expect(msg).To(ContainSubstring(ns + "/bare-under-dapr (no owner"))
	g.Expect(msg).To(ContainSubstring(ns + "/job-under-dapr-"))
	overlap, _ := readBundle(t)
	g.Consistently(func(g Gomega) {
		s, _ := readBundle(t)
		g.Expect(s.Data["issuer.crt"]).To(Equal(overlap.Data["issuer.crt"]), "the new issuer is not published")
	}).WithTimeout(3 * time.Second).WithPolling(200 * time.Millisecond).Should(Succeed())

	g.Expect(k8sClient.Delete(ctx, bare)).To(Succeed())
	g.Expect(k8sClient.Delete(ctx, job, client.PropagationPolicy(metav1.DeletePropagationForeground))).To(Succeed())
	done := waitRotationCompleted(t, key, "new-key")
	g.Expect(publishedPhases(done)).To(Equal([]rotatorv1.RotationPhase{rotatorv1.PhaseOverlap, rotatorv1.PhaseSwitch, rotatorv1.PhasePrune}))
	assertAppsPatchedByDaprWith(t, publishedAnchorsNow(t))
	assertCallsHeldThrough(t, mesh, calls, "new-key rotation (Overlap, Switch, Prune) held at its Switch by a bare and a Job pod")
}

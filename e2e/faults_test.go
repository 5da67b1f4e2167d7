package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"github.com/fluxcd/cli-utils/pkg/kstatus/status"
	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/health"
	"github.com/mtls-rotator/mtls-rotator/internal/pki"
	"github.com/mtls-rotator/mtls-rotator/internal/restart"
)

// noRestartFor asserts, over a few seconds, that nothing was restarted for
// the rotation id: no workload a rotation restarts (every control-plane
// workload of the fixture and every Dapr application) carries the restart
// annotation with id, or with one of its phases or its rollback, on its pod
// template or on any revision its controller keeps.
func noRestartFor(t *testing.T, id string) {
	t.Helper()
	if id == "" {
		t.Fatal("noRestartFor needs a rotation id: the annotation of an empty id proves nothing")
	}
	restartedForID := func(annotations map[string]string) bool {
		v := annotations[restart.Annotation]
		return v == id || strings.HasPrefix(v, id+"-")
	}
	NewWithT(t).Consistently(func(g Gomega) {
		for _, w := range restartTargets() {
			annotations, _, err := readWorkload(t.Context(), w)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(restartedForID(annotations)).To(BeFalse(), "%s was restarted for %s: %s=%q", w, id, restart.Annotation, annotations[restart.Annotation])
			for _, rev := range revisionTemplates(t.Context(), g, w) {
				g.Expect(restartedForID(rev)).To(BeFalse(), "a revision of %s was restarted for %s: %s=%q", w, id, restart.Annotation, rev[restart.Annotation])
			}
		}
	}).WithTimeout(3 * time.Second).WithPolling(200 * time.Millisecond).Should(Succeed())
}

func TestSuspendedRotationTouchesNothing(t *testing.T) {
	g := NewWithT(t)
	freshBundle(t)
	startOperator(t)
	before, beforeCM := readBundle(t)
	key := newRotation(t, "suspended", rotatorv1.MTLSRootRotationSpec{Trigger: "a", Suspend: true})

	g.Consistently(func(g Gomega) {
		obj := getRotation(t, key)
		g.Expect(obj.Status.Rotation).To(BeNil())
		crt := &cmapi.Certificate{}
		err := k8sClient.Get(t.Context(), types.NamespacedName{Namespace: key.Namespace, Name: "suspended-root"}, crt)
		g.Expect(apierrors.IsNotFound(err)).To(BeTrue(), "no Certificate is created while suspended")
	}).WithTimeout(3 * time.Second).WithPolling(200 * time.Millisecond).Should(Succeed())
	bundleUnchanged(t, before, beforeCM)
	g.Expect(argoHealthOf(t, key)).To(Equal(health.Result{Status: health.Suspended, Message: "Suspended: spec.suspend is true"}))

	obj := getRotation(t, key)
	obj.Spec.Suspend = false
	updateRotation(t, obj)
	waitRotationCompleted(t, key, "a")
	g.Expect(argoHealthOf(t, key).Status).To(Equal(health.Healthy))
}

func TestConflictingRotationTouchesNothing(t *testing.T) {
	g := NewWithT(t)
	freshBundle(t)
	startOperator(t)
	first := newRotation(t, "owner", rotatorv1.MTLSRootRotationSpec{Trigger: "a"})
	waitRotationCompleted(t, first, "a")
	before, beforeCM := readBundle(t)

	// Created later, aiming at the same Secret: it must stand aside.
	second := newRotation(t, "intruder", rotatorv1.MTLSRootRotationSpec{Trigger: "b"})
	obj := waitStalled(t, second, rotatorv1.ConflictReason)
	g.Expect(conditions.GetMessage(obj, meta.StalledCondition)).To(ContainSubstring("dapr-system/owner already manages"))
	g.Expect(kstatusOf(t, obj)).To(Equal(status.FailedStatus))
	checkConditions(t, obj)
	crt := &cmapi.Certificate{}
	err := k8sClient.Get(t.Context(), types.NamespacedName{Namespace: second.Namespace, Name: "intruder-root"}, crt)
	g.Expect(apierrors.IsNotFound(err)).To(BeTrue(), "the conflicting object creates nothing")
	bundleUnchanged(t, before, beforeCM)

	// When the owner goes, the conflict ends.
	g.Expect(k8sClient.Delete(t.Context(), &rotatorv1.MTLSRootRotation{ObjectMeta: metav1.ObjectMeta{Name: first.Name, Namespace: first.Namespace}})).To(Succeed())
	// Its root key was the owner's; the intruder's own root cannot take over a
	// bundle it did not make without a trust overlap.
	waitStalled(t, second, rotatorv1.RootKeyUnknownReason)
}

func TestMissingTargetStallsUntilItExists(t *testing.T) {
	g := NewWithT(t)
	freshBundle(t)
	startOperator(t)
	// The fixture's injector reads dapr-trust-bundle, not this target: it
	// would hand restarted applications other anchors, which the operator
	// refuses (InjectorStale). This test is about the target alone.
	key := newRotation(t, "elsewhere", rotatorv1.MTLSRootRotationSpec{
		Trigger:      "a",
		Target:       rotatorv1.TargetSpec{SecretName: "sentry-creds", ConfigMapName: "sentry-anchors"},
		Applications: rotatorv1.ApplicationsSpec{Restart: ptr.To(false)},
	})
	obj := waitStalled(t, key, rotatorv1.TargetNotFoundReason)
	g.Expect(conditions.GetMessage(obj, meta.StalledCondition)).To(ContainSubstring("Secret dapr-system/sentry-creds"))

	for _, o := range []client.Object{
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "sentry-creds", Namespace: key.Namespace}},
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "sentry-anchors", Namespace: key.Namespace}},
	} {
		g.Expect(k8sClient.Create(t.Context(), o)).To(Succeed())
		t.Cleanup(func() { _ = k8sClient.Delete(context.Background(), o) })
	}
	waitRotationCompleted(t, key, "a")
	s := &corev1.Secret{}
	g.Expect(k8sClient.Get(t.Context(), types.NamespacedName{Namespace: key.Namespace, Name: "sentry-creds"}, s)).To(Succeed())
	cm := &corev1.ConfigMap{}
	g.Expect(k8sClient.Get(t.Context(), types.NamespacedName{Namespace: key.Namespace, Name: "sentry-anchors"}, cm)).To(Succeed())
	g.Expect(s.Data["ca.crt"]).NotTo(BeEmpty())
	g.Expect(s.Data["ca.crt"]).To(Equal([]byte(cm.Data["ca.crt"])))
}

func TestSentryMadeBundleIsRootKeyUnknown(t *testing.T) {
	g := NewWithT(t)
	freshBundle(t)
	// What Sentry writes when it generates its own CA: an ECDSA P-256 root and
	// issuer; the root key is thrown away.
	installSentryBundle(t)
	before, beforeCM := readBundle(t)

	startOperator(t)
	key := newRotation(t, "takeover", rotatorv1.MTLSRootRotationSpec{Trigger: "a"})
	obj := waitStalled(t, key, rotatorv1.RootKeyUnknownReason)
	g.Expect(conditions.GetMessage(obj, meta.StalledCondition)).To(ContainSubstring("keyPolicy: Rotate"))
	g.Expect(kstatusOf(t, obj)).To(Equal(status.FailedStatus))
	checkConditions(t, obj)
	bundleUnchanged(t, before, beforeCM)
	noRestartFor(t, obj.Status.Rotation.ID)

	// The advice of the message, taken: the unpublished rotation is replaced
	// by a Rotate one, which takes the bundle over.
	obj.Spec.Root.KeyPolicy = rotatorv1.KeyPolicyRotate
	updateRotation(t, obj)
	done := waitRotationCompleted(t, key, "a")
	g.Expect(done.Status.Rotation.KeyPolicy).To(Equal(rotatorv1.KeyPolicyRotate))
	g.Expect(done.Status.Rotation.ID).NotTo(Equal(obj.Status.Rotation.ID))
	g.Expect(eventsFor(t, key)).To(HaveKey("RotationReplaced"))
}

func TestRotateKeepsAppsLeftOutOfRestartsWorking(t *testing.T) {
	g := NewWithT(t)
	freshBundle(t)
	root := installSentryBundle(t)
	startOperator(t)
	noRestarts := false
	key := newRotation(t, "partial", rotatorv1.MTLSRootRotationSpec{
		Trigger: "a", Root: rotatorv1.RootSpec{KeyPolicy: rotatorv1.KeyPolicyRotate},
		Applications: rotatorv1.ApplicationsSpec{Restart: &noRestarts},
	})
	// Overlap is safe; switching the issuer would cut off sidecars that were
	// never restarted onto the overlap anchors: the Switch gate sees them.
	obj := waitStalled(t, key, rotatorv1.PodsNotConvergedReason)
	g.Expect(obj.Status.Rotation.Phase).To(Equal(rotatorv1.PhaseSwitch))
	// Whatever they hold (no anchors, or the installed root only), none trusts the new root.
	g.Expect(conditions.GetMessage(obj, meta.StalledCondition)).To(MatchRegexp(`waits for (\d+) of (\d+) Dapr pods: apps-\S+ \(ReplicaSet `),
		"the pods are named with their owner")
	s, _ := readBundle(t)
	anchors, err := pki.ParseCertificates(s.Data["ca.crt"])
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(anchors).To(HaveLen(2), "the overlap bundle stays published")
	g.Expect(anchors[0].Equal(root.Cert)).To(BeTrue())
}

func TestRootKeySecretSurvivesDeletion(t *testing.T) {
	g := NewWithT(t)
	freshBundle(t)
	startOperator(t)
	key := newRotation(t, "keeper", rotatorv1.MTLSRootRotationSpec{Trigger: "a"})
	done := waitRotationCompleted(t, key, "a")
	rootKey := done.Status.Root.PublicKeySHA256
	g.Expect(k8sClient.Delete(t.Context(), done)).To(Succeed())
	// The Certificates go with their owner; the root key Secret stays.
	g.Eventually(func() bool {
		err := k8sClient.Get(t.Context(), types.NamespacedName{Namespace: key.Namespace, Name: "keeper-root"}, &cmapi.Certificate{})
		return apierrors.IsNotFound(err)
	}).WithTimeout(30*time.Second).Should(BeTrue(), "the garbage collector removes the owned Certificate")
	s := &corev1.Secret{}
	g.Expect(k8sClient.Get(t.Context(), types.NamespacedName{Namespace: key.Namespace, Name: "keeper-root"}, s)).To(Succeed())
	g.Expect(s.Data).To(HaveKey("tls.key"))

	// Re-created (a GitOps re-sync, a restore), it takes the same root key
	// back, so a same-key rotation over the installed bundle is safe.
	key = newRotation(t, "keeper", rotatorv1.MTLSRootRotationSpec{Trigger: "b"})
	again := waitRotationCompleted(t, key, "b")
	g.Expect(again.Status.Root.PublicKeySHA256).To(Equal(rootKey))
	g.Expect(again.Status.Root.SHA256Fingerprint).NotTo(Equal(done.Status.Root.SHA256Fingerprint), "renewed")
}

package e2e

import (
	"fmt"
	"testing"
	"time"

	"github.com/fluxcd/cli-utils/pkg/kstatus/status"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/e2e/fixture"
	"github.com/mtls-rotator/mtls-rotator/internal/pki"
	"github.com/mtls-rotator/mtls-rotator/internal/pki/pkitest"
)

// restartMesh restarts sentry and every Dapr application, as a fresh install
// would start them, and waits for the rollouts.
func restartMesh(t *testing.T, value string) {
	t.Helper()
	restartWorkload(t, controlPlaneRef(sentryWorkload), value)
	waitDeploymentRolledOut(t, fixture.ControlPlaneNamespace, fixture.Sentry)
	for _, app := range daprApps() {
		restartWorkload(t, appRef(app), value)
	}
	for _, app := range daprApps() {
		waitDeploymentRolledOut(t, app.Namespace, app.Name)
	}
	// Terminating pods leave before the oracle starts watching.
	NewWithT(t).Eventually(func(g Gomega) {
		pods := &corev1.PodList{}
		g.Expect(k8sClient.List(t.Context(), pods)).To(Succeed())
		for _, p := range pods.Items {
			g.Expect(p.DeletionTimestamp).To(BeNil(), "pod %s/%s still terminating", p.Namespace, p.Name)
		}
	}).WithTimeout(30 * time.Second).Should(Succeed())
}

// TestRotateTakesOverASentryBundle adopts an install whose bundle Sentry made
// (root key thrown away): a new root key through Overlap, Switch and Prune,
// with zero failed handshakes at every observed moment.
func TestRotateTakesOverASentryBundle(t *testing.T) {
	g := NewWithT(t)
	freshBundle(t)
	sentryRoot := installSentryBundle(t)
	// Sentry's JWT signing key lives in the same Secret and must survive.
	s, _ := readBundle(t)
	s.Data["jwt.key"] = []byte("jwt")
	g.Expect(k8sClient.Update(t.Context(), s)).To(Succeed())
	restartMesh(t, fmt.Sprint(time.Now().UnixNano()))

	o := startOracle(t)
	startOperator(t)
	key := newRotation(t, "adopt", rotatorv1.MTLSRootRotationSpec{
		Trigger: "take-over", Root: rotatorv1.RootSpec{KeyPolicy: rotatorv1.KeyPolicyRotate},
		Applications: rotatorv1.ApplicationsSpec{MaxConcurrent: 2},
	})
	done := waitRotationCompleted(t, key, "take-over")
	time.Sleep(200 * time.Millisecond)
	o.stop()
	moments, mixed, failures := o.report()
	t.Logf("oracle: %d moments observed, %d with pods on different issuers", moments, mixed)
	g.Expect(failures).To(BeEmpty())
	g.Expect(mixed).To(BeNumerically(">", 0))
	g.Expect(kstatusOf(t, done)).To(Equal(status.CurrentStatus))

	// Three phases, each restarting everything once.
	g.Expect(publishedPhases(done)).To(Equal([]rotatorv1.RotationPhase{rotatorv1.PhaseOverlap, rotatorv1.PhaseSwitch, rotatorv1.PhasePrune}))
	for _, phase := range []string{"overlap", "switch", "prune"} {
		assertRestartedOnce(t, done.Status.LastCompletedRotation.ID+"-"+phase)
	}

	secret, cm := readBundle(t)
	g.Expect(secret.Data["ca.crt"]).To(Equal([]byte(cm.Data["ca.crt"])))
	g.Expect(secret.Data).To(HaveKeyWithValue("jwt.key", []byte("jwt")))
	anchors, err := pki.ParseCertificates(secret.Data["ca.crt"])
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(anchors).To(HaveLen(1), "the Sentry root is pruned")
	g.Expect(pki.SamePublicKey(anchors[0], sentryRoot.Cert)).To(BeFalse(), "a new root key")
	g.Expect(done.Status.TrustAnchors).To(Equal(int32(1)))
	g.Expect(done.Status.RootKeyGeneration).To(Equal(int32(2)))

	// From now on, same-key rotations of the adopted install are safe.
	obj := getRotation(t, key)
	obj.Spec.Trigger, obj.Spec.Root.KeyPolicy = "renew", rotatorv1.KeyPolicyReuse
	updateRotation(t, obj)
	renewed := waitRotationCompleted(t, key, "renew")
	g.Expect(renewed.Status.Root.PublicKeySHA256).To(Equal(done.Status.Root.PublicKeySHA256))
}

// TestRotateReplacesAManagedRootKey rotates the key of a root this operator
// made: a new key generation, and the previous key Secret goes at the end.
func TestRotateReplacesAManagedRootKey(t *testing.T) {
	g := NewWithT(t)
	freshBundle(t)
	startOperator(t)
	key := newRotation(t, "rekey", rotatorv1.MTLSRootRotationSpec{Trigger: "one"})
	first := waitRotationCompleted(t, key, "one")
	oldKeySecret := types.NamespacedName{Namespace: key.Namespace, Name: "rekey-root"}
	g.Expect(k8sClient.Get(t.Context(), oldKeySecret, &corev1.Secret{})).To(Succeed())

	obj := getRotation(t, key)
	obj.Spec.Trigger, obj.Spec.Root.KeyPolicy = "two", rotatorv1.KeyPolicyRotate
	updateRotation(t, obj)
	second := waitRotationCompleted(t, key, "two")
	g.Expect(second.Status.Root.PublicKeySHA256).NotTo(Equal(first.Status.Root.PublicKeySHA256))
	g.Expect(second.Status.RootKeyGeneration).To(Equal(int32(2)))
	// The completion is recorded before the clean-up that follows it in the
	// same pass, so the deletion may land a moment after.
	g.Eventually(func() bool { return apierrors.IsNotFound(k8sClient.Get(t.Context(), oldKeySecret, &corev1.Secret{})) }).
		WithTimeout(10*time.Second).Should(BeTrue(), "the replaced root key is deleted once no anchor carries it")
	newKey := &corev1.Secret{}
	g.Expect(k8sClient.Get(t.Context(), types.NamespacedName{Namespace: key.Namespace, Name: "rekey-root-g2"}, newKey)).To(Succeed())
	certs, err := pki.ParseCertificates(newKey.Data["tls.crt"])
	g.Expect(err).NotTo(HaveOccurred())
	s, _ := readBundle(t)
	anchors, err := pki.ParseCertificates(s.Data["ca.crt"])
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(anchors).To(HaveLen(1))
	g.Expect(pki.SamePublicKey(anchors[0], certs[0])).To(BeTrue())

	// An object deleted and created again (a Git revert and re-apply) finds
	// the newest key generation and renews with it, not with an old name.
	g.Expect(k8sClient.Delete(t.Context(), getRotation(t, key))).To(Succeed())
	g.Eventually(func() bool {
		return apierrors.IsNotFound(k8sClient.Get(t.Context(), key, &rotatorv1.MTLSRootRotation{}))
	}).
		WithTimeout(10 * time.Second).Should(BeTrue())
	newRotation(t, "rekey", rotatorv1.MTLSRootRotationSpec{Trigger: "three"})
	third := waitRotationCompleted(t, key, "three")
	g.Expect(third.Status.RootKeyGeneration).To(Equal(int32(2)))
	g.Expect(third.Status.Root.PublicKeySHA256).To(Equal(second.Status.Root.PublicKeySHA256), "the same root key")
	g.Expect(third.Status.Root.SerialNumber).NotTo(Equal(second.Status.Root.SerialNumber), "a renewed root")
}

// TestRotateOverAnExpiredIssuerPublishesDirectly: Sentry's issuer has expired,
// so no workload can renew its certificate and the mesh is already cut off;
// an overlap would only delay the repair, so the new root and issuer are
// published at once and everything restarts.
func TestRotateOverAnExpiredIssuerPublishesDirectly(t *testing.T) {
	freshBundle(t)
	root, _ := installExpiredSentryBundle(t)
	startOperator(t)
	key := newRotation(t, "expired", rotatorv1.MTLSRootRotationSpec{Trigger: "a", Root: rotatorv1.RootSpec{KeyPolicy: rotatorv1.KeyPolicyRotate}})

	assertRepairedAtOnce(t, key, root, "InstalledIssuerExpired")
}

// assertRepairedAtOnce checks that the Rotate rotation of key repaired a
// mesh already cut off in one publish of its end state: a new root key
// alone, every application restarted, and one Warning of reason.
func assertRepairedAtOnce(t *testing.T, key types.NamespacedName, installed *pkitest.CA, reason string) {
	t.Helper()
	g := NewWithT(t)
	done := waitRotationCompleted(t, key, "a")
	g.Expect(publishedPhases(done)).To(Equal([]rotatorv1.RotationPhase{rotatorv1.PhasePrune}), "one publish, of the end state")
	published := sameBundleInSecretAndConfigMap(t)
	g.Expect(published.Anchors).To(HaveLen(1))
	g.Expect(pki.SamePublicKey(published.Anchors[0], installed.Cert)).To(BeFalse(), "a new root key")
	g.Expect(done.Status.Applications.Restarted).To(Equal(done.Status.Applications.Total))
	warnings := eventsFor(t, key)[reason]
	g.Expect(warnings).To(HaveLen(1))
	g.Expect(warnings[0].Type).To(Equal(corev1.EventTypeWarning))
	g.Expect(warnings[0].Message).To(ContainSubstring("the mesh was already cut off; published the new root and issuer directly (Prune phase)"))
	g.Expect(kstatusOf(t, done)).To(Equal(status.CurrentStatus))
}

// TestRotateOverAnExpiredRootPublishesDirectly: a hand-made install whose
// root was made before its issuer, and expired first (with the issuer still
// alive, or expired since), has cut the mesh off just as an expired issuer
// does: it is repaired by one publish of the end state, with a warning that
// says which certificate had expired.
func TestRotateOverAnExpiredRootPublishesDirectly(t *testing.T) {
	madeAt := time.Now().Add(-3 * time.Hour)
	rootOpts := pkitest.Options{NotBefore: madeAt, Validity: time.Hour}
	for _, tt := range []struct {
		name       string
		issuerOpts pkitest.Options
		wantReason string
	}{
		{name: "issuer alive", issuerOpts: pkitest.Options{NotBefore: madeAt.Add(30 * time.Minute)}, wantReason: "InstalledRootExpired"},
		{name: "issuer expired 30 s after the root", issuerOpts: pkitest.Options{NotBefore: madeAt.Add(30 * time.Minute), Validity: 30*time.Minute + 30*time.Second},
			wantReason: "InstalledIssuerExpired"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			freshBundle(t)
			root, _ := sentryBundle(t, rootOpts, tt.issuerOpts)
			startOperator(t)
			key := newRotation(t, "expired-root", rotatorv1.MTLSRootRotationSpec{Trigger: "a", Root: rotatorv1.RootSpec{KeyPolicy: rotatorv1.KeyPolicyRotate}})
			assertRepairedAtOnce(t, key, root, tt.wantReason)
		})
	}
}

// TestRotateWithExplicitEmptySelectors: `selector: {}` and
// `namespaceSelector: {}` select every Dapr application, as leaving them out
// does, so a new-key rotation passes its Switch gate and completes, every
// application restarted once per phase.
func TestRotateWithExplicitEmptySelectors(t *testing.T) {
	g := NewWithT(t)
	freshBundle(t)
	startOperator(t)
	key := newRotation(t, "empty-selectors", rotatorv1.MTLSRootRotationSpec{Trigger: "one"})
	waitRotationCompleted(t, key, "one")
	obj := getRotation(t, key)
	obj.Spec.Trigger, obj.Spec.Root.KeyPolicy = "two", rotatorv1.KeyPolicyRotate
	obj.Spec.Applications.Selector, obj.Spec.Applications.NamespaceSelector = &rotatorv1.LabelSelector{}, &rotatorv1.LabelSelector{}
	updateRotation(t, obj)
	g.Expect(getRotation(t, key).Spec.Applications.Selector).NotTo(BeNil(), "stored as {}, not dropped")
	done := waitRotationCompleted(t, key, "two")
	for _, phase := range []string{"overlap", "switch", "prune"} {
		assertRestartedOnce(t, done.Status.LastCompletedRotation.ID+"-"+phase)
	}
}

package e2e

import (
	"bytes"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/e2e/dapr"
	"github.com/mtls-rotator/mtls-rotator/e2e/fixture"
)

// startDaprSentry runs Dapr's own Sentry against the suite's cluster for
// the rest of the test.
func startDaprSentry(t *testing.T) *dapr.Sentry {
	t.Helper()
	s, err := dapr.StartSentry(testCluster.Kubeconfig, fixture.ControlPlaneNamespace, t.TempDir())
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("Dapr sentry log:\n%s", s.Log())
		}
	})
	return s
}

// trustBundleNow is what the Secret and the ConfigMap Sentry reads hold.
func trustBundleNow(t *testing.T) (map[string][]byte, string) {
	t.Helper()
	s, cm := readBundle(t)
	return s.Data, cm.Data["ca.crt"]
}

// TestDaprSentryTakesThePublishedBundle: Dapr's own Sentry, started on what
// a rotation published, takes it as its CA and serves, and leaves the root,
// issuer and anchors as published, watched over a window (with JWTs on, it
// adds its JWT key and JWKS, which the operator keeps from then on). The negative control: the same Sentry, started where the
// ConfigMap's anchors differ from the Secret's, makes a CA of its own and
// overwrites both, the outage the operator's identical writes prevent.
func TestDaprSentryTakesThePublishedBundle(t *testing.T) {
	g, ctx := NewWithT(t), t.Context()
	freshBundle(t)
	op := startOperator(t)
	key := newRotation(t, "sentry", rotatorv1.MTLSRootRotationSpec{Trigger: "first", Applications: rotatorv1.ApplicationsSpec{MaxConcurrent: 5}})
	waitRotationCompleted(t, key, "first")
	obj := getRotation(t, key)
	obj.Spec.Trigger = "second"
	updateRotation(t, obj)
	waitRotationCompleted(t, key, "second")
	op.stop() // nothing but Sentry writes from here on
	published, anchors := trustBundleNow(t)

	sentry := startDaprSentry(t)
	g.Eventually(sentry.Healthy).WithContext(ctx).WithTimeout(30*time.Second).WithPolling(200*time.Millisecond).Should(Succeed(), "Dapr's Sentry serves")
	g.Expect(sentry.LoadedFromStore()).To(BeTrue(), "Dapr's Sentry takes the published bundle as its CA")
	g.Consistently(func(g Gomega) {
		data, cm := trustBundleNow(t)
		for _, k := range []string{"ca.crt", "issuer.crt", "issuer.key"} {
			g.Expect(bytes.Equal(data[k], published[k])).To(BeTrue(), "%s as published", k)
		}
		g.Expect(cm).To(Equal(anchors))
		g.Expect(sentry.Exited()).To(BeFalse())
	}).WithTimeout(3*time.Second).WithPolling(250*time.Millisecond).Should(Succeed(), "Sentry writes nothing over a published bundle")
	g.Expect(sentry.GeneratedCA()).To(BeFalse())
	sentry.Stop()

	// Negative control: anchors that differ from the Secret's.
	cm := &corev1.ConfigMap{}
	g.Expect(k8sClient.Get(ctx, bundleKey, cm)).To(Succeed())
	cm.Data["ca.crt"] = anchors + "\n"
	g.Expect(k8sClient.Update(ctx, cm)).To(Succeed())
	regenerating := startDaprSentry(t)
	g.Eventually(regenerating.Healthy).WithContext(ctx).WithTimeout(30 * time.Second).WithPolling(200 * time.Millisecond).Should(Succeed())
	g.Expect(regenerating.GeneratedCA()).To(BeTrue(), "Dapr's Sentry makes a CA of its own when the ConfigMap differs")
	g.Eventually(func() []byte { data, _ := trustBundleNow(t); return data["ca.crt"] }).
		WithTimeout(10*time.Second).ShouldNot(Equal(published["ca.crt"]), "and overwrites the published root")
}

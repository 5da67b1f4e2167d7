package e2e

import (
	"context"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/mtls-rotator/mtls-rotator/e2e/fixture"
	"github.com/mtls-rotator/mtls-rotator/internal/pki/pkitest"
)

// TestInjectorStampsTrustAnchors proves that the fixture's injector gives each
// Dapr-enabled pod the ConfigMap's ca.crt at creation, and only at creation:
// pods created before a change keep what they had, as daprd does.
func TestInjectorStampsTrustAnchors(t *testing.T) {
	g := NewWithT(t)
	ctx := t.Context()

	var daprApp, plainApp fixture.App
	if apps := daprApps(); len(apps) > 0 {
		daprApp = apps[0]
	}
	for _, app := range fixtureOpts.AppList() {
		if !app.Dapr && plainApp.Name == "" {
			plainApp = app
		}
	}
	g.Expect(daprApp.Name).NotTo(BeEmpty())
	g.Expect(plainApp.Name).NotTo(BeEmpty())

	// Whatever the pods hold now (the chart's empty bundle, or what an earlier
	// rotation published), they keep until they are recreated.
	held := map[string]string{}
	for _, p := range appPods(t, daprApp) {
		anchors, injected := fixture.TrustAnchors(&p)
		g.Expect(injected).To(BeTrue(), "pod %s has no daprd sidecar", p.Name)
		held[p.Name] = anchors
	}
	for _, p := range appPods(t, plainApp) {
		_, injected := fixture.TrustAnchors(&p)
		g.Expect(injected).To(BeFalse(), "non-Dapr pod %s was injected", p.Name)
	}

	anchorsPEM := string(pkitest.NewRoot(t, pkitest.Options{CommonName: "injector-test"}).CertPEM())
	cm := &corev1.ConfigMap{}
	key := bundleKey
	g.Expect(k8sClient.Get(ctx, key, cm)).To(Succeed())
	original := cm.DeepCopy()
	cm.Data = map[string]string{"ca.crt": anchorsPEM}
	g.Expect(k8sClient.Update(ctx, cm)).To(Succeed())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		latest := &corev1.ConfigMap{}
		if err := k8sClient.Get(ctx, key, latest); err == nil {
			latest.Data = original.Data
			_ = k8sClient.Update(ctx, latest)
		}
	})

	for _, p := range appPods(t, daprApp) {
		anchors, _ := fixture.TrustAnchors(&p)
		g.Expect(anchors).To(Equal(held[p.Name]), "a running pod %s must keep the anchors it started with", p.Name)
		g.Expect(anchors).NotTo(Equal(anchorsPEM))
	}

	restartWorkload(t, appRef(daprApp), time.Now().Format(time.RFC3339Nano))
	waitDeploymentRolledOut(t, daprApp.Namespace, daprApp.Name)
	g.Eventually(func(g Gomega) {
		pods := appPods(t, daprApp)
		g.Expect(pods).To(HaveLen(int(daprApp.Replicas)))
		for _, p := range pods {
			anchors, injected := fixture.TrustAnchors(&p)
			g.Expect(injected).To(BeTrue())
			g.Expect(anchors).To(Equal(anchorsPEM), "pod %s", p.Name)
		}
	}).WithTimeout(30 * time.Second).Should(Succeed())
}

func appPods(t *testing.T, app fixture.App) []corev1.Pod {
	t.Helper()
	pods := &corev1.PodList{}
	NewWithT(t).Expect(k8sClient.List(t.Context(), pods, client.InNamespace(app.Namespace),
		client.MatchingLabels{"app": app.Name})).To(Succeed())
	var live []corev1.Pod
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil {
			live = append(live, p)
		}
	}
	return live
}

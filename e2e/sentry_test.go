package e2e

import (
	"bytes"
	"crypto/x509"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/e2e/dapr"
	"github.com/mtls-rotator/mtls-rotator/e2e/fixture"
	"github.com/mtls-rotator/mtls-rotator/internal/pki"
	"github.com/mtls-rotator/mtls-rotator/internal/pki/pkitest"
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

// TestDaprSentryRefusesNothingTheOperatorWouldPublish holds the operator's
// bundle checks (pki.Bundle.Validate, which every bundle the operator
// composes passes before it is written) against Dapr's own verdict: each
// bundle Dapr's Sentry refuses to start on, the operator refuses too, so
// no rotation can publish a bundle that keeps Sentry down. The control: a
// good bundle both take.
func TestDaprSentryRefusesNothingTheOperatorWouldPublish(t *testing.T) {
	g := NewWithT(t)
	freshBundle(t) // and no operator: the test writes the bundles
	root, other := pkitest.NewRoot(t, pkitest.Options{}), pkitest.NewRoot(t, pkitest.Options{})
	issuer := pkitest.NewIssuer(t, root, pkitest.Options{})
	bundleWith := func(anchors []byte, iss *pkitest.CA, key []byte) pki.Bundle {
		if key == nil {
			key = iss.KeyPEM(t)
		}
		return pki.Bundle{TrustAnchors: anchors, IssuerChain: iss.CertPEM(), IssuerKey: key}
	}
	anHour := time.Hour
	refused := []struct {
		name   string
		bundle pki.Bundle
		sentry string // what Sentry's log says
	}{{
		name:   "an issuer that does not chain to ca.crt",
		bundle: bundleWith(root.CertPEM(), pkitest.NewIssuer(t, other, pkitest.Options{}), nil),
		sentry: "issuer chain does not belong to trust anchors",
	}, {
		name:   "a key that is not the issuer's",
		bundle: bundleWith(root.CertPEM(), issuer, pkitest.NewIssuer(t, root, pkitest.Options{}).KeyPEM(t)),
		sentry: "issuer key does not match issuer certificate",
	}, {
		name:   "an anchor that is not self-signed",
		bundle: bundleWith(append(root.CertPEM(), issuer.CertPEM()...), issuer, nil),
		sentry: "certificate in trust anchor is not self-signed",
	}, {
		name:   "an issuer for client authentication only",
		bundle: bundleWith(root.CertPEM(), pkitest.NewIssuer(t, root, pkitest.Options{ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}), nil),
		sentry: "issuer chain does not belong to trust anchors",
	}, {
		name:   "an issuer that has expired",
		bundle: bundleWith(root.CertPEM(), pkitest.NewIssuer(t, root, pkitest.Options{NotBefore: time.Now().Add(-2 * anHour), Validity: anHour}), nil),
		sentry: "certificate has expired or is not yet valid",
	}, {
		name:   "an issuer not valid yet",
		bundle: bundleWith(root.CertPEM(), pkitest.NewIssuer(t, root, pkitest.Options{NotBefore: time.Now().Add(anHour)}), nil),
		sentry: "certificate has expired or is not yet valid",
	}, {
		name:   "an issuer key that is no key",
		bundle: bundleWith(root.CertPEM(), issuer, []byte("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")),
		sentry: "failed to get CA bundle",
	}}
	for _, c := range refused {
		t.Run(c.name, func(t *testing.T) {
			g := NewWithT(t)
			_, err := c.bundle.Validate(time.Now())
			g.Expect(err).To(HaveOccurred(), "the operator refuses it")
			writeBundle(t, c.bundle)
			sentry := startDaprSentry(t)
			g.Eventually(sentry.Exited).WithTimeout(30*time.Second).WithPolling(100*time.Millisecond).Should(BeTrue(), "Dapr's Sentry refuses it")
			g.Expect(sentry.Log()).To(ContainSubstring(c.sentry))
			g.Expect(sentry.GeneratedCA()).To(BeFalse(), "and makes no CA of its own over it")
			t.Logf("the operator: %v; Dapr's Sentry: %s", err, c.sentry)
		})
	}

	good := bundleWith(root.CertPEM(), issuer, nil)
	_, err := good.Validate(time.Now())
	g.Expect(err).NotTo(HaveOccurred())
	writeBundle(t, good)
	sentry := startDaprSentry(t)
	g.Eventually(sentry.Healthy).WithContext(t.Context()).WithTimeout(30 * time.Second).WithPolling(200 * time.Millisecond).Should(Succeed())
	g.Expect(sentry.LoadedFromStore()).To(BeTrue(), "Dapr's Sentry takes the good bundle")
}

// writeBundle writes b to the Secret and, the anchors identical, the
// ConfigMap, as a publish does.
func writeBundle(t *testing.T, b pki.Bundle) {
	t.Helper()
	setBundle(t, map[string][]byte{"ca.crt": b.TrustAnchors, "issuer.crt": b.IssuerChain, "issuer.key": b.IssuerKey},
		map[string]string{"ca.crt": string(b.TrustAnchors)})
}

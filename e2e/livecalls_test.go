package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/mtls-rotator/mtls-rotator/e2e/dapr"
	"github.com/mtls-rotator/mtls-rotator/e2e/fixture"
	"github.com/mtls-rotator/mtls-rotator/internal/pki/pkitest"
)

// startMesh runs a sidecar on Dapr's own pkg/security for every live pod of
// the Dapr applications (see dapr.Mesh): each with the anchors its pod was
// injected with and an SVID from Dapr's Sentry, verifying the JWTs Sentry
// issues with the published JWKS, and calling every other sidecar over
// mTLS. The applications' new pods become ready only once their sidecar
// holds an SVID. It returns once every application calls every other.
func startMesh(t *testing.T, real *realDapr) *dapr.Mesh {
	t.Helper()
	g := NewWithT(t)
	meshDir := filepath.Join(real.dir, "mesh")
	g.Expect(os.Mkdir(meshDir, 0o755)).To(Succeed())
	var namespaces []string
	for _, app := range daprApps() {
		holdUnready(t, app.Namespace, app.Name)
		if !slices.Contains(namespaces, app.Namespace) {
			namespaces = append(namespaces, app.Namespace)
		}
	}
	mesh, err := dapr.RunMesh(dapr.MeshOptions{Client: k8sClient, Namespaces: namespaces, ControlPlaneNamespace: fixture.ControlPlaneNamespace,
		SentryAddress: real.SentryService, JWKSFile: real.JWKS.File, Dir: meshDir})
	g.Expect(err).NotTo(HaveOccurred())
	t.Cleanup(func() {
		mesh.Stop()
		calls, err := mesh.Calls()
		t.Logf("sidecars on Dapr's pkg/security, in all: %s (err %v)\n%s", calls, err, calls.Table())
		if err := mesh.Err(); err != nil {
			t.Logf("sidecars that did not serve:\n%v", err)
		}
	})
	g.Eventually(func(g Gomega) {
		calls, err := mesh.Calls()
		g.Expect(err).NotTo(HaveOccurred())
		for _, from := range daprApps() {
			for _, to := range daprApps() {
				if from != to {
					pair := calls.Pairs[from.Namespace+"/"+from.Name+" -> "+to.Namespace+"/"+to.Name]
					g.Expect(pair).NotTo(BeNil(), "%s calls %s", from.Name, to.Name)
					g.Expect(pair.Calls).To(BeNumerically(">", 0))
				}
			}
		}
	}).WithTimeout(90*time.Second).WithPolling(500*time.Millisecond).Should(Succeed(), "every application calls every other: %v", mesh.Err())
	return mesh
}

// callsNow reads the mesh's counts.
func callsNow(t *testing.T, mesh *dapr.Mesh) dapr.Calls {
	t.Helper()
	calls, err := mesh.Calls()
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	return calls
}

// assertCallsHeldThrough: since before, during what (a rotation), the
// sidecars called each other and no call failed, at any moment; SVIDs were
// renewed (during it, or just after a rotation quicker than half their
// life); the JWTs Sentry issued verified with the published JWKS; every
// pod's sidecar got its SVID. Once the rotation is done, every live
// sidecar's SVID is signed by the published issuer: the Sentry serving
// after the control plane's restart signs with what was published.
func assertCallsHeldThrough(t *testing.T, mesh *dapr.Mesh, before dapr.Calls, what string) dapr.Calls {
	t.Helper()
	g := NewWithT(t)
	issuer := publishedIssuerKey(t)
	var now dapr.Calls
	g.Eventually(func(g Gomega) {
		now = callsNow(t, mesh)
		for _, s := range now.Sidecars {
			if s.Live {
				g.Expect(s.SVID.Issuer).To(Equal(issuer), "the SVID of %s/%s is signed by the published issuer", s.Namespace, s.Pod)
			}
		}
		// A rotation quicker than half an SVID's life sees its renewals
		// just after it: waited for, from the Sentry serving then.
		g.Expect(now.Renewals-before.Renewals).To(BeNumerically(">", 0), "SVIDs renewed since %s began", what)
	}).WithTimeout(2*suiteMTLS.WorkloadCertTTL + 20*time.Second).WithPolling(time.Second).Should(Succeed())
	g.Expect(mesh.Err()).NotTo(HaveOccurred(), "every pod's sidecar got an SVID")
	during := now.Since(before)
	t.Logf("%s: calls %d, failed %d, unreachable %d, SVIDs renewed %d, JWTs verified %d, failed %d",
		what, during.Calls, during.Failed, during.Unreachable, now.Renewals-before.Renewals, now.JWTsVerified-before.JWTsVerified, now.JWTsFailed-before.JWTsFailed)
	g.Expect(during.Calls).To(BeNumerically(">", 0))
	g.Expect(now.Total.Failed).To(BeZero(), "no call between any two sidecars failed:\n%s", now.Table())
	if now.JWTSupported {
		g.Expect(now.JWTsVerified-before.JWTsVerified).To(BeNumerically(">", 0), "JWTs verified during %s", what)
		g.Expect(now.JWTsFailed).To(BeZero(), "every JWT verified with the published JWKS")
	}
	return now
}

// publishedIssuerKey is the SHA-256 of the published issuer's public key
// (as the sidecars report their SVID's issuer).
func publishedIssuerKey(t *testing.T) string {
	t.Helper()
	s, _ := readBundle(t)
	sum := sha256.Sum256(parseOne(t, s.Data["issuer.crt"]).RawSubjectPublicKeyInfo)
	return hex.EncodeToString(sum[:])
}

// TestManualRotationWithoutOverlapFailsCalls is the negative control of the
// live calls: on an install Dapr's Sentry made, a new root and issuer are
// written by hand over the old, with no trust overlap, Sentry is restarted
// and then one application. The application's new pods trust only the new
// root and the others only the old: calls between them fail, and the mesh
// sees it, with the error Dapr's code returns.
func TestManualRotationWithoutOverlapFailsCalls(t *testing.T) {
	g := NewWithT(t)
	freshBundle(t)
	real := startRealDapr(t)
	redeployByOwners(t, daprApps()...)
	mesh := startMesh(t, real)
	g.Expect(callsNow(t, mesh).Total.Failed).To(BeZero())

	root := pkitest.NewRoot(t, pkitest.Options{})
	issuer := pkitest.NewIssuer(t, root, pkitest.Options{})
	s, cm := readBundle(t)
	s.Data["ca.crt"], s.Data["issuer.crt"], s.Data["issuer.key"] = root.CertPEM(), issuer.CertPEM(), issuer.KeyPEM(t)
	cm.Data["ca.crt"] = string(root.CertPEM())
	g.Expect(k8sClient.Update(t.Context(), s)).To(Succeed())
	g.Expect(k8sClient.Update(t.Context(), cm)).To(Succeed())
	restartWorkload(t, controlPlaneRef(sentryWorkload), "manual")
	g.Eventually(func() int { return real.Sentry.Processes() }).WithTimeout(60 * time.Second).Should(Equal(2))
	// The injector reloads the new root and, once its own SVID is renewed
	// under it, is served again: only then is a restarted pod patched.
	g.Eventually(func(g Gomega) { assertInjectorSignedByPublishedIssuer(g, t, real) }).
		WithTimeout(2 * suiteMTLS.WorkloadCertTTL).WithPolling(time.Second).Should(Succeed())
	restarted := daprApps()[0]
	redeployByOwners(t, restarted)

	g.Eventually(func(g Gomega) {
		calls := callsNow(t, mesh)
		pair := calls.Pairs[restarted.Namespace+"/"+restarted.Name+" -> "+daprApps()[1].Namespace+"/"+daprApps()[1].Name]
		g.Expect(pair).NotTo(BeNil())
		g.Expect(pair.Failed).To(BeNumerically(">", 0), "the restarted application's calls to the others fail")
		g.Expect(pair.LastError).To(Or(ContainSubstring("certificate"), ContainSubstring("x509")))
	}).WithTimeout(60 * time.Second).WithPolling(time.Second).Should(Succeed())
	calls := callsNow(t, mesh)
	t.Logf("a manual rotation without overlap: %s\n%s", calls, calls.Table())
	failing := 0
	for k, p := range calls.Pairs {
		if p.Failed > 0 && strings.Contains(k, restarted.Name) {
			failing++
		}
	}
	g.Expect(failing).To(BeNumerically(">=", 2*(len(daprApps())-1)), "calls fail both ways between the restarted application and each other")
}

// liveSidecars counts the sidecars of pods live and ready in calls.
func liveSidecars(calls dapr.Calls) int {
	n := 0
	for _, s := range calls.Sidecars {
		if s.Live {
			n++
		}
	}
	return n
}

package e2e

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/cli"
)

func mtlsRotator(args ...string) (int, string, string) {
	var stdout, stderr bytes.Buffer
	code := cli.Run(args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// TestCertsRoundTripThroughTheCluster: what certs generate writes, installed
// as Sentry's Secret, comes back byte for byte from certs export; export
// refuses to overwrite and reports what is missing.
func TestCertsRoundTripThroughTheCluster(t *testing.T) {
	g := NewWithT(t)
	const ns = "cli-roundtrip"
	secondControlPlane(t, ns)
	generated := filepath.Join(t.TempDir(), "generated")
	code, _, errOut := mtlsRotator("certs", "generate", "--out", generated)
	g.Expect(code).To(Equal(0), errOut)
	data := map[string][]byte{}
	for _, name := range []string{"ca.crt", "issuer.crt", "issuer.key"} {
		b, err := os.ReadFile(filepath.Join(generated, name))
		g.Expect(err).NotTo(HaveOccurred())
		data[name] = b
	}
	s := &corev1.Secret{}
	g.Expect(k8sClient.Get(t.Context(), types.NamespacedName{Namespace: ns, Name: "dapr-trust-bundle"}, s)).To(Succeed())
	s.Data = data
	s.Data["jwt.key"] = []byte("Sentry's, not exported")
	g.Expect(k8sClient.Update(t.Context(), s)).To(Succeed())

	exported := filepath.Join(t.TempDir(), "exported")
	code, out, errOut := mtlsRotator("certs", "export", "--out", exported, "--namespace", ns, "--kubeconfig", testCluster.Kubeconfig)
	g.Expect(code).To(Equal(0), errOut)
	g.Expect(errOut).To(BeEmpty(), "the bundle passes Sentry's checks")
	g.Expect(out).To(ContainSubstring("trust anchors: 1"))
	for name, want := range data {
		if name == "jwt.key" {
			g.Expect(filepath.Join(exported, name)).NotTo(BeAnExistingFile())
			continue
		}
		got, err := os.ReadFile(filepath.Join(exported, name))
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(got).To(Equal(want), name)
	}
	info, err := os.Stat(filepath.Join(exported, "issuer.key"))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(info.Mode().Perm()).To(Equal(os.FileMode(0o600)))

	code, _, errOut = mtlsRotator("certs", "export", "--out", exported, "--namespace", ns, "--kubeconfig", testCluster.Kubeconfig)
	g.Expect(code).To(Equal(1))
	g.Expect(errOut).To(ContainSubstring("not overwritten (use --force to replace)"))

	s.Data = nil
	g.Expect(k8sClient.Update(t.Context(), s)).To(Succeed())
	code, _, errOut = mtlsRotator("certs", "export", "--out", t.TempDir(), "--namespace", ns, "--kubeconfig", testCluster.Kubeconfig)
	g.Expect(code).To(Equal(1))
	g.Expect(errOut).To(ContainSubstring("holds no bundle"))
}

// TestStatusListsExpiries: mtls-rotator status shows every MTLSRootRotation
// with its root and issuer expiry.
func TestStatusListsExpiries(t *testing.T) {
	g := NewWithT(t)
	freshBundle(t)
	startOperator(t)
	key := newRotation(t, "status", rotatorv1.MTLSRootRotationSpec{
		Trigger: "a", Issuer: rotatorv1.IssuerSpec{Duration: &metav1.Duration{Duration: 720 * time.Hour}},
	})
	done := waitRotationCompleted(t, key, "a")
	code, out, errOut := mtlsRotator("status", "--kubeconfig", testCluster.Kubeconfig)
	g.Expect(code).To(Equal(0), errOut)
	g.Expect(out).To(ContainSubstring("NAMESPACE"))
	g.Expect(out).To(MatchRegexp(`dapr-system\s+status\s+True\s+Completed\s+` +
		done.Status.Root.NotAfter.UTC().Format(time.RFC3339) + ` \((364|365)d\)\s+` +
		done.Status.Issuer.NotAfter.UTC().Format(time.RFC3339) + ` \((29|30)d\)`))
	g.Expect(out).To(ContainSubstring("IssuerExpiringSoon"), "30 days is inside the default warning")

	code, out, _ = mtlsRotator("status", "--namespace", "nowhere", "--kubeconfig", testCluster.Kubeconfig)
	g.Expect(code).To(Equal(0))
	g.Expect(out).To(ContainSubstring("no MTLSRootRotation found"))
}

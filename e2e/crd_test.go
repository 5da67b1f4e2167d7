package e2e

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/e2e/cluster"
	"github.com/mtls-rotator/mtls-rotator/e2e/fixture"
)

// TestMTLSRotationsCRDInstalled proves that our CRD is installed and established,
// that 'kubectl get mtlsrotations' answers with our printer columns, that
// 'kubectl explain' documents the fields, and that the status defaults
// observedGeneration to -1 (nothing observed yet).
func TestMTLSRotationsCRDInstalled(t *testing.T) {
	g := NewWithT(t)
	ctx := t.Context()

	extScheme := runtime.NewScheme()
	g.Expect(apiextensionsv1.AddToScheme(extScheme)).To(Succeed())
	extClient, err := client.New(testCluster.Config, client.Options{Scheme: extScheme})
	g.Expect(err).NotTo(HaveOccurred())
	crd := &apiextensionsv1.CustomResourceDefinition{}
	g.Expect(extClient.Get(ctx, types.NamespacedName{Name: "mtlsrotations.mtls.rotator.dev"}, crd)).To(Succeed())
	g.Expect(crd.Spec.Scope).To(Equal(apiextensionsv1.NamespaceScoped))
	g.Expect(crd.Status.Conditions).To(ContainElement(And(
		HaveField("Type", apiextensionsv1.Established), HaveField("Status", apiextensionsv1.ConditionTrue))))

	out, err := testCluster.Kubectl(ctx, "get", "mtlsrotations", "-A")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(out).To(ContainSubstring("No resources found"))

	root, err := cluster.RepoRoot()
	g.Expect(err).NotTo(HaveOccurred())
	_, err = testCluster.Kubectl(ctx, "apply", "-f", filepath.Join(root, "config", "samples", "mtls_v1alpha1_mtlsrootrotation.yaml"))
	g.Expect(err).NotTo(HaveOccurred())
	t.Cleanup(func() {
		_, _ = testCluster.Kubectl(context.Background(), "delete", "mtlsrotations", "--all", "-n", fixture.ControlPlaneNamespace, "--wait=true")
	})

	g.Eventually(func(g Gomega) {
		out, err := testCluster.Kubectl(ctx, "get", "mtlsrotations", "-n", fixture.ControlPlaneNamespace)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(out).To(MatchRegexp(`(?m)^NAME\s+READY\s+STEP\s+ROOT EXPIRES\s+ISSUER EXPIRES\s+APPS\s+CONVERGED\s+AGE`))
		g.Expect(out).To(MatchRegexp(`(?m)^dapr\s`))
	}).WithTimeout(10 * time.Second).Should(Succeed())

	out, err = testCluster.Kubectl(ctx, "get", "mtlsrot", "-n", fixture.ControlPlaneNamespace, "-o", "name")
	g.Expect(err).NotTo(HaveOccurred(), "the short name answers")
	g.Expect(out).To(ContainSubstring("mtlsrootrotation.mtls.rotator.dev/dapr"))

	out, err = testCluster.Kubectl(ctx, "explain", "mtlsrotations.spec.trigger")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(out).To(ContainSubstring("changing it starts a new rotation"))

	obj := &rotatorv1.MTLSRootRotation{}
	g.Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: fixture.ControlPlaneNamespace, Name: "dapr"}, obj)).To(Succeed())
	g.Expect(obj.Status.ObservedGeneration).To(Equal(int64(-1)))
}

// TestTheLongestNameTheCRDAcceptsRotates: every object the operator names
// after an MTLSRootRotation (Certificates, Issuers, key Secrets, backups,
// labels and restart ids) still fits when the name is the longest the CRD
// accepts, through a new-key rotation's three phases; and one character more
// is refused at apply time.
func TestTheLongestNameTheCRDAcceptsRotates(t *testing.T) {
	g := NewWithT(t)
	freshBundle(t)
	startOperator(t)
	name := "l" + strings.Repeat("o", 61) + "g"
	key := newRotation(t, name, rotatorv1.MTLSRootRotationSpec{Trigger: "first", Applications: rotatorv1.ApplicationsSpec{MaxConcurrent: 5}})
	waitRotationCompleted(t, key, "first")
	g.Expect(rotateToANewKey(t, key).Status.RootKeyGeneration).To(Equal(int32(2)))

	tooLong := &rotatorv1.MTLSRootRotation{ObjectMeta: metav1.ObjectMeta{Name: name + "x", Namespace: fixture.ControlPlaneNamespace}}
	err := k8sClient.Create(t.Context(), tooLong)
	g.Expect(apierrors.IsInvalid(err)).To(BeTrue(), "%v", err)
	g.Expect(err.Error()).To(ContainSubstring("metadata.name must be at most 63 characters"))
}

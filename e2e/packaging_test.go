package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/mtls-rotator/mtls-rotator/e2e/cluster"
	"github.com/mtls-rotator/mtls-rotator/e2e/fixture"
)

// documents splits rendered YAML into objects.
func documents(t *testing.T, rendered string) []*unstructured.Unstructured {
	t.Helper()
	var objs []*unstructured.Unstructured
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(rendered, -1) {
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
			t.Fatalf("rendered YAML: %v", err)
		}
		if len(u.Object) > 0 {
			objs = append(objs, u)
		}
	}
	return objs
}

func find(objs []*unstructured.Unstructured, kind, namespace, name string) *unstructured.Unstructured {
	for _, o := range objs {
		if o.GetKind() == kind && o.GetNamespace() == namespace && (name == "" || o.GetName() == name) {
			return o
		}
	}
	return nil
}

// generatedRules reads the rules controller-gen generated for kind.
func generatedRules(t *testing.T, kind string) []rbacv1.PolicyRule {
	t.Helper()
	data := repoFile(t, "config", "rbac", "role.yaml")
	return rulesOf(t, find(documents(t, string(data)), kind, map[string]string{"Role": "dapr-system"}[kind], ""))
}

func rulesOf(t *testing.T, o *unstructured.Unstructured) []rbacv1.PolicyRule {
	t.Helper()
	if o == nil {
		t.Fatal("no such object")
	}
	data, err := yaml.Marshal(o.Object["rules"])
	if err != nil {
		t.Fatal(err)
	}
	var rules []rbacv1.PolicyRule
	if err := yaml.Unmarshal(data, &rules); err != nil {
		t.Fatal(err)
	}
	return rules
}

// dryRun applies rendered manifests to the local cluster with a server-side
// dry run and returns what kubectl printed (warnings included).
func dryRun(t *testing.T, rendered string) (string, error) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "rendered.yaml")
	if err := os.WriteFile(file, []byte(rendered), 0o600); err != nil {
		t.Fatal(err)
	}
	return testCluster.Kubectl(t.Context(), "apply", "--server-side", "--force-conflicts", "--field-manager=packaging-test",
		"--dry-run=server", "-f", file)
}

// restrictedNamespace creates the operator's namespace, labelled as the
// manifests label it, for real: a dry run of a Namespace does not make the
// Pod Security labels apply to what follows.
func restrictedNamespace(t *testing.T, objs []*unstructured.Unstructured, name string) {
	t.Helper()
	ns := &corev1.Namespace{}
	ns.Name = name
	if err := k8sClient.Get(t.Context(), client.ObjectKey{Name: name}, ns); apierrors.IsNotFound(err) {
		NewWithT(t).Expect(k8sClient.Create(t.Context(), ns)).To(Succeed())
	}
	labels := ns.Labels
	if labels == nil {
		labels = map[string]string{}
	}
	for k, v := range map[string]string{
		"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/warn": "restricted",
	} {
		labels[k] = v
	}
	if rendered := find(objs, "Namespace", "", name); rendered != nil {
		for k, v := range rendered.GetLabels() {
			labels[k] = v
		}
	}
	ns.Labels = labels
	NewWithT(t).Expect(k8sClient.Update(t.Context(), ns)).To(Succeed())
}

const podSecurityWarning = "would violate PodSecurity"

// TestKustomizeDefaultIsAccepted renders config/default and has the API
// server accept it: the Dapr namespace's Role stays in dapr-system, the
// manager meets the restricted Pod Security profile, and a variant that does
// not is caught.
func TestKustomizeDefaultIsAccepted(t *testing.T) {
	g := NewWithT(t)
	root, err := cluster.RepoRoot()
	g.Expect(err).NotTo(HaveOccurred())
	rendered, err := testCluster.Kubectl(t.Context(), "kustomize", filepath.Join(root, "config", "default"))
	g.Expect(err).NotTo(HaveOccurred())
	objs := documents(t, rendered)

	role := find(objs, "Role", "dapr-system", "mtls-rotator-manager")
	g.Expect(role).NotTo(BeNil(), "the Dapr namespace's Role is not moved by a namespace transformer")
	g.Expect(rulesOf(t, role)).To(Equal(generatedRules(t, "Role")))
	binding := find(objs, "RoleBinding", "dapr-system", "mtls-rotator-manager")
	g.Expect(binding).NotTo(BeNil())
	g.Expect(binding.Object["subjects"]).To(ContainElement(HaveKeyWithValue("namespace", "mtls-rotator-system")))
	g.Expect(find(objs, "Service", "mtls-rotator-system", "mtls-rotator-metrics")).NotTo(BeNil())
	g.Expect(find(objs, "Namespace", "", "mtls-rotator-system").GetLabels()).
		To(HaveKeyWithValue("pod-security.kubernetes.io/enforce", "restricted"))
	g.Expect(find(objs, "ValidatingAdmissionPolicy", "", "mtls-rotator-restarts-only")).NotTo(BeNil())
	g.Expect(find(objs, "ValidatingAdmissionPolicyBinding", "", "mtls-rotator-restarts-only")).NotTo(BeNil())
	g.Expect(find(objs, "ValidatingAdmissionPolicy", "", "mtls-rotator-secrets")).NotTo(BeNil())
	g.Expect(find(objs, "ValidatingAdmissionPolicyBinding", "", "mtls-rotator-secrets")).NotTo(BeNil())

	restrictedNamespace(t, objs, "mtls-rotator-system")
	out, err := dryRun(t, rendered)
	g.Expect(err).NotTo(HaveOccurred(), out)
	g.Expect(out).To(ContainSubstring("deployment.apps/mtls-rotator serverside-applied (server dry run)"))
	g.Expect(out).NotTo(ContainSubstring(podSecurityWarning))

	// The check can fail: a manager allowed to escalate is reported.
	escalating := strings.Replace(rendered, "allowPrivilegeEscalation: false", "allowPrivilegeEscalation: true", 1)
	g.Expect(escalating).NotTo(Equal(rendered))
	out, err = dryRun(t, escalating)
	g.Expect(err).NotTo(HaveOccurred(), out)
	g.Expect(out).To(ContainSubstring(podSecurityWarning))

	// The optional NetworkPolicy component renders and is accepted too.
	withPolicy, err := testCluster.Kubectl(t.Context(), "kustomize", filepath.Join(root, "config", "network-policy"))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(find(documents(t, withPolicy), "NetworkPolicy", "mtls-rotator-system", "")).NotTo(BeNil())
	out, err = dryRun(t, withPolicy)
	g.Expect(err).NotTo(HaveOccurred(), out)

	// The eviction opt-in, as a component added to config/default.
	overlay := t.TempDir()
	rel := func(dir string) string {
		p, err := filepath.Rel(overlay, filepath.Join(root, "config", dir))
		g.Expect(err).NotTo(HaveOccurred())
		return p
	}
	g.Expect(os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), fmt.Appendf(nil,
		"apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- %s\ncomponents:\n- %s\n", rel("default"), rel("eviction")), 0o600)).To(Succeed())
	withEviction, err := testCluster.Kubectl(t.Context(), "kustomize", "--load-restrictor=LoadRestrictionsNone", overlay)
	g.Expect(err).NotTo(HaveOccurred(), withEviction)
	evictor := find(documents(t, withEviction), "ClusterRole", "", "mtls-rotator-evictor")
	g.Expect(evictor).NotTo(BeNil())
	g.Expect(rulesOf(t, evictor)).To(ConsistOf(HaveField("Resources", ConsistOf("pods/eviction"))))
	g.Expect(find(documents(t, withEviction), "ClusterRoleBinding", "", "mtls-rotator-evictor")).NotTo(BeNil())
	out, err = dryRun(t, withEviction)
	g.Expect(err).NotTo(HaveOccurred(), out)
}

// helm runs the helm binary hack/build-binaries.sh builds.
func helm(t *testing.T, args ...string) string {
	t.Helper()
	root, err := cluster.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		assets = filepath.Join(root, "bin", "k8s", "assets")
	}
	cmd := exec.CommandContext(t.Context(), filepath.Join(assets, "helm"), args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+t.TempDir(), "HELM_CONFIG_HOME="+t.TempDir(), "HELM_DATA_HOME="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helm %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// TestHelmChartIsAccepted renders the chart with its defaults and with every
// option on, and has the API server accept both: the RBAC rules are exactly
// the generated ones, in every managed namespace.
func TestHelmChartIsAccepted(t *testing.T) {
	g := NewWithT(t)
	g.Expect(helm(t, "lint", "charts/mtls-rotator")).To(ContainSubstring("0 chart(s) failed"))

	defaults := helm(t, "template", "rotator", "charts/mtls-rotator", "--namespace", "mtls-rotator-system")
	objs := documents(t, defaults)
	crd := find(objs, "CustomResourceDefinition", "", "mtlsrotations.mtls.rotator.dev")
	g.Expect(crd).NotTo(BeNil())
	g.Expect(crd.GetAnnotations()).To(HaveKeyWithValue("helm.sh/resource-policy", "keep"))
	g.Expect(rulesOf(t, find(objs, "ClusterRole", "", "rotator-mtls-rotator-manager"))).To(Equal(generatedRules(t, "ClusterRole")))
	g.Expect(rulesOf(t, find(objs, "Role", "dapr-system", "rotator-mtls-rotator-manager"))).To(Equal(generatedRules(t, "Role")))
	g.Expect(find(objs, "ServiceMonitor", "mtls-rotator-system", "")).To(BeNil(), "off by default")
	g.Expect(find(objs, "ClusterRole", "", "rotator-mtls-rotator-evictor")).To(BeNil(), "pods/eviction is an opt-in")
	for _, r := range generatedRules(t, "ClusterRole") {
		g.Expect(r.Resources).NotTo(ContainElement("pods/eviction"), "not in the operator's own role")
	}
	// The admission policies of config/admission, for the release's ServiceAccount.
	kustomized := documents(t, string(repoFile(t, "config", "admission", "policy.yaml")))
	for _, k := range kustomized {
		if k.GetKind() != "ValidatingAdmissionPolicy" {
			continue
		}
		name := "rotator-" + k.GetName()
		policy := find(objs, "ValidatingAdmissionPolicy", "", name)
		g.Expect(policy).NotTo(BeNil(), name)
		g.Expect(policy.Object["spec"]).To(HaveKeyWithValue("matchConditions", ConsistOf(HaveKeyWithValue("expression",
			"request.userInfo.username == 'system:serviceaccount:mtls-rotator-system:mtls-rotator'"))))
		for _, field := range []string{"validations", "variables", "matchConstraints", "failurePolicy"} {
			g.Expect(policy.Object["spec"].(map[string]any)[field]).To(Equal(k.Object["spec"].(map[string]any)[field]), field)
		}
		g.Expect(find(objs, "ValidatingAdmissionPolicyBinding", "", name).Object["spec"]).To(HaveKeyWithValue("policyName", name))
	}
	g.Expect(kustomized).To(HaveLen(4), "two policies, each with its binding")

	restrictedNamespace(t, objs, "mtls-rotator-system")
	out, err := dryRun(t, defaults)
	g.Expect(err).NotTo(HaveOccurred(), out)
	g.Expect(out).NotTo(ContainSubstring(podSecurityWarning))

	everything := helm(t, "template", "rotator", "charts/mtls-rotator", "--namespace", "mtls-rotator-system",
		"--set", "managedNamespaces={dapr-system,dapr-system-b}",
		"--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.prometheusRule.enabled=true",
		"--set", "networkPolicy.enabled=true", "--set", "crds.keep=false", "--set", "leaderElection.enabled=false", "--set", "eviction.enabled=true",
		"--set", "image.tag=v9.9.9")
	objs = documents(t, everything)
	for _, ns := range []string{"dapr-system", "dapr-system-b"} {
		g.Expect(rulesOf(t, find(objs, "Role", ns, "rotator-mtls-rotator-manager"))).To(Equal(generatedRules(t, "Role")), ns)
		g.Expect(find(objs, "RoleBinding", ns, "rotator-mtls-rotator-manager")).NotTo(BeNil(), ns)
	}
	evictor := documents(t, string(repoFile(t, "config", "eviction", "role.yaml")))[0]
	g.Expect(rulesOf(t, find(objs, "ClusterRole", "", "rotator-mtls-rotator-evictor"))).To(Equal(rulesOf(t, evictor)), "the generated eviction grant")
	g.Expect(find(objs, "ClusterRoleBinding", "", "rotator-mtls-rotator-evictor")).NotTo(BeNil())
	deploy := find(objs, "Deployment", "mtls-rotator-system", "mtls-rotator")
	g.Expect(deploy).NotTo(BeNil())
	containers, _, _ := unstructured.NestedSlice(deploy.Object, "spec", "template", "spec", "containers")
	manager := containers[0].(map[string]any)
	g.Expect(manager["image"]).To(Equal("ghcr.io/mtls-rotator/mtls-rotator:v9.9.9"))
	g.Expect(manager["args"]).To(ContainElements("--namespaces=dapr-system,dapr-system-b", "--enable-leader-election=false"))
	g.Expect(find(objs, "CustomResourceDefinition", "", "").GetAnnotations()).NotTo(HaveKey("helm.sh/resource-policy"))
	rule := find(objs, "PrometheusRule", "mtls-rotator-system", "")
	g.Expect(rule).NotTo(BeNil())
	g.Expect(rule.Object["spec"]).To(HaveKey("groups"))
	g.Expect(find(objs, "ServiceMonitor", "mtls-rotator-system", "")).NotTo(BeNil())
	g.Expect(find(objs, "NetworkPolicy", "mtls-rotator-system", "")).NotTo(BeNil())

	secondControlPlane(t, "dapr-system-b")
	out, err = dryRun(t, everything)
	g.Expect(err).NotTo(HaveOccurred(), out)
	g.Expect(out).To(ContainSubstring("prometheusrule.monitoring.coreos.com/mtls-rotator serverside-applied (server dry run)"))
}

// TestPoliciesHoldWhereAnOverlayMovesTheOperator: an overlay of
// config/default that moves the operator into another namespace (a
// namespace transformer, the usual first customisation) keeps its admission
// policies bound to it: with the operator's roles granted to the moved
// ServiceAccount, a delete of a Secret it did not make and a change to
// a workload beyond its restart annotations are still refused.
func TestPoliciesHoldWhereAnOverlayMovesTheOperator(t *testing.T) {
	g, ctx := NewWithT(t), t.Context()
	root, err := cluster.RepoRoot()
	g.Expect(err).NotTo(HaveOccurred())
	const moved = "ops-rotator"
	overlay := t.TempDir()
	base, err := filepath.Rel(overlay, filepath.Join(root, "config", "default")) // kustomize takes no absolute root
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), fmt.Appendf(nil,
		"apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: %s\nresources:\n- %s\n", moved, base), 0o600)).To(Succeed())
	rendered, err := testCluster.Kubectl(ctx, "kustomize", "--load-restrictor=LoadRestrictionsNone", overlay)
	g.Expect(err).NotTo(HaveOccurred(), rendered)
	objs := documents(t, rendered)
	g.Expect(find(objs, "ServiceAccount", moved, "mtls-rotator")).NotTo(BeNil(), "the overlay moved the operator")

	// The policies the overlay renders are the ones the API server enforces.
	var policies []string
	for _, o := range objs {
		if strings.HasPrefix(o.GetKind(), "ValidatingAdmissionPolicy") {
			y, err := yaml.Marshal(o.Object)
			g.Expect(err).NotTo(HaveOccurred())
			policies = append(policies, string(y))
		}
	}
	g.Expect(policies).To(HaveLen(4))
	file := filepath.Join(t.TempDir(), "policies.yaml")
	g.Expect(os.WriteFile(file, []byte(strings.Join(policies, "---\n")), 0o600)).To(Succeed())
	out, err := testCluster.Kubectl(ctx, "apply", "--server-side", "--force-conflicts", "-f", file)
	g.Expect(err).NotTo(HaveOccurred(), out)
	t.Cleanup(func() { // the suite's own policies again
		_, _ = testCluster.Kubectl(context.Background(), "apply", "-k", filepath.Join(root, "config", "admission"))
	})

	createOrReplace(t, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: moved}})
	createOrReplace(t, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "mtls-rotator", Namespace: moved}})
	binding := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "moved-mtls-rotator", Namespace: fixture.ControlPlaneNamespace},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "mtls-rotator-manager"},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: "mtls-rotator", Namespace: moved}}}
	clusterBinding := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "moved-mtls-rotator"},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "mtls-rotator-manager"},
		Subjects: binding.Subjects}
	for _, b := range []client.Object{binding, clusterBinding} {
		createOrReplace(t, b)
		t.Cleanup(func() { _ = k8sClient.Delete(context.Background(), b) })
	}
	operatorConfig(t) // the Role exists
	c, err := client.New(serviceAccountConfig(t, moved, "mtls-rotator"), client.Options{Scheme: k8sClient.Scheme()})
	g.Expect(err).NotTo(HaveOccurred())

	foreign := daprNamespaceSecret(t, "overlay-foreign", corev1.SecretTypeOpaque, nil)
	g.Eventually(func() error { return c.Delete(ctx, foreign, client.DryRunAll) }).WithTimeout(10*time.Second).WithPolling(200*time.Millisecond).
		Should(MatchError(ContainSubstring("mtls-rotator-secrets")), "a Secret it did not make is not its to delete")
	sentry := &appsv1.Deployment{}
	g.Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: fixture.ControlPlaneNamespace, Name: fixture.Sentry}, sentry)).To(Succeed())
	err = c.Patch(ctx, sentry, client.RawPatch(types.MergePatchType, []byte(`{"spec":{"template":{"spec":{"serviceAccountName":"default"}}}}`)), client.DryRunAll)
	g.Expect(err).To(MatchError(ContainSubstring("mtls-rotator-restarts-only")), "nor a workload's pod spec its to change")
}

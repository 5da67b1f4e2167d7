package v1alpha1_test

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/testenv"
)

var k8sClient client.Client

func TestMain(m *testing.M) {
	cfg, stop, err := testenv.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	scheme := runtime.NewScheme()
	if err := rotatorv1.AddToScheme(scheme); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if k8sClient, err = client.New(cfg, client.Options{Scheme: scheme}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	if err := stop(); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	os.Exit(code)
}

var objectCounter int

// create sends an MTLSRootRotation with the given spec (YAML) as written, so
// that the API server's own decoding, defaulting and validation decide.
func create(t *testing.T, specYAML string) error {
	t.Helper()
	spec := map[string]any{}
	if err := yaml.Unmarshal([]byte(specYAML), &spec); err != nil {
		t.Fatalf("test spec: %v", err)
	}
	objectCounter++
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": rotatorv1.GroupVersion.String(),
		"kind":       rotatorv1.MTLSRootRotationKind,
		"metadata":   map[string]any{"name": fmt.Sprintf("r%d", objectCounter), "namespace": "default"},
		"spec":       spec,
	}}
	return k8sClient.Create(t.Context(), u)
}

func TestDefaults(t *testing.T) {
	g := NewWithT(t)
	obj := &rotatorv1.MTLSRootRotation{ObjectMeta: metav1.ObjectMeta{Name: "defaults", Namespace: "default"}}
	g.Expect(k8sClient.Create(t.Context(), obj)).To(Succeed())

	s := obj.Spec
	g.Expect(s.TrustDomain).To(Equal("cluster.local"))
	g.Expect(s.Root.Duration).To(Equal(&metav1.Duration{Duration: 8760 * time.Hour}))
	g.Expect(s.Root.PrivateKey.Algorithm).To(Equal(rotatorv1.ECDSA))
	g.Expect(s.Root.KeyPolicy).To(Equal(rotatorv1.KeyPolicyReuse))
	g.Expect(s.Issuer.Duration).To(Equal(&metav1.Duration{Duration: 8760 * time.Hour}))
	g.Expect(s.Issuer.PrivateKey.Algorithm).To(Equal(rotatorv1.ECDSA))
	g.Expect(s.Target.SecretName).To(Equal("dapr-trust-bundle"))
	g.Expect(s.Target.ConfigMapName).To(Equal("dapr-trust-bundle"))
	g.Expect(s.Target.Keys).To(Equal(rotatorv1.TargetKeys{CA: "ca.crt", IssuerCert: "issuer.crt", IssuerKey: "issuer.key"}))
	g.Expect(s.ControlPlane.Workloads).To(Equal(rotatorv1.DefaultControlPlane()))
	g.Expect(s.ControlPlane.RolloutTimeout).To(Equal(&metav1.Duration{Duration: 10 * time.Minute}))
	g.Expect(s.Applications.Restart).To(Equal(ptrTo(true)))
	g.Expect(s.Applications.MaxConcurrent).To(Equal(int32(5)))
	g.Expect(s.Applications.RolloutTimeout).To(Equal(&metav1.Duration{Duration: 10 * time.Minute}))
	g.Expect(obj.Status.ObservedGeneration).To(Equal(int64(-1)))

	// The Go defaults the operator falls back on agree with the CRD's.
	var zero rotatorv1.MTLSRootRotationSpec
	g.Expect(zero.GetTrustDomain()).To(Equal(s.TrustDomain))
	g.Expect(zero.GetExpiryWarning()).To(Equal(s.ExpiryWarning.Duration))
	g.Expect(s.RenewBefore).To(BeNil(), "automatic renewal is off unless asked for")
	g.Expect(zero.GetRenewBefore()).To(BeZero())
	g.Expect(zero.Root.GetDuration()).To(Equal(s.Root.Duration.Duration))
	g.Expect(zero.Issuer.GetDuration()).To(Equal(s.Issuer.Duration.Duration))
	g.Expect(zero.Root.GetKeyPolicy()).To(Equal(s.Root.KeyPolicy))
	g.Expect(zero.Root.PrivateKey.GetAlgorithm()).To(Equal(s.Root.PrivateKey.Algorithm))
	g.Expect(zero.Target.GetSecretName()).To(Equal(s.Target.SecretName))
	g.Expect(zero.Target.GetConfigMapName()).To(Equal(s.Target.ConfigMapName))
	g.Expect([]string{zero.Target.Keys.GetCA(), zero.Target.Keys.GetIssuerCert(), zero.Target.Keys.GetIssuerKey()}).
		To(Equal([]string{s.Target.Keys.CA, s.Target.Keys.IssuerCert, s.Target.Keys.IssuerKey}))
	g.Expect(zero.ControlPlane.GetWorkloads()).To(Equal(s.ControlPlane.Workloads))
	g.Expect(zero.ControlPlane.GetRolloutTimeout()).To(Equal(s.ControlPlane.RolloutTimeout.Duration))
	g.Expect(zero.Applications.RestartEnabled()).To(Equal(*s.Applications.Restart))
	g.Expect(zero.Applications.GetMaxConcurrent()).To(Equal(int(s.Applications.MaxConcurrent)))
	g.Expect(zero.Applications.GetRolloutTimeout()).To(Equal(s.Applications.RolloutTimeout.Duration))
}

// TestLazyDefaultsToAWeek: an empty applications.lazy restarts the
// stragglers a week ahead of the previous root certificate's expiry, as the
// Go default says.
func TestLazyDefaultsToAWeek(t *testing.T) {
	g := NewWithT(t)
	obj := &rotatorv1.MTLSRootRotation{ObjectMeta: metav1.ObjectMeta{Name: "lazy-defaults", Namespace: "default"},
		Spec: rotatorv1.MTLSRootRotationSpec{Applications: rotatorv1.ApplicationsSpec{Lazy: &rotatorv1.LazyRestartSpec{}}}}
	g.Expect(k8sClient.Create(t.Context(), obj)).To(Succeed())
	g.Expect(obj.Spec.Applications.Lazy.RestartBefore).To(Equal(&metav1.Duration{Duration: rotatorv1.DefaultLazyRestartBefore}))
	g.Expect((&rotatorv1.LazyRestartSpec{}).GetRestartBefore()).To(Equal(rotatorv1.DefaultLazyRestartBefore))
}

func TestValidSpecsAreAccepted(t *testing.T) {
	valid := map[string]string{
		"every selector operator, prefixed keys": "{applications: {namespaceSelector: {matchLabels: {'example.com/team': a-1}, matchExpressions: [{key: tier, operator: In, values: [web, '']}, {key: zone, operator: DoesNotExist}]}, selector: {matchExpressions: [{key: 'app.kubernetes.io/name', operator: NotIn, values: [b]}, {key: canary, operator: Exists}]}}}",
		"rsa 4096 root, ed25519 issuer":          "{root: {privateKey: {algorithm: RSA, size: 4096}}, issuer: {privateKey: {algorithm: Ed25519}}}",
		"ecdsa p-384":                            "{root: {privateKey: {algorithm: ECDSA, size: 384}}}",
		"short issuer, long root":                "{root: {duration: 87600h}, issuer: {duration: 1h}}",
		"equal durations":                        "{root: {duration: 720h}, issuer: {duration: 720h}}",
		"custom target":                          "{target: {secretName: sentry-creds, configMapName: sentry.anchors, keys: {ca: root.pem, issuerCert: issuer.pem, issuerKey: issuer-key.pem}}}",
		"custom control plane":                   "{controlPlane: {workloads: [{kind: DaemonSet, name: dapr-sentry}, {kind: Deployment, name: dapr-sentry}], rolloutTimeout: 30s}}",
		"apps not restarted":                     "{applications: {restart: false, maxConcurrent: 1}}",
		"trust domain with dots":                 "{trustDomain: prod.example.org}",
		"trust domain of 64 characters":          "{trustDomain: '" + strings.Repeat("a", 64) + "'}",
		"rotate":                                 "{root: {keyPolicy: Rotate}}",
		"brought key":                            "{root: {privateKeySecretRef: {name: my-key, key: tls.key}}}",
		"external cluster issuer":                "{issuer: {issuerRef: {name: org-ca, kind: ClusterIssuer}}}",
		"external issuer, long issuer":           "{root: {duration: 720h}, issuer: {duration: 8760h, issuerRef: {name: vault, group: cert-manager.io}}}",
		"external issuer with Rotate":            "{root: {keyPolicy: Rotate}, issuer: {issuerRef: {name: org-ca}}}",
		"renewal a week ahead":                   "{renewBefore: 168h, expiryWarning: 720h}",
		"short-lived issuer renewed":             "{issuer: {duration: 1h}, renewBefore: 59m}",
		"no expiry warning":                      "{expiryWarning: 0s}",
		"lazy, default margin":                   "{applications: {lazy: {}}}",
		"lazy, explicit Reuse":                   "{root: {keyPolicy: Reuse}, applications: {lazy: {restartBefore: 720h}, restart: true}}",
	}
	for name, spec := range valid {
		t.Run(name, func(t *testing.T) {
			NewWithT(t).Expect(create(t, spec)).To(Succeed())
		})
	}
}

func TestInvalidSpecsAreRefusedWithAMessage(t *testing.T) {
	invalid := []struct {
		name, spec, message string
	}{
		{"sub-hour root", "{root: {duration: 30m}}", "root.duration must be at least 1h"},
		{"negative root", "{root: {duration: -8760h}}", "root.duration must be at least 1h"},
		{"zero issuer", "{issuer: {duration: 0s}}", "issuer.duration must be at least 1h"},
		{"issuer outlives root", "{root: {duration: 720h}, issuer: {duration: 721h}}", "issuer.duration must not exceed root.duration"},
		{"issuer outlives default root", "{issuer: {duration: 9000h}}", "issuer.duration must not exceed root.duration"},
		{"unknown algorithm", "{root: {privateKey: {algorithm: DSA}}}", `Unsupported value: "DSA"`},
		{"rsa 1024", "{root: {privateKey: {algorithm: RSA, size: 1024}}}", "RSA keys must be at least 2048 bits"},
		{"issuer rsa 1024", "{issuer: {privateKey: {algorithm: RSA, size: 1024}}}", "RSA keys must be at least 2048 bits"},
		{"odd ecdsa size", "{root: {privateKey: {size: 255}}}", "ECDSA key size must be 256, 384 or 521"},
		{"ed25519 with size", "{root: {privateKey: {algorithm: Ed25519, size: 256}}}", "Ed25519 keys have no size"},
		{"unknown key policy", "{root: {keyPolicy: Sometimes}}", `Unsupported value: "Sometimes"`},
		{"maxConcurrent 0", "{applications: {maxConcurrent: 0}}", "applications.maxConcurrent must be at least 1"},
		{"maxConcurrent negative", "{applications: {maxConcurrent: -3}}", "applications.maxConcurrent must be at least 1"},
		{"empty control-plane name", "{controlPlane: {workloads: [{kind: Deployment, name: ''}]}}", "should be at least 1 chars long"},
		{"duplicate control-plane workload", "{controlPlane: {workloads: [{kind: Deployment, name: dapr-sentry}, {kind: Deployment, name: dapr-sentry}]}}", "must not list a workload twice"},
		{"unknown workload kind", "{controlPlane: {workloads: [{kind: Pod, name: dapr-sentry}]}}", `Unsupported value: "Pod"`},
		{"empty control plane", "{controlPlane: {workloads: []}}", "should have at least 1 items"},
		{"zero rollout timeout", "{controlPlane: {rolloutTimeout: 0s}}", "controlPlane.rolloutTimeout must be positive"},
		{"invalid trust domain", "{trustDomain: 'Bad Domain!'}", "trustDomain must be a SPIFFE trust domain"},
		{"trust domain with a dash at the end", "{trustDomain: 'cluster-'}", "trustDomain must be a SPIFFE trust domain"},
		{"same key twice", "{target: {keys: {ca: ca.crt, issuerCert: ca.crt}}}", "target.keys must be three different key names"},
		{"invalid secret name", "{target: {secretName: Dapr_Bundle}}", "target.secretName must be a valid Kubernetes object name"},
		{"invalid key name", "{target: {keys: {ca: 'ca/crt'}}}", "keys.ca must consist of alphanumerics"},
		{"brought key with Rotate", "{root: {keyPolicy: Rotate, privateKeySecretRef: {name: my-key}}}", "it needs keyPolicy Reuse"},
		{"brought key without a name", "{root: {privateKeySecretRef: {name: ''}}}", "should be at least 1 chars long"},
		{"brought key and external issuer", "{root: {privateKeySecretRef: {name: my-key}}, issuer: {issuerRef: {name: org-ca}}}", "issuer.issuerRef and root.privateKeySecretRef cannot be used together"},
		{"external issuer of an unknown kind", "{issuer: {issuerRef: {name: org-ca, kind: Certificate}}}", `Unsupported value: "Certificate"`},
		{"renewal as long as the issuer", "{issuer: {duration: 720h}, renewBefore: 720h}", "renewBefore must be shorter than issuer.duration"},
		{"renewal longer than the default issuer", "{renewBefore: 9000h}", "renewBefore must be shorter than issuer.duration"},
		{"renewal too soon", "{renewBefore: 30s}", "renewBefore must be at least 1m"},
		{"negative expiry warning", "{expiryWarning: -1h}", "expiryWarning must not be negative"},
		{"trust domain too long for a common name", "{trustDomain: '" + strings.Repeat("a", 65) + "'}", "trustDomain must be at most 64 characters"},
		{"lazy with a new root key", "{root: {keyPolicy: Rotate}, applications: {lazy: {}}}", "applications.lazy needs a rotation that keeps the root key"},
		{"lazy with an external issuer", "{issuer: {issuerRef: {name: org-ca}}, applications: {lazy: {}}}", "applications.lazy needs a rotation that keeps the root key"},
		{"lazy with restarts off", "{applications: {restart: false, lazy: {}}}", "applications.lazy defers restarts that applications.restart false turns off"},
		{"lazy margin zero", "{applications: {lazy: {restartBefore: 0s}}}", "applications.lazy.restartBefore must be positive"},
		{"external issuer without a name", "{issuer: {issuerRef: {name: ''}}}", "should be at least 1 chars long"},
		{"zero applications rollout timeout", "{applications: {rolloutTimeout: 0s}}", "applications.rolloutTimeout must be positive"},
		{"negative applications rollout timeout", "{applications: {rolloutTimeout: -1m}}", "applications.rolloutTimeout must be positive"},
		{"maxConcurrent over 1000", "{applications: {maxConcurrent: 1001}}", "should be less than or equal to 1000"},
		{"invalid issuer certificate key", "{target: {keys: {issuerCert: 'issuer crt'}}}", "keys.issuerCert must consist of alphanumerics"},
		{"invalid issuer key key", "{target: {keys: {issuerKey: 'issuer/key'}}}", "keys.issuerKey must consist of alphanumerics"},
		{"issuer certificate and key in one key", "{target: {keys: {issuerCert: tls.pem, issuerKey: tls.pem}}}", "target.keys must be three different key names"},
		{"invalid ConfigMap name", "{target: {configMapName: Dapr.Bundle}}", "target.configMapName must be a valid Kubernetes object name"},
		{"ConfigMap name over 253 characters", "{target: {configMapName: '" + strings.Repeat("a", 254) + "'}}", "Too long"},
		{"Secret name over 253 characters", "{target: {secretName: '" + strings.Repeat("a", 254) + "'}}", "Too long"},
		{"trigger over 253 characters", "{trigger: '" + strings.Repeat("t", 254) + "'}", "Too long"},
		{"empty trust domain", "{trustDomain: ''}", "should be at least 1 chars long"},
		{"common name over 64 characters", "{root: {subject: {commonName: '" + strings.Repeat("c", 65) + "'}}}", "Too long"},
		{"organization over 64 characters", "{root: {subject: {organizations: ['" + strings.Repeat("o", 65) + "']}}}", "Too long"},
		{"nine organizational units", "{root: {subject: {organizationalUnits: [a, b, c, d, e, f, g, h, i]}}}", "Too many"},
		{"nine countries", "{root: {subject: {countries: [a, b, c, d, e, f, g, h, i]}}}", "Too many"},
		{"RSA over 8192 bits", "{root: {privateKey: {algorithm: RSA, size: 16384}}}", "should be less than or equal to 8192"},
		{"33 control-plane workloads", "{controlPlane: {workloads: [" + workloads(33) + "]}}", "Too many"},
		{"control-plane workload name over 253 characters", "{controlPlane: {workloads: [{kind: Deployment, name: '" + strings.Repeat("w", 254) + "'}]}}", "Too long"},
		{"brought key's key over 253 characters", "{root: {privateKeySecretRef: {name: k, key: '" + strings.Repeat("k", 254) + "'}}}", "Too long"},
		{"external issuer group over 253 characters", "{issuer: {issuerRef: {name: org-ca, group: '" + strings.Repeat("g", 254) + "'}}}", "Too long"},
		{"negative renewal", "{renewBefore: -1h}", "renewBefore must be at least 1m"},
		{"negative lazy margin", "{applications: {lazy: {restartBefore: -1h}}}", "applications.lazy.restartBefore must be positive"},
		{"negative retention of retired roots", "{root: {retired: {keepAfterExpiry: -1h}}}", "root.retired.keepAfterExpiry must not be negative"},
		{"unknown retired roots policy", "{root: {retired: {policy: Sometimes}}}", "Unsupported value"},
		{"selector operator Bogus", "{applications: {selector: {matchExpressions: [{key: app, operator: Bogus, values: [a]}]}}}", `Unsupported value: "Bogus"`},
		{"namespace selector operator Bogus", "{applications: {namespaceSelector: {matchExpressions: [{key: team, operator: Bogus}]}}}", `spec.applications.namespaceSelector.matchExpressions[0].operator: Unsupported value: "Bogus"`},
		{"In without values", "{applications: {selector: {matchExpressions: [{key: app, operator: In}]}}}", "matchExpressions with In or NotIn need values"},
		{"NotIn with no values", "{applications: {namespaceSelector: {matchExpressions: [{key: team, operator: NotIn, values: []}]}}}", "matchExpressions with In or NotIn need values"},
		{"Exists with values", "{applications: {selector: {matchExpressions: [{key: app, operator: Exists, values: [a]}]}}}", "matchExpressions with Exists or DoesNotExist take no values"},
		{"expression key with a space", "{applications: {selector: {matchExpressions: [{key: 'bad key!', operator: Exists}]}}}", "spec.applications.selector.matchExpressions[0].key in body should match"},
		{"expression value that is no label value", "{applications: {selector: {matchExpressions: [{key: app, operator: In, values: ['a b']}]}}}", "spec.applications.selector.matchExpressions[0].values[0] in body should match"},
		{"matchLabels key with a space", "{applications: {namespaceSelector: {matchLabels: {'bad key!': x}}}}", "matchLabels keys must be label keys"},
		{"matchLabels value over 63 characters", "{applications: {selector: {matchLabels: {app: '" + strings.Repeat("v", 64) + "'}}}}", "Too long"},
		{"matchLabels value with a space", "{applications: {selector: {matchLabels: {app: 'a b'}}}}", "spec.applications.selector.matchLabels.app in body should match"},
		{"a label key over 63 characters", "{applications: {selector: {matchLabels: {'" + strings.Repeat("k", 64) + "': a}}}}", "matchLabels keys must be label keys"},
	}
	for _, tt := range invalid {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			err := create(t, tt.spec)
			g.Expect(apierrors.IsInvalid(err)).To(BeTrue(), "want Invalid, got %v", err)
			g.Expect(err.Error()).To(ContainSubstring(tt.message))
		})
	}
}

func TestExplainDocumentsEveryField(t *testing.T) {
	// kubectl explain shows the CRD's descriptions: every field must have one.
	g := NewWithT(t)
	root, err := testenv.RepoRoot()
	g.Expect(err).NotTo(HaveOccurred())
	data, err := os.ReadFile(root + "/config/crd/bases/mtls.rotator.dev_mtlsrotations.yaml")
	g.Expect(err).NotTo(HaveOccurred())
	crd := map[string]any{}
	g.Expect(yaml.Unmarshal(data, &crd)).To(Succeed())
	schema := crd["spec"].(map[string]any)["versions"].([]any)[0].(map[string]any)["schema"].(map[string]any)["openAPIV3Schema"].(map[string]any)
	spec := schema["properties"].(map[string]any)["spec"].(map[string]any)
	var undocumented []string
	var walk func(path string, node map[string]any)
	walk = func(path string, node map[string]any) {
		props, _ := node["properties"].(map[string]any)
		for name, p := range props {
			child := p.(map[string]any)
			if d, _ := child["description"].(string); strings.TrimSpace(d) == "" {
				undocumented = append(undocumented, path+"."+name)
			}
			walk(path+"."+name, child)
			if items, ok := child["items"].(map[string]any); ok {
				walk(path+"."+name+"[]", items)
			}
		}
	}
	walk("spec", spec)
	g.Expect(undocumented).To(BeEmpty())
}

func ptrTo[T any](v T) *T { return &v }

// workloads lists n distinct control-plane workloads in YAML flow style.
func workloads(n int) string {
	w := make([]string, n)
	for i := range w {
		w[i] = fmt.Sprintf("{kind: Deployment, name: w%d}", i)
	}
	return strings.Join(w, ", ")
}

// TestNamesFitALabelValue: the object's name is the owner label's value on
// what the operator makes, so a name of 64 characters is refused, and one
// of 63 accepted.
func TestNamesFitALabelValue(t *testing.T) {
	g := NewWithT(t)
	long := &rotatorv1.MTLSRootRotation{ObjectMeta: metav1.ObjectMeta{Name: strings.Repeat("n", 64), Namespace: "default"}}
	err := k8sClient.Create(t.Context(), long)
	g.Expect(apierrors.IsInvalid(err)).To(BeTrue(), "want Invalid, got %v", err)
	g.Expect(err.Error()).To(ContainSubstring("metadata.name must be at most 63 characters"))
	fits := &rotatorv1.MTLSRootRotation{ObjectMeta: metav1.ObjectMeta{Name: strings.Repeat("n", 63), Namespace: "default"}}
	g.Expect(k8sClient.Create(t.Context(), fits)).To(Succeed())
}

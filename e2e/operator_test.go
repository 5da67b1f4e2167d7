package e2e

import (
	"cmp"
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"github.com/fluxcd/pkg/runtime/events"
	"github.com/go-logr/logr/funcr"
	. "github.com/onsi/gomega"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/yaml"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/controllers"
	"github.com/mtls-rotator/mtls-rotator/e2e/cluster"
	"github.com/mtls-rotator/mtls-rotator/e2e/fixture"
)

const (
	operatorNamespace      = "mtls-rotator-system"
	operatorServiceAccount = "mtls-rotator"
)

var operatorRBACOnce sync.Once

// operatorConfig returns a REST config that authenticates as the operator's
// ServiceAccount, bound to the roles generated from the RBAC markers
// (config/rbac/role.yaml, and the eviction opt-in config/eviction) and
// nothing else.
func operatorConfig(t *testing.T) *rest.Config {
	t.Helper()
	g := NewWithT(t)
	ctx := t.Context()
	operatorRBACOnce.Do(func() {
		root, err := cluster.RepoRoot()
		g.Expect(err).NotTo(HaveOccurred())
		_, err = testCluster.Kubectl(ctx, "apply", "-f", filepath.Join(root, "config", "rbac", "role.yaml"))
		g.Expect(err).NotTo(HaveOccurred())
		// The opt-in grant of pods/eviction (config/eviction), as an install
		// that asks for it has it; TestEvictionNeedsItsGrant takes it away.
		_, err = testCluster.Kubectl(ctx, "apply", "-f", filepath.Join(root, "config", "eviction", "role.yaml"),
			"-f", filepath.Join(root, "config", "eviction", "role_binding.yaml"))
		g.Expect(err).NotTo(HaveOccurred())
		// Every operator of the suite runs under the admission policy that
		// lets it change nothing of a workload but its restart annotations.
		_, err = testCluster.Kubectl(ctx, "apply", "-k", filepath.Join(root, "config", "admission"))
		g.Expect(err).NotTo(HaveOccurred())
		for _, obj := range []client.Object{
			&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: operatorNamespace}},
			&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: operatorServiceAccount, Namespace: operatorNamespace}},
			&rbacv1.ClusterRoleBinding{
				ObjectMeta: metav1.ObjectMeta{Name: "mtls-rotator-manager"},
				RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "mtls-rotator-manager"},
				Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: operatorServiceAccount, Namespace: operatorNamespace}},
			},
			&rbacv1.RoleBinding{
				ObjectMeta: metav1.ObjectMeta{Name: "mtls-rotator-manager", Namespace: fixture.ControlPlaneNamespace},
				RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "mtls-rotator-manager"},
				Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: operatorServiceAccount, Namespace: operatorNamespace}},
			},
		} {
			if err := k8sClient.Create(ctx, obj); err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatalf("creating %T: %v", obj, err)
			}
		}
	})
	return serviceAccountConfig(t, operatorNamespace, operatorServiceAccount)
}

// serviceAccountConfig is a client config that authenticates as the
// ServiceAccount namespace/name, with a bound token, as its pod would.
func serviceAccountConfig(t *testing.T, namespace, name string) *rest.Config {
	t.Helper()
	g := NewWithT(t)
	kube, err := kubernetes.NewForConfig(testCluster.Config)
	g.Expect(err).NotTo(HaveOccurred())
	tr, err := kube.CoreV1().ServiceAccounts(namespace).CreateToken(t.Context(), name,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](3600)}}, metav1.CreateOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	cfg := rest.AnonymousClientConfig(testCluster.Config)
	cfg.BearerToken = tr.Status.Token
	cfg.QPS, cfg.Burst = 100, 200
	return cfg
}

// operator is the mtls-rotator manager running in the test process.
type operator struct {
	cancel context.CancelFunc
	done   chan struct{}
	logs   *logBuffer
	cache  client.Reader // the manager's cache: what the operator holds in memory
}

// logBuffer keeps everything the operator logged.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) write(prefix, args string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.WriteString(prefix + " " + args + "\n")
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startOperator runs the operator's manager, as main.go builds it, under its
// ServiceAccount, managing the fixture's Dapr namespace; stop it (a crash, as
// far as the rotation is concerned) with stop.
func startOperator(t *testing.T) *operator {
	t.Helper()
	return startOperatorWith(t, operatorOptions{})
}

// startOperatorFor runs the operator managing the given namespaces; each
// besides the fixture's gets the generated Role, as an install managing
// several control planes grants it.
func startOperatorFor(t *testing.T, namespaces ...string) *operator {
	t.Helper()
	return startOperatorWith(t, operatorOptions{namespaces: namespaces})
}

// operatorOptions vary the operator a test runs.
type operatorOptions struct {
	namespaces []string // the fixture's Dapr namespace when empty
	// metricsAddr serves the metrics endpoint there, with the operator's
	// metrics registered in controller-runtime's registry for the test.
	metricsAddr string
	// pollInterval replaces the tests' 200ms poll.
	pollInterval time.Duration
	// faults, when set, runs every write of the operator, and may fail it.
	faults writeHook
	// clock, when set, is the operator's: a test moves it ahead of the
	// cluster's, so that half an hour passes at once.
	clock *testClock
}

func startOperatorWith(t *testing.T, opts operatorOptions) *operator {
	t.Helper()
	g := NewWithT(t)
	namespaces := opts.namespaces
	if len(namespaces) == 0 {
		namespaces = []string{fixture.ControlPlaneNamespace}
	}
	for _, ns := range namespaces {
		if ns != fixture.ControlPlaneNamespace {
			grantRole(t, ns)
		}
	}
	scheme := runtime.NewScheme()
	g.Expect(clientgoscheme.AddToScheme(scheme)).To(Succeed())
	g.Expect(cmapi.AddToScheme(scheme)).To(Succeed())
	g.Expect(rotatorv1.AddToScheme(scheme)).To(Succeed())
	rollouts, err := controllers.RolloutsInstalled(operatorConfig(t))
	g.Expect(err).NotTo(HaveOccurred())
	cacheOptions, err := controllers.CacheOptions(namespaces, rollouts)
	g.Expect(err).NotTo(HaveOccurred())
	// Debug verbosity, so that every log line is checked for key material.
	logs := &logBuffer{}
	log := funcr.New(logs.write, funcr.Options{Verbosity: 1})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("operator log:\n%s", logs.String())
		}
	})
	mgr, err := ctrl.NewManager(operatorConfig(t), ctrl.Options{
		Scheme:                 scheme,
		Cache:                  cacheOptions,
		Client:                 controllers.ClientOptions(),
		Metrics:                metricsserver.Options{BindAddress: cmp.Or(opts.metricsAddr, "0")},
		HealthProbeBindAddress: "0",
		Logger:                 log,
		// Each test starts a fresh manager in this process; names repeat.
		Controller: config.Controller{SkipNameValidation: ptr.To(true)},
	})
	g.Expect(err).NotTo(HaveOccurred())
	recorder, err := events.NewRecorder(log, "", controllers.ControllerName, events.WithManager(mgr))
	g.Expect(err).NotTo(HaveOccurred())
	var metrics *controllers.Metrics
	if opts.metricsAddr != "" {
		metrics = controllers.NewMetrics(scheme, mgr.GetClient())
		for _, c := range metrics.Collectors() {
			g.Expect(ctrlmetrics.Registry.Register(c)).To(Succeed())
			t.Cleanup(func() { ctrlmetrics.Registry.Unregister(c) })
		}
	}
	c := mgr.GetClient()
	if opts.faults != nil {
		c = hookWrites(c, opts.faults)
	}
	g.Expect((&controllers.MTLSRootRotationReconciler{
		Client: c, APIReader: mgr.GetAPIReader(), EventRecorder: recorder, PollInterval: cmp.Or(opts.pollInterval, 200*time.Millisecond),
		Metrics: metrics, Rollouts: rollouts, Now: opts.clock.now(),
	}).SetupWithManager(mgr)).To(Succeed())

	ctx, cancel := context.WithCancel(context.Background())
	op := &operator{cancel: cancel, done: make(chan struct{}), logs: logs, cache: mgr.GetCache()}
	go func() {
		defer close(op.done)
		if err := mgr.Start(ctx); err != nil {
			t.Errorf("operator stopped with an error: %v", err)
		}
	}()
	t.Cleanup(op.stop)
	return op
}

// testClock is a clock some way ahead of time.Now, which a test may move
// while the operator runs.
type testClock struct{ ahead atomic.Int64 }

// setAhead moves the clock to d ahead of time.Now.
func (c *testClock) setAhead(d time.Duration) { c.ahead.Store(int64(d)) }

// now is the reconciler's clock: nil (time.Now) without a test clock.
func (c *testClock) now() func() time.Time {
	if c == nil {
		return nil
	}
	return func() time.Time { return time.Now().Add(time.Duration(c.ahead.Load())) }
}

func (o *operator) stop() {
	o.cancel()
	select {
	case <-o.done:
	case <-time.After(30 * time.Second):
	}
}

// grantRole gives the operator's ServiceAccount, in namespace, the Role
// generated from the RBAC markers for the Dapr namespace.
func grantRole(t *testing.T, namespace string) {
	t.Helper()
	g := NewWithT(t)
	operatorConfig(t) // the ServiceAccount exists
	root, err := cluster.RepoRoot()
	g.Expect(err).NotTo(HaveOccurred())
	data, err := os.ReadFile(filepath.Join(root, "config", "rbac", "role.yaml"))
	g.Expect(err).NotTo(HaveOccurred())
	var role *rbacv1.Role
	for _, doc := range strings.Split(string(data), "\n---\n") {
		r := &rbacv1.Role{}
		if err := yaml.Unmarshal([]byte(doc), r); err == nil && r.Kind == "Role" {
			role = r
		}
	}
	g.Expect(role).NotTo(BeNil(), "config/rbac/role.yaml holds a Role")
	role.Namespace, role.ResourceVersion = namespace, ""
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: role.Name, Namespace: namespace},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: operatorServiceAccount, Namespace: operatorNamespace}},
	}
	for _, obj := range []client.Object{role, binding} {
		if err := k8sClient.Create(t.Context(), obj); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("creating %T in %s: %v", obj, namespace, err)
		}
	}
}

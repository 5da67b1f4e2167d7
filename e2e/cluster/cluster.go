// Package cluster runs a real local Kubernetes control plane built from source:
// etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok with one
// fake node, the real cert-manager controllers, and Argo Rollouts' controller
// with its CRDs. Tests start one per suite;
// the localcluster command starts a detached one for 'make cluster-up'.
package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/mtls-rotator/mtls-rotator/internal/testenv"
)

// NodeName is the name of the kwok-managed fake node.
const NodeName = "kwok-node-0"

// StayUnreadyAnnotation on a pod keeps it Pending and unready on the kwok node,
// so that tests can make a rollout that never completes.
const StayUnreadyAnnotation = "kwok.mtls.rotator.dev/stay-unready"

// KeepRunningAnnotation on a Job's pod keeps it Running on the kwok node,
// as a long-running Job's pod, instead of completing it at once.
const KeepRunningAnnotation = "kwok.mtls.rotator.dev/keep-running"

// Options configure a local cluster.
type Options struct {
	// Dir holds the cluster's state: credentials, kubeconfig, etcd data, logs.
	Dir string
	// AssetsDir holds etcd, kube-apiserver, kube-controller-manager,
	// kube-scheduler, kwok, kwok-stages.yaml, and the Argo Rollouts
	// controller with its CRDs (hack/build-binaries.sh).
	AssetsDir string
	// CertManagerBinary is the cert-manager-controller program of this repository.
	CertManagerBinary string
	// CRDPaths are files or directories of CustomResourceDefinitions to install.
	CRDPaths []string
	// Detach starts the processes in their own sessions so that they outlive the
	// caller, and records them in Dir/state.json for StopDetached.
	Detach bool
	// Progress receives one line per step; nil discards them.
	Progress io.Writer
	// StartTimeout bounds the wait for each component; default 90s.
	StartTimeout time.Duration
}

// Cluster is a running local cluster.
type Cluster struct {
	// Kubeconfig is the path of an admin kubeconfig.
	Kubeconfig string
	// Config is the admin REST config.
	Config *rest.Config

	dir       string
	kubectl   string
	processes []*process
}

// Start brings a local cluster up and returns once every component is ready and
// the CRDs are established. On failure it stops what it started and returns an
// error carrying the log tail of the component that failed.
func Start(ctx context.Context, opts Options) (_ *Cluster, retErr error) {
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 90 * time.Second
	}
	progress := opts.Progress
	if progress == nil {
		progress = io.Discard
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, err
	}
	if s, err := readState(dir); err == nil {
		for _, p := range s.Processes {
			if p.alive() {
				return nil, fmt.Errorf("a local cluster is already running from %s (%s, pid %d, server %s); stop it first with 'make cluster-down'",
					dir, p.Name, p.PID, s.Server)
			}
		}
	}
	if err := checkAssets(opts); err != nil {
		return nil, err
	}
	if err := os.RemoveAll(dir); err != nil {
		return nil, fmt.Errorf("cleaning %s: %w", dir, err)
	}
	logDir := filepath.Join(dir, "logs")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return nil, err
	}

	c := &Cluster{dir: dir, Kubeconfig: filepath.Join(dir, "kubeconfig"), kubectl: filepath.Join(opts.AssetsDir, "kubectl")}
	defer func() {
		if retErr != nil {
			_ = c.Stop()
		}
	}()
	started := time.Now()
	step := func(format string, args ...any) {
		fmt.Fprintf(progress, "[local-cluster %5.1fs] %s\n", time.Since(started).Seconds(), fmt.Sprintf(format, args...))
	}

	p, err := writePKI(filepath.Join(dir, "pki"))
	if err != nil {
		return nil, err
	}
	ports, err := FreePorts(8)
	if err != nil {
		return nil, err
	}
	etcdClient, etcdPeer, apiPort, kcmPort, schedPort, kwokPort := ports[0], ports[1], ports[2], ports[3], ports[4], ports[5]
	argoMetricsPort, argoHealthPort := ports[6], ports[7]
	server := fmt.Sprintf("https://127.0.0.1:%d", apiPort)
	if err := writeKubeconfig(c.Kubeconfig, server, p); err != nil {
		return nil, err
	}
	if c.Config, err = clientcmd.BuildConfigFromFlags("", c.Kubeconfig); err != nil {
		return nil, fmt.Errorf("loading kubeconfig: %w", err)
	}
	c.Config.QPS, c.Config.Burst = 100, 200
	asset := func(name string) string { return filepath.Join(opts.AssetsDir, name) }
	record := func() error {
		if !opts.Detach {
			return nil
		}
		return writeState(dir, &state{Kubeconfig: c.Kubeconfig, Server: server, Processes: c.processes, StartedAt: started})
	}
	run := func(name, binary string, args ...string) (*process, error) {
		proc, err := startProcess(name, binary, args, logDir, opts.Detach)
		if err != nil {
			return nil, err
		}
		c.processes = append(c.processes, proc)
		return proc, record()
	}
	await := func(proc *process, what string, check func(context.Context) error) error {
		return waitReady(ctx, proc, what, opts.StartTimeout, check)
	}

	step("starting etcd on 127.0.0.1:%d", etcdClient)
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", etcdClient)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", etcdPeer)
	etcd, err := run("etcd", asset("etcd"),
		"--name=local", "--data-dir="+filepath.Join(dir, "etcd"),
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=local="+peerURL, "--unsafe-no-fsync=true", "--log-level=warn")
	if err != nil {
		return nil, err
	}
	if err := await(etcd, "etcd", httpCheck(etcdURL+"/health")); err != nil {
		return nil, err
	}

	step("starting kube-apiserver on %s", server)
	apiserver, err := run("kube-apiserver", asset("kube-apiserver"),
		fmt.Sprintf("--etcd-servers=%s", etcdURL),
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", apiPort),
		"--endpoint-reconciler-type=none", "--service-cluster-ip-range=10.0.0.0/24",
		"--client-ca-file="+p.caCert, "--tls-cert-file="+p.servingCert, "--tls-private-key-file="+p.servingKey,
		"--authorization-mode=RBAC", "--allow-privileged=true",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+p.serviceAcc, "--service-account-signing-key-file="+p.serviceAccountKey,
		"--cert-dir="+filepath.Join(dir, "apiserver"))
	if err != nil {
		return nil, err
	}
	kube, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		return nil, err
	}
	if err := await(apiserver, "kube-apiserver", func(ctx context.Context) error {
		body, err := kube.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err != nil {
			return fmt.Errorf("%w: %s", err, body)
		}
		return nil
	}); err != nil {
		return nil, err
	}

	componentKubeconfig := []string{"--kubeconfig=" + c.Kubeconfig, "--authentication-kubeconfig=" + c.Kubeconfig, "--authorization-kubeconfig=" + c.Kubeconfig}
	step("starting kube-controller-manager, kube-scheduler and kwok")
	kcm, err := run("kube-controller-manager", asset("kube-controller-manager"), append(componentKubeconfig,
		"--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", kcmPort), "--cert-dir="+filepath.Join(dir, "kcm"),
		"--leader-elect=false", "--controllers=*",
		// Sized so that the platform is not what a benchmark of thousands of
		// workloads measures: the defaults (20 requests/s, 5 Deployments and
		// ReplicaSets synced at once) took over 15 minutes to create the
		// ReplicaSets of 10,000 Deployments.
		"--kube-api-qps=200", "--kube-api-burst=400",
		"--concurrent-deployment-syncs=20", "--concurrent-replicaset-syncs=20", "--concurrent-statefulset-syncs=20",
		"--service-account-private-key-file="+p.serviceAccountKey, "--root-ca-file="+p.caCert,
		// Each controller acts as its own kube-system ServiceAccount, as in
		// any real cluster: Dapr's injector patches only pods whose creator
		// is one of them (or system:masters).
		"--use-service-account-credentials=true")...)
	if err != nil {
		return nil, err
	}
	scheduler, err := run("kube-scheduler", asset("kube-scheduler"), append(componentKubeconfig,
		"--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", schedPort), "--cert-dir="+filepath.Join(dir, "scheduler"),
		"--leader-elect=false")...)
	if err != nil {
		return nil, err
	}
	kwokURL := fmt.Sprintf("127.0.0.1:%d", kwokPort)
	kwokConfig := filepath.Join(dir, "kwok-stages.yaml")
	if err := writeKwokStages(asset("kwok-stages.yaml"), kwokConfig); err != nil {
		return nil, err
	}
	kwok, err := run("kwok", asset("kwok"),
		"--kubeconfig="+c.Kubeconfig, "--config="+kwokConfig, "--manage-all-nodes=true",
		"--server-address="+kwokURL, "--node-ip=127.0.0.1", "--cidr=10.244.0.0/16", "--node-lease-duration-seconds=40")
	if err != nil {
		return nil, err
	}

	step("installing CustomResourceDefinitions")
	if _, err := envtest.InstallCRDs(c.Config, envtest.CRDInstallOptions{
		Paths: append(slices.Clone(opts.CRDPaths), asset("argo-rollouts-crds")), ErrorIfPathMissing: true, MaxTime: opts.StartTimeout,
	}); err != nil {
		return nil, fmt.Errorf("installing CRDs: %w", err)
	}
	for _, ns := range []string{"cert-manager", "argo-rollouts"} {
		if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return nil, fmt.Errorf("creating namespace %s: %w", ns, err)
		}
	}
	if err := createFakeNode(ctx, kube); err != nil {
		return nil, err
	}

	step("starting cert-manager controllers")
	readyFile := filepath.Join(dir, "cert-manager.ready")
	certManager, err := run("cert-manager", opts.CertManagerBinary,
		"--kubeconfig="+c.Kubeconfig, "--ready-file="+readyFile, "--cluster-resource-namespace=cert-manager")
	if err != nil {
		return nil, err
	}

	step("starting the Argo Rollouts controller")
	argo, err := run("argo-rollouts", asset("argo-rollouts-controller"),
		"--kubeconfig="+c.Kubeconfig, "--leader-elect=false", "--loglevel=warn",
		fmt.Sprintf("--metricsPort=%d", argoMetricsPort), fmt.Sprintf("--healthzPort=%d", argoHealthPort))
	if err != nil {
		return nil, err
	}

	step("waiting for the components to be ready")
	if err := await(kcm, "kube-controller-manager", httpCheck(fmt.Sprintf("https://127.0.0.1:%d/healthz", kcmPort))); err != nil {
		return nil, err
	}
	if err := await(scheduler, "kube-scheduler", httpCheck(fmt.Sprintf("https://127.0.0.1:%d/healthz", schedPort))); err != nil {
		return nil, err
	}
	if err := await(kwok, "kwok", httpCheck("http://"+kwokURL+"/healthz")); err != nil {
		return nil, err
	}
	if err := await(kwok, "the fake node to be Ready", func(ctx context.Context) error {
		node, err := kube.CoreV1().Nodes().Get(ctx, NodeName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, cond := range node.Status.Conditions {
			if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
				return nil
			}
		}
		return errors.New("node is not Ready")
	}); err != nil {
		return nil, err
	}
	if err := await(kcm, "the default ServiceAccount", func(ctx context.Context) error {
		_, err := kube.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err
	}); err != nil {
		return nil, err
	}
	if err := await(certManager, "cert-manager", func(context.Context) error {
		_, err := os.Stat(readyFile)
		return err
	}); err != nil {
		return nil, err
	}
	if err := await(argo, "the Argo Rollouts controller", httpCheck(fmt.Sprintf("http://127.0.0.1:%d/healthz", argoHealthPort))); err != nil {
		return nil, err
	}
	step("cluster ready; kubeconfig %s", c.Kubeconfig)
	return c, nil
}

// Stop stops every process of the cluster, last started first.
func (c *Cluster) Stop() error {
	var errs []error
	for i := len(c.processes) - 1; i >= 0; i-- {
		if err := c.processes[i].stop(15 * time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Cleanup stops the cluster and removes its state directory.
func (c *Cluster) Cleanup() error {
	if err := c.Stop(); err != nil {
		return err
	}
	return os.RemoveAll(c.dir)
}

// Kubectl runs the kubectl built with the cluster against it, returning its
// combined output.
func (c *Cluster) Kubectl(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, c.kubectl, append([]string{"--kubeconfig=" + c.Kubeconfig}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// LogTails returns the last lines of every component's log, for failure reports.
func (c *Cluster) LogTails(lines int) string {
	var b strings.Builder
	for _, p := range c.processes {
		fmt.Fprintf(&b, "===== %s (%s) =====\n%s\n", p.Name, p.LogFile, p.logTail(lines))
	}
	return b.String()
}

// StopDetached stops the processes that a detached Start recorded in dir, and
// removes dir. Processes whose PID now belongs to another program are left alone.
func StopDetached(dir string, out io.Writer) error {
	s, err := readState(dir)
	if errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(out, "no local cluster recorded in %s\n", dir)
		return os.RemoveAll(dir)
	}
	if err != nil {
		return err
	}
	var errs []error
	for i := len(s.Processes) - 1; i >= 0; i-- {
		p := s.Processes[i]
		if !p.alive() {
			fmt.Fprintf(out, "%s (pid %d) is not running\n", p.Name, p.PID)
			continue
		}
		if err := p.stop(15 * time.Second); err != nil {
			errs = append(errs, err)
			continue
		}
		fmt.Fprintf(out, "stopped %s (pid %d)\n", p.Name, p.PID)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return os.RemoveAll(dir)
}

// writeKwokStages copies kwok's Stage configs, making the pod-ready stage skip
// pods annotated with StayUnreadyAnnotation.
func writeKwokStages(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("reading kwok stages: %w", err)
	}
	docs := strings.Split(string(data), "\n---\n")
	for stage, annotation := range map[string]string{"pod-ready": StayUnreadyAnnotation, "pod-complete": KeepRunningAnnotation} {
		if err := excludeAnnotated(docs, stage, annotation); err != nil {
			return fmt.Errorf("kwok stages in %s: %w", src, err)
		}
	}
	return os.WriteFile(dst, []byte(strings.Join(docs, "\n---\n")), 0o644)
}

// excludeAnnotated keeps the kwok stage named stage from applying to pods
// carrying annotation.
func excludeAnnotated(docs []string, stage, annotation string) error {
	const anchor = "    matchExpressions:\n"
	for i, doc := range docs {
		if strings.Contains(doc, "name: "+stage+"\n") && strings.Contains(doc, anchor) {
			docs[i] = strings.Replace(doc, anchor, anchor+
				"    - key: '.metadata.annotations[\""+annotation+"\"]'\n      operator: 'DoesNotExist'\n", 1)
			return nil
		}
	}
	return fmt.Errorf("no %s selector to extend", stage)
}

func checkAssets(opts Options) error {
	var missing []string
	for _, name := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "kwok-stages.yaml",
		"argo-rollouts-controller", "argo-rollouts-crds"} {
		if _, err := os.Stat(filepath.Join(opts.AssetsDir, name)); err != nil {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing %s in %s: run 'make binaries' (hack/build-binaries.sh) first", strings.Join(missing, ", "), opts.AssetsDir)
	}
	if _, err := os.Stat(opts.CertManagerBinary); err != nil {
		return fmt.Errorf("missing the cert-manager controller program %q: %w", opts.CertManagerBinary, err)
	}
	return nil
}

// waitReady polls check until it succeeds, the process exits, or the timeout
// passes; failures carry the process's log tail.
func waitReady(ctx context.Context, p *process, what string, timeout time.Duration, check func(context.Context) error) error {
	var last error
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		if !p.alive() {
			return false, fmt.Errorf("%s exited", p.Name)
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		last = check(cctx)
		return last == nil, nil
	})
	if err != nil {
		if last != nil {
			err = fmt.Errorf("%w (last check: %v)", err, last)
		}
		return fmt.Errorf("waiting for %s: %w\n----- last lines of %s -----\n%s", what, err, p.LogFile, p.logTail(40))
	}
	return nil
}

// httpCheck probes a health endpoint; serving certificates of the components
// are self-signed, and the probe carries no credentials.
func httpCheck(url string) func(context.Context) error {
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // local health probe
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
			return fmt.Errorf("%s: %s: %s", url, resp.Status, body)
		}
		return nil
	}
}

// nodePods is how many pods the fake node takes: enough for a benchmark of
// thousands of applications (kwok runs no containers; a pod costs only what
// the API server and etcd keep of it).
const nodePods = "20000"

func createFakeNode(ctx context.Context, kube kubernetes.Interface) error {
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:        NodeName,
			Annotations: map[string]string{"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
			Labels:      map[string]string{"type": "kwok", "kubernetes.io/hostname": NodeName, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"},
		},
		Status: corev1.NodeStatus{
			Capacity: corev1.ResourceList{
				corev1.ResourceCPU: resource.MustParse("1000"), corev1.ResourceMemory: resource.MustParse("4Ti"), corev1.ResourcePods: resource.MustParse(nodePods),
			},
			Allocatable: corev1.ResourceList{
				corev1.ResourceCPU: resource.MustParse("1000"), corev1.ResourceMemory: resource.MustParse("4Ti"), corev1.ResourcePods: resource.MustParse(nodePods),
			},
		},
	}
	if _, err := kube.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating fake node: %w", err)
	}
	return nil
}

// RepoRoot finds the repository root above the working directory.
func RepoRoot() (string, error) { return testenv.RepoRoot() }

// DefaultOptions are the options a test or the localcluster command uses inside
// this repository: binaries from bin/k8s/assets (or KUBEBUILDER_ASSETS), the
// cert-manager CRDs from the module cache and ours from config/crd/bases. The
// cert-manager controller program is built into binDir when not present.
func DefaultOptions(ctx context.Context, root, dir string) (Options, error) {
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		assets = filepath.Join(root, "bin", "k8s", "assets")
	}
	cmDir, err := goList(ctx, root, "list", "-m", "-f", "{{.Dir}}", "github.com/cert-manager/cert-manager")
	if err != nil {
		return Options{}, err
	}
	certManager := os.Getenv("CERT_MANAGER_CONTROLLER")
	if certManager == "" {
		certManager = filepath.Join(root, "bin", "cert-manager-controller")
		if _, err := goList(ctx, root, "build", "-o", certManager, "./e2e/cmd/cert-manager-controller"); err != nil {
			return Options{}, err
		}
	}
	return Options{
		Dir:               dir,
		AssetsDir:         assets,
		CertManagerBinary: certManager,
		CRDPaths: []string{
			filepath.Join(cmDir, "deploy", "crds"), filepath.Join(root, "config", "crd", "bases"),
			filepath.Join(root, "e2e", "fixture", "crds"),
		},
	}, nil
}

func goList(ctx context.Context, root string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

// StartDetachedProcess starts one more process beside a detached cluster in dir
// (the fixture's injector, the operator), records it so that StopDetached
// stops it too, and waits until ready succeeds.
func StartDetachedProcess(ctx context.Context, dir, name, binary string, args []string, ready func(context.Context) error) error {
	s, err := readState(dir)
	if err != nil {
		return fmt.Errorf("no local cluster is running in %s (%w); run 'make cluster-up' first", dir, err)
	}
	for _, p := range s.Processes {
		if p.Name == name && p.alive() {
			return fmt.Errorf("%s is already running (pid %d)", name, p.PID)
		}
	}
	p, err := startProcess(name, binary, args, filepath.Join(dir, "logs"), true)
	if err != nil {
		return err
	}
	s.Processes = append(s.Processes, p)
	if err := writeState(dir, s); err != nil {
		_ = p.stop(5 * time.Second)
		return err
	}
	return waitReady(ctx, p, name, 60*time.Second, ready)
}

// DetachedPID is the process id of the live process called name (as
// StartDetachedProcess or Start recorded it) of the detached cluster in dir.
func DetachedPID(dir, name string) (int, error) {
	s, err := readState(dir)
	if err != nil {
		return 0, err
	}
	for _, p := range s.Processes {
		if p.Name == name && p.alive() {
			return p.PID, nil
		}
	}
	return 0, fmt.Errorf("no process %s is running in %s", name, dir)
}

// FileExists is a readiness check for a process that writes a file when ready.
func FileExists(path string) func(context.Context) error {
	return func(context.Context) error {
		_, err := os.Stat(path)
		return err
	}
}

// HTTPReady is a readiness check for a process serving a health endpoint.
func HTTPReady(url string) func(context.Context) error { return httpCheck(url) }

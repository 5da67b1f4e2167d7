// Command localcluster runs the local Kubernetes cluster of the e2e package from
// the command line ('make cluster-up', 'make cluster-down', 'make fixture').
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/mtls-rotator/mtls-rotator/e2e/cluster"
	"github.com/mtls-rotator/mtls-rotator/e2e/fixture"
)

const usage = `usage: localcluster [--dir DIR] COMMAND [flags]

Commands:
  up        start etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
            kwok and cert-manager in the background; return when ready
  down      stop exactly the processes 'up' (and 'fixture') started, remove DIR
  fixture   start the Dapr sidecar injector stand-in and install the Dapr fixture;
            with --real-dapr, Dapr's own Sentry and injector run it instead, and
            a sidecar on Dapr's mTLS code for each application pod calls the
            others (counts in DIR/calls.txt)
  injector  serve the injector webhook in the foreground (used by 'fixture')
  dapr      run Dapr's own control plane and the sidecars in the foreground
            (used by 'fixture --real-dapr')
  operator  run the operator binary (--binary) in the background under its own
            ServiceAccount, bound to the ClusterRole generated from RBAC markers
`

func main() {
	fs := flag.NewFlagSet("localcluster", flag.ContinueOnError)
	dir := fs.String("dir", "bin/local", "state directory of the local cluster")
	fs.Usage = func() { fmt.Fprint(os.Stderr, usage); fs.PrintDefaults() }
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if fs.NArg() < 1 {
		fs.Usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	var err error
	switch cmd, args := fs.Arg(0), fs.Args()[1:]; cmd {
	case "up":
		err = up(ctx, *dir)
	case "down":
		err = cluster.StopDetached(*dir, os.Stdout)
	case "fixture":
		err = installFixture(ctx, *dir, args)
	case "injector":
		err = serveInjector(ctx, args)
	case "dapr":
		err = serveDapr(ctx, args)
	case "operator":
		err = runOperator(ctx, *dir, args)
	default:
		fmt.Fprintf(os.Stderr, "localcluster: unknown command %q\n", cmd)
		fs.Usage()
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "localcluster: %v\n", err)
		os.Exit(1)
	}
}

func up(ctx context.Context, dir string) error {
	root, err := cluster.RepoRoot()
	if err != nil {
		return err
	}
	opts, err := cluster.DefaultOptions(ctx, root, dir)
	if err != nil {
		return err
	}
	opts.Detach = true
	opts.Progress = os.Stdout
	c, err := cluster.Start(ctx, opts)
	if err != nil {
		return err
	}
	fmt.Printf("local cluster is up; try: kubectl --kubeconfig %s get nodes\nstop it with: make cluster-down\n", c.Kubeconfig)
	return nil
}

func newClient(kubeconfig string) (client.Client, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("loading %s: %w", kubeconfig, err)
	}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, err
	}
	return client.New(cfg, client.Options{Scheme: scheme})
}

func installFixture(ctx context.Context, dir string, args []string) error {
	fs := flag.NewFlagSet("fixture", flag.ContinueOnError)
	apps := fs.Int("apps", 10, "number of application Deployments (every second one is Dapr-enabled)")
	daprOnly := fs.Bool("dapr-only", false, "make every application Dapr-enabled")
	replicas := fs.Int("replicas", 2, "replicas of each application")
	namespaces := fs.String("namespaces", "apps-a,apps-b,apps-c", "comma-separated namespaces the applications are spread over")
	timeout := fs.Duration("timeout", 2*time.Minute, "how long to wait for the fixture to roll out")
	realDapr := fs.Bool("real-dapr", false, "run Dapr's own Sentry and injector (bin/dapr, or DAPR_BIN) and sidecars on its mTLS code")
	if err := fs.Parse(args); err != nil {
		return err
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	kubeconfig := filepath.Join(dir, "kubeconfig")
	self, err := os.Executable()
	if err != nil {
		return err
	}
	daprReady := filepath.Join(dir, "dapr-apps.ready")
	if *realDapr {
		err = startDetached(ctx, dir, "dapr", self, "dapr", "--kubeconfig="+kubeconfig, "--state="+filepath.Join(dir, "dapr"),
			"--dapr-ready-file="+daprReady, "--calls-file="+filepath.Join(dir, "calls.txt"))
	} else {
		err = startDetached(ctx, dir, "dapr-injector", self, "injector", "--kubeconfig="+kubeconfig)
	}
	if err != nil {
		return err
	}
	c, err := newClient(kubeconfig)
	if err != nil {
		return err
	}
	opts := fixture.Options{Apps: *apps, DaprOnly: *daprOnly, AppReplicas: int32(*replicas), AppNamespaces: strings.Split(*namespaces, ",")}
	fmt.Printf("installing the Dapr control plane fixture and %d applications\n", *apps)
	if err := fixture.Install(ctx, c, opts); err != nil {
		return err
	}
	waitCtx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	if err := fixture.WaitRolledOut(waitCtx, c, opts); err != nil {
		return err
	}
	if *realDapr {
		fmt.Println("waiting for the applications to run on Dapr's own injector and sidecars")
		daprCtx, cancel := context.WithTimeout(ctx, *timeout)
		defer cancel()
		if err := wait.PollUntilContextCancel(daprCtx, time.Second, true, func(ctx context.Context) (bool, error) {
			return cluster.FileExists(daprReady)(ctx) == nil, nil
		}); err != nil {
			return fmt.Errorf("Dapr did not come up (see %s): %w", filepath.Join(dir, "logs"), err)
		}
		if err := fixture.WaitRolledOut(daprCtx, c, opts); err != nil {
			return err
		}
	}
	fmt.Println("Dapr fixture is ready")
	return nil
}

// startDetached starts this program's command in the background as name,
// unless it runs already (a second 'fixture', for more applications, keeps
// it), and waits for its ready file.
func startDetached(ctx context.Context, dir, name, self, command string, args ...string) error {
	if _, notRunning := cluster.DetachedPID(dir, name); notRunning == nil {
		return nil
	}
	readyFile := filepath.Join(dir, name+".ready")
	_ = os.Remove(readyFile)
	fmt.Printf("starting %s\n", name)
	return cluster.StartDetachedProcess(ctx, dir, name, self, append([]string{command, "--ready-file=" + readyFile}, args...), cluster.FileExists(readyFile))
}

func serveInjector(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("injector", flag.ContinueOnError)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig of the cluster")
	readyFile := fs.String("ready-file", "", "file written once the webhook is registered")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c, err := newClient(*kubeconfig)
	if err != nil {
		return err
	}
	inj := &fixture.Injector{Client: c}
	if err := inj.Start(ctx, c); err != nil {
		return err
	}
	fmt.Printf("injector webhook serving at %s\n", inj.URL())
	if *readyFile != "" {
		if err := os.WriteFile(*readyFile, []byte(inj.URL()+"\n"), 0o644); err != nil {
			return err
		}
	}
	<-ctx.Done()
	return nil
}

// Command mtls-rotator runs the mtls-rotator operator.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strconv"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"github.com/fluxcd/pkg/runtime/events"
	"github.com/fluxcd/pkg/runtime/leaderelection"
	"github.com/fluxcd/pkg/runtime/logger"
	"github.com/fluxcd/pkg/runtime/probes"
	"github.com/go-logr/logr"
	flag "github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/controllers"
	"github.com/mtls-rotator/mtls-rotator/internal/cli"
)

var scheme = runtime.NewScheme()

func init() {
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(cmapi.AddToScheme(scheme))
	utilruntime.Must(rotatorv1.AddToScheme(scheme))
}

// options are the operator's command-line settings.
type options struct {
	metricsAddr        string
	healthAddr         string
	leaderElectionNS   string
	namespaces         []string
	pollInterval       time.Duration
	qps                float32
	burst              int
	logOptions         logger.Options
	leaderElectionOpts leaderelection.Options
}

// parseFlags parses the operator's flags; the manifests' args are checked
// against it in tests.
func parseFlags(args []string, errOut io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("mtls-rotator", flag.ContinueOnError)
	fs.SetOutput(errOut)
	fs.StringVar(&o.metricsAddr, "metrics-addr", ":8080", "The address the metrics endpoint binds to; 0 disables it.")
	fs.StringVar(&o.healthAddr, "health-addr", ":9440", "The address the health and readiness probes bind to.")
	fs.StringSliceVar(&o.namespaces, "namespaces", []string{"dapr-system"},
		"The Dapr control-plane namespaces to manage: MTLSRootRotations, Secrets and ConfigMaps are watched only there.")
	fs.DurationVar(&o.pollInterval, "poll-interval", 2*time.Second,
		"How often a rotation waiting on rollouts or issuance looks again; watches wake it sooner, so this is only a safety net.")
	fs.StringVar(&o.leaderElectionNS, "leader-election-namespace", "",
		"Namespace of the leader election Lease; defaults to the namespace the operator runs in.")
	// The flags of Flux's runtime/client, bound here: that package brings
	// kubectl and kustomize into the binary, a third of its mapped size.
	fs.Float32Var(&o.qps, "kube-api-qps", 50, "The most queries per second to the Kubernetes API.")
	fs.IntVar(&o.burst, "kube-api-burst", 300, "The most queries at once to the Kubernetes API.")
	o.logOptions.BindFlags(fs)
	o.leaderElectionOpts.BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q (subcommands: certs, status, help)", fs.Arg(0))
	}
	return o, nil
}

func main() {
	if cli.IsSubcommand(os.Args[1:]) {
		os.Exit(cli.Run(os.Args[1:], os.Stdout, os.Stderr))
	}
	o, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "mtls-rotator: %v\n", err)
		os.Exit(2)
	}

	log := logger.NewLogger(o.logOptions)
	ctrl.SetLogger(log)
	setupLog := log.WithName("setup")
	if limit, ok := memoryLimit(os.Getenv); ok {
		debug.SetMemoryLimit(limit)
		setupLog.Info("Go memory limit set from the container's", "bytes", limit)
	}

	if err := run(setupLog, o); err != nil {
		setupLog.Error(err, "unable to run the operator")
		os.Exit(1)
	}
}

func run(log logr.Logger, o *options) error {
	le := o.leaderElectionOpts
	restConfig, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("loading the Kubernetes client configuration: %w", err)
	}
	restConfig.QPS, restConfig.Burst = o.qps, o.burst
	if err := requireCertManager(restConfig); err != nil {
		return err
	}
	rollouts, err := controllers.RolloutsInstalled(restConfig)
	if err != nil {
		return err
	}
	log.Info("Argo Rollouts", "installed", rollouts)
	cacheOptions, err := controllers.CacheOptions(o.namespaces, rollouts)
	if err != nil {
		return err
	}
	mgr, err := ctrl.NewManager(restConfig, ctrl.Options{
		Scheme:                        scheme,
		Cache:                         cacheOptions,
		Client:                        controllers.ClientOptions(),
		Metrics:                       metricsserver.Options{BindAddress: o.metricsAddr},
		HealthProbeBindAddress:        o.healthAddr,
		LeaderElection:                le.Enable,
		LeaderElectionID:              leaderelection.GenerateID(controllers.ControllerName + "-leader-election"),
		LeaderElectionNamespace:       o.leaderElectionNS,
		LeaderElectionReleaseOnCancel: le.ReleaseOnCancel,
		LeaseDuration:                 &le.LeaseDuration,
		RenewDeadline:                 &le.RenewDeadline,
		RetryPeriod:                   &le.RetryPeriod,
	})
	if err != nil {
		return fmt.Errorf("creating manager: %w", err)
	}
	probes.SetupChecks(mgr, log)

	recorder, err := events.NewRecorder(log, "", controllers.ControllerName, events.WithManager(mgr))
	if err != nil {
		return fmt.Errorf("creating event recorder: %w", err)
	}
	metrics := controllers.NewMetrics(mgr.GetScheme(), mgr.GetClient())
	for _, c := range metrics.Collectors() {
		if err := ctrlmetrics.Registry.Register(c); err != nil {
			return fmt.Errorf("registering metrics: %w", err)
		}
	}
	if err := (&controllers.MTLSRootRotationReconciler{
		Client:        mgr.GetClient(),
		APIReader:     mgr.GetAPIReader(),
		EventRecorder: recorder,
		Metrics:       metrics,
		Rollouts:      rollouts,
		PollInterval:  o.pollInterval,
	}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up the %s controller: %w", rotatorv1.MTLSRootRotationKind, err)
	}

	log.Info("starting manager")
	if err := mgr.Start(ctrl.SetupSignalHandler()); err != nil {
		return fmt.Errorf("running manager: %w", err)
	}
	return nil
}

// requireCertManager says plainly, at start, that cert-manager is missing,
// rather than letting the manager fail on its informers.
func requireCertManager(cfg *rest.Config) error {
	for _, kind := range []string{"Certificate", "Issuer"} {
		served, err := controllers.Served(cfg, cmapi.SchemeGroupVersion.WithKind(kind))
		if err != nil {
			return err
		}
		if !served {
			return fmt.Errorf("cert-manager is not installed: the API server does not serve %s %s; install cert-manager (its CRDs and controllers) first, then restart the operator",
				cmapi.SchemeGroupVersion, kind)
		}
	}
	return nil
}

// memoryLimit is the Go memory limit to set: 90% of the container's memory
// limit (MEMORY_LIMIT, in bytes, from the downward API), leaving room for
// what the Go runtime does not count; none when GOMEMLIMIT is set or
// MEMORY_LIMIT is not a number of bytes. (Without a container limit the
// downward API gives the node's allocatable memory: a loose bound, harmless.)
func memoryLimit(getenv func(string) string) (int64, bool) {
	if getenv("GOMEMLIMIT") != "" {
		return 0, false
	}
	limit, err := strconv.ParseInt(getenv("MEMORY_LIMIT"), 10, 64)
	if err != nil || limit <= 0 {
		return 0, false
	}
	return limit / 10 * 9, true
}

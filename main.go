// Command mtls-rotator runs the mtls-rotator operator.
package main

import (
	"fmt"
	"os"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"github.com/fluxcd/pkg/runtime/client"
	"github.com/fluxcd/pkg/runtime/events"
	"github.com/fluxcd/pkg/runtime/leaderelection"
	"github.com/fluxcd/pkg/runtime/logger"
	"github.com/fluxcd/pkg/runtime/probes"
	"github.com/go-logr/logr"
	flag "github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/controllers"
)

var scheme = runtime.NewScheme()

func init() {
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(cmapi.AddToScheme(scheme))
	utilruntime.Must(rotatorv1.AddToScheme(scheme))
}

func main() {
	var (
		metricsAddr        string
		healthAddr         string
		leaderElectionNS   string
		namespaces         []string
		clientOptions      client.Options
		logOptions         logger.Options
		leaderElectionOpts leaderelection.Options
	)
	flag.StringVar(&metricsAddr, "metrics-addr", ":8080", "The address the metrics endpoint binds to; 0 disables it.")
	flag.StringVar(&healthAddr, "health-addr", ":9440", "The address the health and readiness probes bind to.")
	flag.StringSliceVar(&namespaces, "namespaces", []string{"dapr-system"},
		"The Dapr control-plane namespaces to manage: MTLSRootRotations, Secrets and ConfigMaps are watched only there.")
	flag.StringVar(&leaderElectionNS, "leader-election-namespace", "",
		"Namespace of the leader election Lease; defaults to the namespace the operator runs in.")
	clientOptions.BindFlags(flag.CommandLine)
	logOptions.BindFlags(flag.CommandLine)
	leaderElectionOpts.BindFlags(flag.CommandLine)
	flag.Parse()

	log := logger.NewLogger(logOptions)
	ctrl.SetLogger(log)
	setupLog := log.WithName("setup")

	if err := run(setupLog, metricsAddr, healthAddr, leaderElectionNS, namespaces, clientOptions, leaderElectionOpts); err != nil {
		setupLog.Error(err, "unable to run the operator")
		os.Exit(1)
	}
}

func run(log logr.Logger, metricsAddr, healthAddr, leaderElectionNS string, namespaces []string,
	clientOptions client.Options, le leaderelection.Options) error {
	restConfig := client.GetConfigOrDie(clientOptions)
	cacheOptions, err := controllers.CacheOptions(namespaces)
	if err != nil {
		return err
	}
	mgr, err := ctrl.NewManager(restConfig, ctrl.Options{
		Scheme:                        scheme,
		Cache:                         cacheOptions,
		Metrics:                       metricsserver.Options{BindAddress: metricsAddr},
		HealthProbeBindAddress:        healthAddr,
		LeaderElection:                le.Enable,
		LeaderElectionID:              leaderelection.GenerateID(controllers.ControllerName + "-leader-election"),
		LeaderElectionNamespace:       leaderElectionNS,
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
	}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up the %s controller: %w", rotatorv1.MTLSRootRotationKind, err)
	}

	log.Info("starting manager")
	if err := mgr.Start(ctrl.SetupSignalHandler()); err != nil {
		return fmt.Errorf("running manager: %w", err)
	}
	return nil
}

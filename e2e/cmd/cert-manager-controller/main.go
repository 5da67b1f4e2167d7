// Command cert-manager-controller runs the real cert-manager controllers that
// mtls-rotator relies on (Issuers, ClusterIssuers, Certificates, and the
// SelfSigned and CA signers), built from the cert-manager module. It stands in
// for cert-manager's controller image on the local cluster, which has no
// container runtime.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"sync"
	"syscall"
	"time"

	controllerpkg "github.com/cert-manager/cert-manager/pkg/controller"
	logf "github.com/cert-manager/cert-manager/pkg/logs"
	"k8s.io/klog/v2"

	// Controllers register themselves with controllerpkg on import.
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/approver"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/ca"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/selfsigned"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/issuing"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/keymanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/readiness"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/requestmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/revisionmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/trigger"
	_ "github.com/cert-manager/cert-manager/pkg/controller/clusterissuers"
	_ "github.com/cert-manager/cert-manager/pkg/controller/issuers"
	// Issuer implementations register themselves with the issuer factory on import.
	_ "github.com/cert-manager/cert-manager/pkg/issuer/ca"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/selfsigned"
)

func main() {
	var (
		kubeconfig       string
		clusterNamespace string
		readyFile        string
		workers          int
	)
	flag.StringVar(&kubeconfig, "kubeconfig", "", "path to the kubeconfig of the cluster to manage")
	flag.StringVar(&clusterNamespace, "cluster-resource-namespace", "cert-manager",
		"namespace holding the Secrets that ClusterIssuers refer to")
	flag.StringVar(&readyFile, "ready-file", "", "file written once every controller's cache has synced")
	flag.IntVar(&workers, "workers", 2, "workers per controller")
	klogFlags := flag.NewFlagSet("klog", flag.ExitOnError)
	klog.InitFlags(klogFlags)
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ctx = logf.NewContext(ctx, klog.Background(), "cert-manager-controller")

	if err := run(ctx, kubeconfig, clusterNamespace, readyFile, workers); err != nil {
		fmt.Fprintf(os.Stderr, "cert-manager-controller: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, kubeconfig, clusterNamespace, readyFile string, workers int) error {
	if kubeconfig == "" {
		return errors.New("--kubeconfig is required")
	}
	factory, err := controllerpkg.NewContextFactory(ctx, controllerpkg.ContextOptions{
		Kubeconfig:         kubeconfig,
		KubernetesAPIQPS:   50,
		KubernetesAPIBurst: 100,
		IssuerOptions: controllerpkg.IssuerOptions{
			ClusterResourceNamespace: clusterNamespace,
		},
		CertificateOptions: controllerpkg.CertificateOptions{
			// Short back-off: on a test cluster a failed request is retried promptly.
			CertificateRequestMinimumBackoffDuration: 5 * time.Second,
			CertificateRequestMaximumBackoffDuration: time.Minute,
		},
	})
	if err != nil {
		return fmt.Errorf("building controller context: %w", err)
	}

	known := controllerpkg.Known()
	names := make([]string, 0, len(known))
	for name := range known {
		names = append(names, name)
	}
	slices.Sort(names)

	ctrls := make(map[string]controllerpkg.Interface, len(names))
	for _, name := range names {
		c, err := known[name](factory)
		if err != nil {
			return fmt.Errorf("constructing controller %q: %w", name, err)
		}
		ctrls[name] = c
	}

	// The controllers only register their informers; nothing happens until the
	// shared factories are started.
	shared, err := factory.Build("informers")
	if err != nil {
		return fmt.Errorf("building informer context: %w", err)
	}
	shared.KubeSharedInformerFactory.Start(ctx.Done())
	shared.SharedInformerFactory.Start(ctx.Done())
	shared.HTTP01ResourceMetadataInformersFactory.Start(ctx.Done())

	var wg sync.WaitGroup
	errs := make(chan error, len(ctrls))
	for name, c := range ctrls {
		wg.Go(func() {
			if err := c.Run(workers, ctx); err != nil {
				errs <- fmt.Errorf("controller %q: %w", name, err)
			}
		})
	}

	for typ, ok := range shared.SharedInformerFactory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("cache for %v did not sync", typ)
		}
	}
	klog.InfoS("cert-manager controllers started", "controllers", names)
	if readyFile != "" {
		if err := os.WriteFile(readyFile, []byte("ready\n"), 0o644); err != nil {
			return fmt.Errorf("writing ready file: %w", err)
		}
	}

	select {
	case <-ctx.Done():
	case err := <-errs:
		return err
	}
	wg.Wait()
	return nil
}

package e2e

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/e2e/cluster"
	"github.com/mtls-rotator/mtls-rotator/e2e/fixture"
)

// The suite shares one local cluster with the Dapr fixture installed.
var (
	testCluster  *cluster.Cluster
	k8sClient    client.Client
	testInjector *fixture.Injector
	fixtureOpts  = fixture.Options{Apps: 6}
)

func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	// Each operator gets its own logger, which a failing test prints; what
	// controller-runtime logs outside one is dropped, as before, without
	// its "SetLogger was never called" stack dump.
	ctrllog.SetLogger(logr.Discard())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	root, err := cluster.RepoRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	dir, err := os.MkdirTemp("", "mtls-rotator-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	opts, err := cluster.DefaultOptions(ctx, root, dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	opts.Progress = os.Stdout
	testCluster, err = cluster.Start(ctx, opts)
	if err != nil {
		fmt.Fprintf(os.Stderr, "starting the local cluster: %v\n", err)
		return 1
	}
	defer func() {
		if err := testCluster.Cleanup(); err != nil {
			fmt.Fprintf(os.Stderr, "stopping the local cluster: %v\n", err)
		}
	}()

	code := func() int {
		scheme := runtime.NewScheme()
		for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, cmapi.AddToScheme, rotatorv1.AddToScheme} {
			if err := add(scheme); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
		}
		if k8sClient, err = client.New(testCluster.Config, client.Options{Scheme: scheme}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		testInjector = &fixture.Injector{Client: k8sClient}
		if err := testInjector.Start(ctx, k8sClient); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if err := fixture.Install(ctx, k8sClient, fixtureOpts); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		waitCtx, cancelWait := context.WithTimeout(ctx, 2*time.Minute)
		defer cancelWait()
		if err := fixture.WaitRolledOut(waitCtx, k8sClient, fixtureOpts); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return m.Run()
	}()
	if code != 0 {
		fmt.Fprintf(os.Stderr, "\nlocal cluster logs (last lines of each component):\n%s", testCluster.LogTails(60))
	}
	return code
}

package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/mtls-rotator/mtls-rotator/e2e/dapr"
	"github.com/mtls-rotator/mtls-rotator/e2e/fixture"
)

// demoMTLS: SVIDs that live a minute, so that the demo's sidecars renew
// theirs during each rotation.
var demoMTLS = dapr.MTLS{WorkloadCertTTL: time.Minute, AllowedClockSkew: 5 * time.Second}

// serveDapr runs, in the foreground, what 'fixture --real-dapr' starts in
// the background: the injector stand-in, stepped aside (it only holds new
// pods unready until their process serves), then Dapr's own Sentry and
// injector for the fixture's control plane once its pods exist, then the
// Dapr applications redeployed so that Dapr's injector patches them, with a
// sidecar on Dapr's pkg/security for each of their pods calling all the
// others. The calls are counted into --calls-file every two seconds.
func serveDapr(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("dapr", flag.ContinueOnError)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig of the cluster")
	state := fs.String("state", "", "directory for Dapr's processes")
	readyFile := fs.String("ready-file", "", "file written once the stand-in's webhook is registered")
	daprReadyFile := fs.String("dapr-ready-file", "", "file written once the applications run on Dapr's injector")
	callsFile := fs.String("calls-file", "", "file the call counts are written to")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c, err := newClient(*kubeconfig)
	if err != nil {
		return err
	}
	standIn := &fixture.Injector{Client: c}
	if err := standIn.Start(ctx, c); err != nil {
		return err
	}
	standIn.StepAside(true)
	ns := fixture.ControlPlaneNamespace
	for _, app := range []string{fixture.Sentry, fixture.SidecarInjector} {
		standIn.HoldUnready(ns, app)
	}
	if err := os.WriteFile(*readyFile, nil, 0o644); err != nil {
		return err
	}

	if err := waitForPods(ctx, c, ns, fixture.Sentry, fixture.SidecarInjector); err != nil {
		return err
	}
	cp, err := dapr.RunControlPlane(ctx, dapr.ControlPlaneOptions{Client: c, Kubeconfig: *kubeconfig, Namespace: ns,
		TrustBundle: fixture.TrustBundleName, Sentry: fixture.Sentry, Injector: fixture.SidecarInjector,
		SidecarImage: "daprio/daprd:" + dapr.DefaultVersion[1:], MTLS: demoMTLS, Dir: filepath.Join(*state, "control-plane")})
	if err != nil {
		return err
	}
	defer cp.Stop()
	fmt.Println("Dapr's Sentry and injector serve")

	apps, err := daprApplications(ctx, c)
	if err != nil {
		return err
	}
	var namespaces []string
	for _, app := range apps {
		standIn.HoldUnready(app.Namespace, app.Name)
		if !slices.Contains(namespaces, app.Namespace) {
			namespaces = append(namespaces, app.Namespace)
		}
	}
	meshDir := filepath.Join(*state, "mesh")
	if err := os.MkdirAll(meshDir, 0o755); err != nil {
		return err
	}
	mesh, err := dapr.RunMesh(dapr.MeshOptions{Client: c, Namespaces: namespaces, ControlPlaneNamespace: ns,
		SentryAddress: cp.SentryService, JWKSFile: cp.JWKS.File, Dir: meshDir, CallInterval: 500 * time.Millisecond})
	if err != nil {
		return err
	}
	defer mesh.Stop()
	if err := redeploy(ctx, c, apps); err != nil {
		return err
	}
	if err := os.WriteFile(*daprReadyFile, nil, 0o644); err != nil {
		return err
	}
	fmt.Println("the Dapr applications run on Dapr's injector, their sidecars on Dapr's pkg/security")
	wait.UntilWithContext(ctx, func(context.Context) { writeCalls(mesh, cp, *callsFile) }, 2*time.Second)
	return nil
}

// waitForPods waits until the workloads labelled app=<name> in namespace
// have a pod each.
func waitForPods(ctx context.Context, c client.Client, namespace string, apps ...string) error {
	return wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 5*time.Minute, true, func(ctx context.Context) (bool, error) {
		for _, app := range apps {
			pods := &corev1.PodList{}
			if err := c.List(ctx, pods, client.InNamespace(namespace), client.MatchingLabels{"app": app}); err != nil || len(pods.Items) == 0 {
				return false, nil
			}
		}
		return true, nil
	})
}

// daprApplications are the Deployments whose pods are Dapr-enabled.
func daprApplications(ctx context.Context, c client.Client) ([]types.NamespacedName, error) {
	list := &appsv1.DeploymentList{}
	if err := c.List(ctx, list); err != nil {
		return nil, err
	}
	var apps []types.NamespacedName
	for _, d := range list.Items {
		if d.Spec.Template.Annotations[fixture.EnabledAnnotation] == "true" {
			apps = append(apps, types.NamespacedName{Namespace: d.Namespace, Name: d.Name})
		}
	}
	return apps, nil
}

// redeploy restarts apps as 'kubectl rollout restart' does: their new pods
// are created after Dapr's injector was registered.
func redeploy(ctx context.Context, c client.Client, apps []types.NamespacedName) error {
	for _, app := range apps {
		patch := fmt.Appendf(nil, `{"spec":{"template":{"metadata":{"annotations":{"kubectl.kubernetes.io/restartedAt":%q}}}}}`, time.Now().Format(time.RFC3339))
		d := &appsv1.Deployment{}
		d.Namespace, d.Name = app.Namespace, app.Name
		if err := c.Patch(ctx, d, client.RawPatch(types.StrategicMergePatchType, patch)); err != nil {
			return fmt.Errorf("redeploying %s: %w", app, err)
		}
	}
	return nil
}

// writeCalls writes the mesh's counts, and what did not serve, to file.
func writeCalls(mesh *dapr.Mesh, cp *dapr.ControlPlane, file string) {
	calls, err := mesh.Calls()
	if err != nil {
		return
	}
	out := fmt.Sprintf("%s\nSentry processes started %d, injector processes started %d\n%s",
		calls, cp.Sentry.Processes(), cp.Injector.Processes(), calls.Table())
	for _, e := range []error{mesh.Err(), cp.Err()} {
		if e != nil {
			out += "\nnot serving: " + e.Error() + "\n"
		}
	}
	tmp := file + ".tmp"
	if os.WriteFile(tmp, []byte(out), 0o644) == nil {
		_ = os.Rename(tmp, file)
	}
}

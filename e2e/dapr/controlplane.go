package dapr

import (
	"context"
	"errors"
	"os"
	"path/filepath"

	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// ControlPlaneOptions say how to run Dapr's Sentry and injector for the
// control plane of a cluster.
type ControlPlaneOptions struct {
	Client client.Client
	// Kubeconfig is an admin kubeconfig of the cluster.
	Kubeconfig string
	// Namespace of the control plane, and the name of its trust bundle
	// Secret and ConfigMap.
	Namespace, TrustBundle string
	// Sentry and Injector are the app labels of their workloads' pods.
	Sentry, Injector string
	// SidecarImage is the daprd image the injector hands out.
	SidecarImage string
	// MTLS goes into the control plane's Configuration, which Sentry reads.
	MTLS MTLS
	// Dir holds the processes' state and the mounts.
	Dir string
}

// ControlPlane is Dapr's own Sentry and injector running for a cluster,
// each supervised as kubelet runs it (see Supervisor): restarted with its
// pod, its new pod ready once the new process serves, the injector reading
// the trust anchors of the ConfigMap as a pod mounts it.
type ControlPlane struct {
	Sentry   *Supervisor[*Sentry]
	Injector *Supervisor[*Injector]
	// Anchors and JWKS mirror the ConfigMap's ca.crt and jwks.json as a pod
	// mounts them (kubelet's refresh; Hold it to lag).
	Anchors, JWKS *Mirror
	// SentryService reaches whichever Sentry serves now.
	SentryService string
	stop          context.CancelFunc
	o             ControlPlaneOptions
}

// RunControlPlane writes the control plane's Configuration and runs Sentry,
// then the injector, for the workloads' live pods.
func RunControlPlane(ctx context.Context, o ControlPlaneOptions) (*ControlPlane, error) {
	if err := InstallConfiguration(ctx, o.Client, o.Namespace, o.MTLS); err != nil {
		return nil, err
	}
	cp := &ControlPlane{o: o}
	sentry, err := SuperviseSentry(ctx, o.Client, o.Kubeconfig, o.Namespace, o.Sentry, o.Dir)
	if err != nil {
		return nil, err
	}
	cp.Sentry = sentry
	bgCtx, stop := context.WithCancel(context.Background())
	cp.stop = stop
	if err := cp.mount(bgCtx); err != nil {
		cp.Stop()
		return nil, err
	}
	if cp.SentryService, err = Forward(bgCtx, func() string { return sentry.Serving().Address }); err != nil {
		cp.Stop()
		return nil, err
	}
	cp.Injector, err = SuperviseInjector(ctx, o.Client, InjectorOptions{Kubeconfig: o.Kubeconfig, Namespace: o.Namespace,
		AnchorsFile: cp.Anchors.File, SidecarImage: o.SidecarImage, SentryAddress: cp.SentryService}, o.Injector, o.Dir)
	if err != nil {
		cp.Stop()
		return nil, err
	}
	return cp, nil
}

// mount mirrors the trust bundle ConfigMap's keys into Dir.
func (cp *ControlPlane) mount(ctx context.Context) error {
	key := types.NamespacedName{Namespace: cp.o.Namespace, Name: cp.o.TrustBundle}
	for _, m := range []struct {
		into **Mirror
		key  string
	}{{&cp.Anchors, "ca.crt"}, {&cp.JWKS, "jwks.json"}} {
		dir := filepath.Join(cp.o.Dir, "mount-"+m.key)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		mirror, err := MirrorConfigMap(ctx, cp.o.Client, key, m.key, dir)
		if err != nil {
			return err
		}
		*m.into = mirror
	}
	return nil
}

// Log is both processes' logs, for a failure's report.
func (cp *ControlPlane) Log() string {
	var log string
	if cp.Sentry != nil {
		log += "Dapr sentry log:\n" + cp.Sentry.Log() + "\n"
	}
	if cp.Injector != nil {
		log += "Dapr injector log:\n" + cp.Injector.Log() + "\n"
	}
	return log
}

// Err reports the pod replacements whose process did not serve.
func (cp *ControlPlane) Err() error {
	err := cp.Sentry.Err()
	if cp.Injector != nil {
		err = errors.Join(err, cp.Injector.Err())
	}
	return err
}

// Stop ends the injector, removes its registration, and ends Sentry.
func (cp *ControlPlane) Stop() {
	if cp.Injector != nil {
		cp.Injector.Stop()
		_ = UnregisterInjector(context.Background(), cp.o.Client, cp.o.Namespace)
	}
	if cp.stop != nil {
		cp.stop()
	}
	cp.Sentry.Stop()
}

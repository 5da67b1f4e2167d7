package dapr

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// InjectorOptions say how to run Dapr's sidecar injector.
type InjectorOptions struct {
	// Port is where the webhook listens (on every interface, as Dapr binds
	// it): RegisterInjector must name it before the injector starts, since
	// it patches its webhook configuration at once.
	Port int
	// Kubeconfig is an admin kubeconfig of the cluster.
	Kubeconfig string
	// Namespace of the control plane.
	Namespace string
	// SentryAddress reaches Sentry, which signs its serving certificate and
	// each renewal of it.
	SentryAddress string
	// AnchorsFile is the trust anchors file it reads and watches (the
	// dapr-trust-bundle ConfigMap a pod mounts; see Mirror).
	AnchorsFile string
	// TokenFile holds a ServiceAccount token bound to its pod (see
	// WritePodToken), which Sentry's Kubernetes validator checks.
	TokenFile string
	// SidecarImage is the daprd image it injects: it tells the pods Dapr's
	// injector patched from any other's.
	SidecarImage string
	// AllowedServiceAccounts is its ALLOWED_SERVICE_ACCOUNTS (namespace:name globs).
	AllowedServiceAccounts []string
}

// Injector is Dapr's sidecar injector: the mutating webhook that patches
// each Dapr-enabled pod whose creator it allows with a daprd container
// holding the anchors it read last, served with a certificate Sentry signs.
type Injector struct {
	*process
	// Port is where its webhook listens.
	Port int
}

// StartInjector starts the injector.
func StartInjector(o InjectorOptions) (*Injector, error) {
	binary, err := Binary("injector")
	if err != nil {
		return nil, err
	}
	healthz, err := FreePort()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(binary, "--kubeconfig", o.Kubeconfig, fmt.Sprintf("--port=%d", o.Port),
		"--healthz-listen-address", "127.0.0.1", fmt.Sprintf("--healthz-port=%d", healthz), "--enable-metrics=false",
		"--log-level", "debug") // only flags every supported release knows
	cmd.Env = append(os.Environ(), "NAMESPACE="+o.Namespace, "SIDECAR_IMAGE="+o.SidecarImage,
		"KUBE_CLUSTER_DOMAIN=cluster.local", "DAPR_CONTROL_PLANE_TRUST_DOMAIN=cluster.local",
		"DAPR_TRUST_ANCHORS_FILE="+o.AnchorsFile, "DAPR_SENTRY_ADDRESS="+o.SentryAddress,
		"DAPR_SENTRY_TOKEN_FILE="+o.TokenFile,
		"ALLOWED_SERVICE_ACCOUNTS="+strings.Join(o.AllowedServiceAccounts, ","),
		"DAPR_UNSAFE_SKIP_CONTAINER_UID_GID_CHECK=true")
	p, err := start("injector", cmd, healthz)
	if err != nil {
		return nil, err
	}
	return &Injector{process: p, Port: o.Port}, nil
}

// SuperviseInjector runs Dapr's injector under a Supervisor for the pods
// labelled app=<app>: each process with a token bound to its pod (in dir),
// the webhook registered for the first and moved to each next once it
// serves. opts.Port and TokenFile are set per process; opts.SentryAddress
// must reach whichever Sentry serves (see Forward), as the injector renews
// its certificate there.
func SuperviseInjector(ctx context.Context, c client.Client, opts InjectorOptions, app, dir string) (*Supervisor[*Injector], error) {
	return Supervise(ctx, SupervisorOptions[*Injector]{
		Client: c, Namespace: opts.Namespace, App: app,
		Start: func(ctx context.Context, pod *corev1.Pod, n int) (*Injector, error) {
			o := opts
			port, err := FreePort()
			if err != nil {
				return nil, err
			}
			if n == 1 {
				// It patches its webhook configuration at start: it must exist.
				if err := RegisterInjector(ctx, c, opts.Namespace, port); err != nil {
					return nil, err
				}
			}
			o.Port, o.TokenFile = port, filepath.Join(dir, fmt.Sprintf("injector-token-%d", n))
			if err := WritePodToken(ctx, c, pod, o.TokenFile); err != nil {
				return nil, err
			}
			return StartInjector(o)
		},
		Serve: func(ctx context.Context, inj *Injector) error { return pointWebhook(ctx, c, opts.Namespace, inj.Port) },
	})
}

// SuperviseSentry runs Dapr's Sentry under a Supervisor for the pods
// labelled app=<app>, each process with its state in dir.
func SuperviseSentry(ctx context.Context, c client.Client, kubeconfig, namespace, app, dir string) (*Supervisor[*Sentry], error) {
	return Supervise(ctx, SupervisorOptions[*Sentry]{
		Client: c, Namespace: namespace, App: app,
		Start: func(_ context.Context, _ *corev1.Pod, n int) (*Sentry, error) {
			return StartSentry(kubeconfig, namespace, filepath.Join(dir, fmt.Sprintf("sentry-%d", n)))
		},
	})
}

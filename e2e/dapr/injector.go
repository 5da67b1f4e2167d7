package dapr

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
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
	// SentryAddress is where Sentry signs its serving certificate.
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
		"--scheduler-enabled=false", "--log-level", "debug")
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
	return &Injector{process: p}, nil
}

package dapr

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/mtls-rotator/mtls-rotator/e2e/cluster"
)

// Sentry is Dapr's Sentry running in Kubernetes mode against a cluster: it
// reads the dapr-trust-bundle Secret and ConfigMap of its namespace, and
// writes a CA of its own into both when it finds none, or finds them apart.
type Sentry struct {
	*process
	// Address is where it serves sign requests (gRPC, mTLS).
	Address string
}

// StartSentry starts Sentry with the cluster's admin kubeconfig for the
// control plane in namespace, with its state in dir.
func StartSentry(kubeconfig, namespace, dir string) (*Sentry, error) {
	binary, err := Binary("sentry")
	if err != nil {
		return nil, err
	}
	ports, err := cluster.FreePorts(3)
	if err != nil {
		return nil, err
	}
	credentials := filepath.Join(dir, "issuer-credentials") // watched; unused in Kubernetes mode
	if err := os.MkdirAll(credentials, 0o700); err != nil {
		return nil, err
	}
	cmd := exec.Command(binary, "--mode", "kubernetes", "--kubeconfig", kubeconfig, "--trust-domain", "cluster.local",
		"--issuer-credentials", credentials, "--listen-address", "127.0.0.1", fmt.Sprintf("--port=%d", ports[0]),
		"--healthz-listen-address", "127.0.0.1", fmt.Sprintf("--healthz-port=%d", ports[1]),
		"--metrics-listen-address", "127.0.0.1", fmt.Sprintf("--metrics-port=%d", ports[2]), "--log-level", "debug",
		// JWTs too: its key joins the Secret and its JWKS the ConfigMap.
		"--jwt-enabled")
	cmd.Env = append(os.Environ(), "NAMESPACE="+namespace,
		// It reads its Configuration (see InstallConfiguration) through this.
		"KUBECONFIG="+kubeconfig,
		// Any value selects Kubernetes mode; the API server is the kubeconfig's.
		"KUBERNETES_SERVICE_HOST=127.0.0.1",
		// Dapr refuses root in a container; here it runs as the test's user.
		"DAPR_UNSAFE_SKIP_CONTAINER_UID_GID_CHECK=true")
	p, err := start("sentry", cmd, ports[1])
	if err != nil {
		return nil, err
	}
	return &Sentry{process: p, Address: fmt.Sprintf("127.0.0.1:%d", ports[0])}, nil
}

// LoadedFromStore reports whether Sentry took the bundle it found as its CA
// (and did not make one of its own). Sentry logs the store written when it
// made anything, its JWT key alone included.
func (s *Sentry) LoadedFromStore() bool {
	log := s.Log()
	started := strings.Contains(log, "Root and issuer certs found: using credentials from store") ||
		strings.Contains(log, "Self-signed certs and JWT root key generated and persisted successfully")
	return started && !s.GeneratedCA()
}

// GeneratedCA reports whether Sentry made a CA of its own, overwriting the
// Secret and ConfigMap.
func (s *Sentry) GeneratedCA() bool {
	return strings.Contains(s.Log(), "Root and issuer certs not found: generating self signed CA")
}

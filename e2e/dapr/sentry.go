// Package dapr runs Dapr's own control-plane binaries, built from the Dapr
// module by hack/build-dapr.sh, as processes against the local cluster, so
// that Dapr's code, not a stand-in, judges what the operator writes. Dapr's
// source never enters this module: only its binaries are run.
package dapr

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mtls-rotator/mtls-rotator/internal/testenv"
)

// DefaultVersion is the Dapr release the suite runs when DAPR_BIN does not
// name another build.
const DefaultVersion = "v1.18.3"

// Binary is the path of one of Dapr's binaries (sentry, injector): in the
// directory DAPR_BIN names (the Makefile sets it), else in the repository's
// bin/dapr/<DefaultVersion>.
func Binary(name string) (string, error) {
	dir := os.Getenv("DAPR_BIN")
	if dir == "" {
		root, err := testenv.RepoRoot()
		if err != nil {
			return "", err
		}
		dir = filepath.Join(root, "bin", "dapr", DefaultVersion)
	}
	path := filepath.Join(dir, name)
	if _, err := os.Stat(path); err != nil {
		return "", fmt.Errorf("Dapr's %s binary is missing (%w); run 'make dapr' (hack/build-dapr.sh) first", name, err)
	}
	return path, nil
}

// Sentry is Dapr's Sentry running in Kubernetes mode against a cluster: it
// reads the dapr-trust-bundle Secret and ConfigMap of its namespace, and
// writes a CA of its own into both when it finds none, or finds them apart.
type Sentry struct {
	// Healthz is the URL of its health endpoint.
	Healthz string
	cmd     *exec.Cmd
	log     *syncBuffer
	exited  chan struct{}
}

// StartSentry starts Sentry with the cluster's admin kubeconfig for the
// control plane in namespace, with its state in dir.
func StartSentry(kubeconfig, namespace, dir string) (*Sentry, error) {
	binary, err := Binary("sentry")
	if err != nil {
		return nil, err
	}
	ports, err := freePorts(3)
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
		"--metrics-listen-address", "127.0.0.1", fmt.Sprintf("--metrics-port=%d", ports[2]), "--log-level", "debug")
	cmd.Env = append(os.Environ(), "NAMESPACE="+namespace,
		// Any value selects Kubernetes mode; the API server is the kubeconfig's.
		"KUBERNETES_SERVICE_HOST=127.0.0.1",
		// Dapr refuses root in a container; here it runs as the test's user.
		"DAPR_UNSAFE_SKIP_CONTAINER_UID_GID_CHECK=true")
	s := &Sentry{Healthz: fmt.Sprintf("http://127.0.0.1:%d/healthz", ports[1]), cmd: cmd, log: &syncBuffer{}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = s.log, s.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting Dapr's sentry: %w", err)
	}
	go func() {
		_ = cmd.Wait()
		close(s.exited)
	}()
	return s, nil
}

// Log is what Sentry has logged so far.
func (s *Sentry) Log() string { return s.log.String() }

// Exited reports whether the process has exited.
func (s *Sentry) Exited() bool {
	select {
	case <-s.exited:
		return true
	default:
		return false
	}
}

// Healthy reports nil once Sentry's health endpoint answers 200: it has
// loaded or made its CA and serves.
func (s *Sentry) Healthy(ctx context.Context) error {
	if s.Exited() {
		return errors.New("sentry exited")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.Healthz, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("healthz answered %d", resp.StatusCode)
	}
	return nil
}

// Stop ends Sentry (SIGTERM, then SIGKILL after 10 s).
func (s *Sentry) Stop() {
	if s.Exited() {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
}

// LoadedFromStore reports whether Sentry took the bundle it found as its CA
// (and did not make one of its own).
func (s *Sentry) LoadedFromStore() bool {
	return strings.Contains(s.Log(), "Root and issuer certs found: using credentials from store")
}

// GeneratedCA reports whether Sentry made a CA of its own, overwriting the
// Secret and ConfigMap.
func (s *Sentry) GeneratedCA() bool {
	return strings.Contains(s.Log(), "Root and issuer certs not found: generating self signed CA")
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// freePorts returns n loopback ports free now.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

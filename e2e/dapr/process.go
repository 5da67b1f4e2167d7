// Package dapr runs Dapr's own control-plane binaries, built from the Dapr
// module by hack/build-dapr.sh, as processes against the local cluster, so
// that Dapr's code, not a stand-in, judges what the operator writes. Dapr's
// source never enters this module: only its binaries are run.
package dapr

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/mtls-rotator/mtls-rotator/e2e/cluster"
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

// process is one of Dapr's binaries running, its output kept in memory.
type process struct {
	name    string
	healthz string
	cmd     *exec.Cmd
	log     *syncBuffer
	exited  chan struct{}
}

// start runs cmd, whose health endpoint listens on healthzPort, in a
// process group that dies with the test.
func start(name string, cmd *exec.Cmd, healthzPort int) (*process, error) {
	p := &process{name: name, healthz: fmt.Sprintf("http://127.0.0.1:%d/healthz", healthzPort), cmd: cmd, log: &syncBuffer{}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.log, p.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting Dapr's %s: %w", name, err)
	}
	go func() {
		_ = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// Log is what the process has logged so far.
func (p *process) Log() string { return p.log.String() }

// Exited reports whether the process has exited.
func (p *process) Exited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// Healthy reports nil once the health endpoint answers 200.
func (p *process) Healthy(ctx context.Context) error {
	if p.Exited() {
		return fmt.Errorf("%s exited", p.name)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.healthz, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s healthz answered %d", p.name, resp.StatusCode)
	}
	return nil
}

// Stop ends the process (SIGTERM, then SIGKILL after 10 s).
func (p *process) Stop() {
	if p.Exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
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

// every runs f each 200 ms, as kubelet's loops look again, until ctx ends.
func every(ctx context.Context, f func()) {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f()
		}
	}
}

// FreePort returns a loopback port free now.
func FreePort() (int, error) {
	ports, err := cluster.FreePorts(1)
	if err != nil {
		return 0, err
	}
	return ports[0], nil
}

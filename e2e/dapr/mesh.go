package dapr

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/mtls-rotator/mtls-rotator/e2e/cluster"
)

// Names Dapr's injector gives what it patches: the label on each pod, the
// sidecar container, the env var holding the pod's trust anchors, and the
// annotation naming the app.
const (
	injectedLabel     = "dapr.io/sidecar-injected"
	sidecarContainer  = "daprd"
	trustAnchorsEnv   = "DAPR_TRUST_ANCHORS"
	appIDAnnotation   = "dapr.io/app-id"
	peerLeavesAfter   = time.Second // callers read the peers file every round
	sidecarHealthyMax = 60 * time.Second
)

// MeshOptions say which pods a Mesh runs sidecars for, and against what.
type MeshOptions struct {
	Client client.Client
	// Namespaces hold the Dapr applications.
	Namespaces []string
	// ControlPlaneNamespace is Dapr's namespace.
	ControlPlaneNamespace string
	// SentryAddress is Sentry's Service: an address that reaches whichever
	// Sentry serves now (see Forward).
	SentryAddress string
	// JWKSFile is the published JWKS as a pod mounts it; when set, each
	// sidecar verifies the JWTs Sentry issues it (Dapr 1.18 and later).
	JWKSFile string
	// Dir holds the sidecars' tokens, identities and counts.
	Dir string
	// CallInterval is the time between a sidecar's rounds of calls to all
	// its peers; 100 ms when zero.
	CallInterval time.Duration
}

// Mesh plays kubelet for the daprd containers of Dapr's applications: for
// each live pod an injector patched it runs a sidecar (e2e/dapr/sidecar, on
// Dapr's own pkg/security) with the anchors that pod was injected with and
// a token bound to it. The pod becomes ready once its sidecar holds an SVID
// (as daprd's readiness probe makes it, so an app whose sidecar cannot get
// one does not roll out), and each ready sidecar calls all the others over
// mTLS, continuously, until its pod goes.
type Mesh struct {
	o       MeshOptions
	mu      sync.Mutex
	members map[types.UID]*member
	n       int
	errs    []string
	stops   sync.WaitGroup
	cancel  context.CancelFunc
	done    chan struct{}
}

type member struct {
	peer    Peer
	dir     string
	proc    *process
	since   time.Time
	ready   bool
	failed  bool
	pod     *corev1.Pod
	address string
}

// Peer is one sidecar as the others find it (the sidecar's peers file).
type Peer struct {
	Pod       string `json:"pod"`
	Namespace string `json:"namespace"`
	App       string `json:"app"`
	Address   string `json:"address"`
}

// RunMesh starts a Mesh; Stop ends it and its sidecars.
func RunMesh(o MeshOptions) (*Mesh, error) {
	if _, err := Binary("sidecar"); err != nil {
		return nil, err
	}
	m := &Mesh{o: o, members: map[types.UID]*member{}, done: make(chan struct{})}
	if err := m.writePeers(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	go func() {
		defer close(m.done)
		every(ctx, func() { m.sync(ctx) })
	}()
	return m, nil
}

// sync starts a sidecar for each new pod, marks the pods whose sidecar
// serves ready, and retires the sidecars of pods gone.
func (m *Mesh) sync(ctx context.Context) {
	live, err := m.livePods(ctx)
	if err != nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	changed := false
	for uid, pod := range live {
		if _, ok := m.members[uid]; !ok {
			m.start(ctx, pod)
		}
	}
	for uid, mem := range m.members {
		switch {
		case live[uid] == nil:
			delete(m.members, uid)
			changed = changed || mem.ready
			m.retire(mem)
		case !mem.ready && !mem.failed:
			changed = m.check(ctx, mem) || changed
		}
	}
	if changed {
		if err := m.writePeers(); err != nil {
			m.errs = append(m.errs, err.Error())
		}
	}
}

// livePods are the pods an injector patched that are not terminating, by UID.
func (m *Mesh) livePods(ctx context.Context) (map[types.UID]*corev1.Pod, error) {
	live := map[types.UID]*corev1.Pod{}
	for _, ns := range m.o.Namespaces {
		pods := &corev1.PodList{}
		if err := m.o.Client.List(ctx, pods, client.InNamespace(ns), client.MatchingLabels{injectedLabel: "true"}); err != nil {
			return nil, err
		}
		for i := range pods.Items {
			if p := &pods.Items[i]; p.DeletionTimestamp == nil {
				live[p.UID] = p
			}
		}
	}
	return live, nil
}

// start runs a sidecar for pod, as kubelet starts its daprd container.
func (m *Mesh) start(ctx context.Context, pod *corev1.Pod) {
	m.n++
	mem := &member{pod: pod, since: time.Now(), dir: filepath.Join(m.o.Dir, fmt.Sprintf("sidecar-%d-%s", m.n, pod.Name)),
		peer: Peer{Pod: pod.Name, Namespace: pod.Namespace, App: pod.Annotations[appIDAnnotation]}}
	m.members[pod.UID] = mem
	if err := m.run(ctx, mem); err != nil {
		mem.failed = true
		m.errs = append(m.errs, fmt.Sprintf("sidecar of pod %s/%s: %v", pod.Namespace, pod.Name, err))
	}
}

func (m *Mesh) run(ctx context.Context, mem *member) error {
	dir := mem.dir
	binary, err := Binary("sidecar")
	if err != nil {
		return err
	}
	anchors, ok := podAnchors(mem.pod)
	if !ok {
		return errors.New("no daprd container")
	}
	// pkg/security makes identity/ itself, a link it swaps on each renewal.
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	token := filepath.Join(dir, "token")
	if err := WritePodToken(ctx, m.o.Client, mem.pod, token); err != nil {
		return err
	}
	ports, err := cluster.FreePorts(2)
	if err != nil {
		return err
	}
	mem.peer.Address = fmt.Sprintf("127.0.0.1:%d", ports[0])
	cmd := exec.Command(binary, "--listen", mem.peer.Address, fmt.Sprintf("--healthz=127.0.0.1:%d", ports[1]),
		"--sentry-address", m.o.SentryAddress, "--peers", m.peersFile(), "--stats", filepath.Join(dir, "stats.json"),
		"--jwks", m.o.JWKSFile, "--identity-dir", filepath.Join(dir, "identity"), "--pod", mem.pod.Name,
		"--control-plane-namespace", m.o.ControlPlaneNamespace, "--interval", cmp.Or(m.o.CallInterval, 100*time.Millisecond).String())
	cmd.Env = append(os.Environ(), trustAnchorsEnv+"="+anchors, "APP_ID="+mem.peer.App, "NAMESPACE="+mem.pod.Namespace,
		"DAPR_SENTRY_TOKEN_FILE="+token, "DAPR_UNSAFE_SKIP_CONTAINER_UID_GID_CHECK=true")
	mem.proc, err = start("sidecar "+mem.pod.Name, cmd, ports[1])
	return err
}

// check makes mem's pod ready once its sidecar serves; it reports whether
// the peers changed.
func (m *Mesh) check(ctx context.Context, mem *member) bool {
	healthCtx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	err := mem.proc.Healthy(healthCtx)
	switch {
	case err == nil:
		if err := markReady(ctx, m.o.Client, mem.pod); err != nil {
			m.errs = append(m.errs, err.Error())
		}
		mem.ready = true
		return true
	case mem.proc.Exited() || time.Since(mem.since) > sidecarHealthyMax:
		// As kubelet with a failing readiness probe: the pod stays unready.
		mem.failed = true
		m.errs = append(m.errs, fmt.Sprintf("sidecar of pod %s/%s got no SVID: %v; its log ends:\n%s",
			mem.pod.Namespace, mem.pod.Name, err, tail(mem.proc.Log(), 10)))
		m.retire(mem)
	}
	return false
}

// retire stops mem's sidecar once the others have stopped calling it, as a
// pod leaves its Service's endpoints before it is stopped.
func (m *Mesh) retire(mem *member) {
	if mem.proc == nil {
		return
	}
	m.stops.Go(func() {
		time.Sleep(peerLeavesAfter)
		mem.proc.Stop()
	})
}

func (m *Mesh) peersFile() string { return filepath.Join(m.o.Dir, "peers.json") }

// writePeers lists the ready sidecars for every sidecar to call.
func (m *Mesh) writePeers() error {
	peers := []Peer{}
	for _, mem := range m.members {
		if mem.ready {
			peers = append(peers, mem.peer)
		}
	}
	slices.SortFunc(peers, func(a, b Peer) int { return strings.Compare(a.Pod, b.Pod) })
	b, err := json.Marshal(peers)
	if err != nil {
		return err
	}
	tmp := m.peersFile() + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, m.peersFile())
}

// Ready is how many sidecars serve and are called now.
func (m *Mesh) Ready() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, mem := range m.members {
		if mem.ready {
			n++
		}
	}
	return n
}

// Err reports sidecars that did not start or got no SVID.
func (m *Mesh) Err() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.errs) == 0 {
		return nil
	}
	return errors.New(strings.Join(m.errs, "\n"))
}

// Stop ends the mesh and every sidecar, once none calls another.
func (m *Mesh) Stop() {
	m.cancel()
	<-m.done
	m.mu.Lock()
	for _, mem := range m.members {
		mem.ready = false
	}
	_ = m.writePeers()
	for uid, mem := range m.members {
		delete(m.members, uid)
		m.retire(mem)
	}
	m.mu.Unlock()
	m.stops.Wait()
}

// podAnchors are the trust anchors pod's daprd was injected with.
func podAnchors(pod *corev1.Pod) (string, bool) {
	for _, c := range pod.Spec.Containers {
		if c.Name != sidecarContainer {
			continue
		}
		for _, e := range c.Env {
			if e.Name == trustAnchorsEnv {
				return e.Value, true
			}
		}
	}
	return "", false
}

package dapr

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/mtls-rotator/mtls-rotator/e2e/cluster"
)

// Proc is one of Dapr's processes as a supervisor runs it.
type Proc interface {
	Healthy(context.Context) error
	Exited() bool
	Stop()
	Log() string
}

// SupervisorOptions say which workload's pods a supervisor runs a process
// for, and how.
type SupervisorOptions[P Proc] struct {
	Client client.Client
	// Namespace and App (its pods' app label) name the workload.
	Namespace, App string
	// Start starts the process for pod; n counts the processes started.
	Start func(ctx context.Context, pod *corev1.Pod, n int) (P, error)
	// Serve, when set, makes a new process the one serving once it is
	// healthy (the injector's webhook moves to it).
	Serve func(ctx context.Context, p P) error
}

// Supervisor plays kubelet for one control-plane workload of Dapr: it runs
// a process for the workload's live pod, and when a restart replaces the
// pod, a process for the new pod. The new pod becomes ready only once its
// process is healthy, as a readiness probe makes it (so a process Dapr's
// code stops, on a bundle it refuses, holds the rollout); then the old
// process stops, as a rolling update ends the old pod.
type Supervisor[P Proc] struct {
	o SupervisorOptions[P]

	mu       sync.Mutex
	current  P
	pod      types.UID
	started  int
	logs     []string
	failures []string
	held     bool
	cancel   context.CancelFunc
	done     chan struct{}
}

// healthyWithin bounds how long a new process may take to serve.
const healthyWithin = 60 * time.Second

// Supervise runs a process for the workload's live pod, marks that pod
// ready once it serves, and follows the pod's replacements until Stop.
func Supervise[P Proc](ctx context.Context, o SupervisorOptions[P]) (*Supervisor[P], error) {
	s := &Supervisor[P]{o: o, done: make(chan struct{})}
	pod, err := s.livePod(ctx)
	if err != nil {
		return nil, err
	}
	p, err := s.run(ctx, pod)
	if err != nil {
		return nil, err
	}
	s.current, s.pod = p, pod.UID
	loopCtx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go func() {
		defer close(s.done)
		every(loopCtx, func() { s.follow(loopCtx) })
	}()
	return s, nil
}

// run starts a process for pod, waits until it serves, makes it the one
// serving and marks pod ready.
func (s *Supervisor[P]) run(ctx context.Context, pod *corev1.Pod) (P, error) {
	s.mu.Lock()
	s.started++
	n := s.started
	s.mu.Unlock()
	p, err := s.o.Start(ctx, pod, n)
	if err != nil {
		return p, err
	}
	deadline := time.Now().Add(healthyWithin)
	for err := p.Healthy(ctx); err != nil; err = p.Healthy(ctx) {
		if time.Now().After(deadline) || p.Exited() || ctx.Err() != nil {
			p.Stop()
			s.keepLog(p)
			return p, fmt.Errorf("%s for pod %s did not serve: %w; its log ends:\n%s", s.o.App, pod.Name, err, tail(p.Log(), 15))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if s.o.Serve != nil {
		if err := s.o.Serve(ctx, p); err != nil {
			p.Stop()
			s.keepLog(p)
			return p, err
		}
	}
	return p, markReady(ctx, s.o.Client, pod)
}

// follow replaces the process when the workload's pod was replaced.
func (s *Supervisor[P]) follow(ctx context.Context) {
	s.mu.Lock()
	held := s.held
	s.mu.Unlock()
	if held {
		return
	}
	pod, err := s.livePod(ctx)
	if err != nil || pod.UID == s.pod {
		return
	}
	p, err := s.run(ctx, pod)
	if err != nil {
		if ctx.Err() == nil {
			s.mu.Lock()
			s.failures = append(s.failures, err.Error())
			s.pod = pod.UID // as kubelet, no retry: the pod stays unready
			s.mu.Unlock()
		}
		return
	}
	s.mu.Lock()
	old := s.current
	s.current, s.pod = p, pod.UID
	s.mu.Unlock()
	old.Stop()
	s.keepLog(old)
}

// markReady lets kwok make pod ready: the pods of a supervised workload
// are created held unready (cluster.StayUnreadyAnnotation, see the
// fixture's HoldUnready) until their process serves.
func markReady(ctx context.Context, c client.Client, pod *corev1.Pod) error {
	if _, held := pod.Annotations[cluster.StayUnreadyAnnotation]; !held {
		return nil
	}
	patch := fmt.Appendf(nil, `{"metadata":{"annotations":{%q:null}}}`, cluster.StayUnreadyAnnotation)
	if err := c.Patch(ctx, pod.DeepCopy(), client.RawPatch(types.MergePatchType, patch)); err != nil {
		return fmt.Errorf("marking pod %s ready: %w", pod.Name, err)
	}
	return nil
}

// livePod is the newest pod of the workload that is not terminating.
func (s *Supervisor[P]) livePod(ctx context.Context) (*corev1.Pod, error) {
	pods := &corev1.PodList{}
	if err := s.o.Client.List(ctx, pods, client.InNamespace(s.o.Namespace), client.MatchingLabels{"app": s.o.App}); err != nil {
		return nil, err
	}
	var live *corev1.Pod
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.DeletionTimestamp == nil && (live == nil || live.CreationTimestamp.Before(&p.CreationTimestamp)) {
			live = p
		}
	}
	if live == nil {
		return nil, fmt.Errorf("no live pod of %s/%s", s.o.Namespace, s.o.App)
	}
	return live, nil
}

func (s *Supervisor[P]) keepLog(p P) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.logs = append(s.logs, p.Log())
}

// Hold stops starting processes for new pods, as on a node that cannot pull
// their image: a restart's new pod stays unready while the process serving
// now goes on serving, as the old pod of a stuck rolling update does.
func (s *Supervisor[P]) Hold() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.held = true
}

// Release starts a process for the workload's live pod again, and for its
// pods from then on.
func (s *Supervisor[P]) Release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.held = false
}

// Processes is how many processes were started.
func (s *Supervisor[P]) Processes() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.started
}

// Err reports the replacements that failed.
func (s *Supervisor[P]) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.failures) == 0 {
		return nil
	}
	return errors.New(strings.Join(s.failures, "; "))
}

// Serving is the process serving now.
func (s *Supervisor[P]) Serving() P {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.current
}

// Log is every process's log, the stopped ones' first.
func (s *Supervisor[P]) Log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(append(append([]string{}, s.logs...), s.current.Log()), "\n--- next process ---\n")
}

// Stop ends the supervision and the process.
func (s *Supervisor[P]) Stop() {
	s.cancel()
	<-s.done
	s.Serving().Stop()
}

// tail is the last n lines of log.
func tail(log string, n int) string {
	lines := strings.Split(strings.TrimRight(log, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

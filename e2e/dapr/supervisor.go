package dapr

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// InjectorSupervisor plays kubelet for Dapr's injector: it runs one process
// for the live pod of the injector's Deployment, and when a restart replaces
// that pod, a process for the new pod (a token bound to it, the anchors the
// mount holds then); once that one serves, the webhook is moved to it and
// the old one stopped, as a rolling update moves a Service's endpoints.
type InjectorSupervisor struct {
	c    client.Client
	opts InjectorOptions
	app  string
	dir  string

	mu       sync.Mutex
	current  *Injector
	pod      types.UID
	started  int
	logs     []string
	failures []string
	cancel   context.CancelFunc
	done     chan struct{}
}

// healthyWithin bounds how long a new injector process may take to serve.
const healthyWithin = 60 * time.Second

// SuperviseInjector registers the injector's webhook and runs a process for
// the live pod labelled app=<app> of namespace opts.Namespace, then follows
// that pod's replacements until Stop. opts.Port and opts.TokenFile are set
// per process; dir holds the tokens.
func SuperviseInjector(ctx context.Context, c client.Client, opts InjectorOptions, app, dir string) (*InjectorSupervisor, error) {
	s := &InjectorSupervisor{c: c, opts: opts, app: app, dir: dir, done: make(chan struct{})}
	pod, err := s.livePod(ctx)
	if err != nil {
		return nil, err
	}
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	if err := RegisterInjector(ctx, c, opts.Namespace, port); err != nil {
		return nil, err
	}
	inj, err := s.run(ctx, pod, port)
	if err != nil {
		return nil, err
	}
	s.current, s.pod = inj, pod.UID
	loopCtx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go s.follow(loopCtx)
	return s, nil
}

// run starts a process for pod on port and waits until it serves.
func (s *InjectorSupervisor) run(ctx context.Context, pod *corev1.Pod, port int) (*Injector, error) {
	s.mu.Lock()
	s.started++
	token := filepath.Join(s.dir, fmt.Sprintf("token-%d", s.started))
	s.mu.Unlock()
	if err := WritePodToken(ctx, s.c, s.opts.Namespace, s.app, token); err != nil {
		return nil, err
	}
	o := s.opts
	o.Port, o.TokenFile = port, token
	inj, err := StartInjector(o)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(healthyWithin)
	for {
		err := inj.Healthy(ctx)
		if err == nil {
			return inj, nil
		}
		if time.Now().After(deadline) || inj.Exited() || ctx.Err() != nil {
			inj.Stop()
			s.keepLog(inj)
			return nil, fmt.Errorf("Dapr's injector for pod %s did not serve: %w", pod.Name, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// follow replaces the process each time the injector's pod is replaced.
func (s *InjectorSupervisor) follow(ctx context.Context) {
	defer close(s.done)
	every(ctx, func() {
		pod, err := s.livePod(ctx)
		if err != nil || pod.UID == s.pod {
			return
		}
		if err := s.replace(ctx, pod); err != nil && ctx.Err() == nil {
			s.mu.Lock()
			s.failures = append(s.failures, err.Error())
			s.mu.Unlock()
		}
	})
}

// replace starts a process for pod, moves the webhook to it and stops the
// old process.
func (s *InjectorSupervisor) replace(ctx context.Context, pod *corev1.Pod) error {
	port, err := FreePort()
	if err != nil {
		return err
	}
	inj, err := s.run(ctx, pod, port)
	if err != nil {
		return err
	}
	if err := pointWebhook(ctx, s.c, s.opts.Namespace, port); err != nil {
		inj.Stop()
		return err
	}
	s.mu.Lock()
	old := s.current
	s.current, s.pod = inj, pod.UID
	s.mu.Unlock()
	old.Stop()
	s.keepLog(old)
	return nil
}

// livePod is the newest pod of the injector that is not terminating.
func (s *InjectorSupervisor) livePod(ctx context.Context) (*corev1.Pod, error) {
	pods := &corev1.PodList{}
	if err := s.c.List(ctx, pods, client.InNamespace(s.opts.Namespace), client.MatchingLabels{"app": s.app}); err != nil {
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
		return nil, fmt.Errorf("no live pod of %s/%s", s.opts.Namespace, s.app)
	}
	return live, nil
}

func (s *InjectorSupervisor) keepLog(inj *Injector) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.logs = append(s.logs, inj.Log())
}

// Processes is how many injector processes were started.
func (s *InjectorSupervisor) Processes() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.started
}

// Err reports the replacements that failed.
func (s *InjectorSupervisor) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.failures) == 0 {
		return nil
	}
	return errors.New(strings.Join(s.failures, "; "))
}

// Serving is the process serving the webhook now.
func (s *InjectorSupervisor) Serving() *Injector {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.current
}

// Log is every process's log, the stopped ones' first.
func (s *InjectorSupervisor) Log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(append(append([]string{}, s.logs...), s.current.Log()), "\n--- next injector process ---\n")
}

// Stop ends the supervision and the process.
func (s *InjectorSupervisor) Stop() {
	s.cancel()
	<-s.done
	s.mu.Lock()
	current := s.current
	s.mu.Unlock()
	current.Stop()
}

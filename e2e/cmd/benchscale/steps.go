package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/e2e/cluster"
	"github.com/mtls-rotator/mtls-rotator/e2e/fixture"
)

const (
	rotationName     = "dapr"
	appNamespaces    = 10
	foreignPerNS     = 100
	foreignLabel     = "bench.mtls.rotator.dev/foreign"
	rotationTimeout  = 30 * time.Minute
	foreignTimeout   = 45 * time.Minute
	podEventCoalesce = 35 * time.Second // the operator's coalesced pod wake (30s) and a margin
)

// bench holds the running benchmark's cluster and operator.
type bench struct {
	config
	kube        client.Client
	metricsAddr string
	operatorPID int
}

func (b *bench) say(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s  %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// localcluster runs the local cluster's command (bin/localcluster) in dir.
func (b *bench) localcluster(ctx context.Context, args ...string) error {
	cmd := exec.CommandContext(ctx, filepath.Join(b.root, "bin", "localcluster"), append([]string{"--dir", b.dir}, args...)...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("localcluster %s: %w", strings.Join(args, " "), err)
	}
	return nil
}

func (b *bench) connect() error {
	cfg, err := clientcmd.BuildConfigFromFlags("", filepath.Join(b.dir, "kubeconfig"))
	if err != nil {
		return err
	}
	// The benchmark's own reads and creates must not be what is slow.
	cfg.QPS, cfg.Burst = 500, 1000
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return err
	}
	if err := rotatorv1.AddToScheme(scheme); err != nil {
		return err
	}
	b.kube, err = client.New(cfg, client.Options{Scheme: scheme})
	return err
}

func (b *bench) fixtureOptions(n int) fixture.Options {
	var namespaces []string
	for i := range appNamespaces {
		namespaces = append(namespaces, fmt.Sprintf("bench-%02d", i))
	}
	return fixture.Options{Apps: n, DaprOnly: true, AppReplicas: 1, AppNamespaces: namespaces}
}

// installApps brings the fixture to n Dapr applications of 1 replica.
func (b *bench) installApps(ctx context.Context, n int) error {
	b.say("installing the Dapr fixture with %d applications", n)
	o := b.fixtureOptions(n)
	return b.localcluster(ctx, "fixture", "--apps", strconv.Itoa(n), "--dapr-only", "--replicas", "1",
		"--namespaces", strings.Join(o.AppNamespaces, ","), "--timeout", "30m")
}

func (b *bench) startOperator(ctx context.Context) error {
	b.say("starting the operator (poll interval %s)", b.poll)
	if err := b.localcluster(ctx, "operator", "--binary", filepath.Join(b.root, "bin", "mtls-rotator"), "--",
		"--poll-interval="+b.poll.String()); err != nil {
		return err
	}
	addr, err := os.ReadFile(filepath.Join(b.dir, "metrics-addr"))
	if err != nil {
		return err
	}
	b.metricsAddr = strings.TrimSpace(string(addr))
	b.operatorPID, err = cluster.DetachedPID(b.dir, "mtls-rotator")
	return err
}

// rotate starts a rotation by trigger (creating the object the first time)
// and returns once it has completed.
func (b *bench) rotate(ctx context.Context, trigger string) error {
	key := client.ObjectKey{Namespace: fixture.ControlPlaneNamespace, Name: rotationName}
	obj := &rotatorv1.MTLSRootRotation{}
	switch err := b.kube.Get(ctx, key, obj); {
	case apierrors.IsNotFound(err):
		obj = &rotatorv1.MTLSRootRotation{ObjectMeta: metav1.ObjectMeta{Name: key.Name, Namespace: key.Namespace}}
		obj.Spec.Trigger = trigger
		obj.Spec.Root.KeyPolicy = rotatorv1.KeyPolicy(b.keyPolicy)
		obj.Spec.Applications.MaxConcurrent = int32(b.wave)
		obj.Spec.Applications.RolloutTimeout = &metav1.Duration{Duration: 10 * time.Minute}
		obj.Spec.ControlPlane.RolloutTimeout = &metav1.Duration{Duration: 10 * time.Minute}
		if err := b.kube.Create(ctx, obj); err != nil {
			return err
		}
	case err != nil:
		return err
	default:
		patch := client.MergeFrom(obj.DeepCopy())
		obj.Spec.Trigger = trigger
		if err := b.kube.Patch(ctx, obj, patch); err != nil {
			return err
		}
	}
	var last string
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, rotationTimeout, true, func(ctx context.Context) (bool, error) {
		if err := b.kube.Get(ctx, key, obj); err != nil {
			return false, nil
		}
		if c := apimeta.FindStatusCondition(obj.Status.Conditions, meta.StalledCondition); c != nil && c.Status == metav1.ConditionTrue {
			return false, fmt.Errorf("the rotation stalled: %s: %s", c.Reason, c.Message)
		}
		if c := apimeta.FindStatusCondition(obj.Status.Conditions, meta.ReadyCondition); c != nil {
			last = c.Reason + ": " + c.Message
		}
		done := obj.Status.LastCompletedRotation
		return done != nil && done.Trigger == trigger, nil
	})
	if err != nil {
		return fmt.Errorf("rotation %q (last: %s): %w", trigger, last, err)
	}
	return nil
}

// settle waits until the mesh is at rest: every workload rolled out and
// exactly one running sidecar pod per application.
func (b *bench) settle(ctx context.Context, n int) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	if err := fixture.WaitRolledOut(ctx, b.kube, b.fixtureOptions(n)); err != nil {
		return err
	}
	var running, terminating int
	err := wait.PollUntilContextCancel(ctx, time.Second, true, func(ctx context.Context) (bool, error) {
		pods := &corev1.PodList{}
		if err := b.kube.List(ctx, pods, client.MatchingLabels{fixture.InjectedLabel: "true"}); err != nil {
			return false, nil
		}
		running, terminating = 0, 0
		for i := range pods.Items {
			if pods.Items[i].DeletionTimestamp != nil {
				terminating++
			} else if pods.Items[i].Status.Phase == corev1.PodRunning {
				running++
			}
		}
		return running == n && terminating == 0, nil
	})
	if err != nil {
		return fmt.Errorf("waiting for %d running sidecar pods (%d running, %d terminating): %w", n, running, terminating, err)
	}
	return nil
}

func (b *bench) operatorMemory(ctx context.Context) (memory, error) {
	rss, err := procMemory(b.operatorPID, "VmRSS")
	if err != nil {
		return memory{}, err
	}
	s, err := scrape(ctx, b.metricsAddr)
	return memory{RSS: rss, Heap: int64(s.heapInuse), Live: int64(s.heapLive)}, err
}

// idleMemory is the operator's memory once the mesh has settled.
func (b *bench) idleMemory(ctx context.Context, n int) (memory, error) {
	if err := b.settle(ctx, n); err != nil {
		return memory{}, err
	}
	if err := sleep(ctx, 10*time.Second); err != nil {
		return memory{}, err
	}
	m, err := b.operatorMemory(ctx)
	b.say("operator idle: RSS %s, heap in use %s, live heap %s", mib(m.RSS), mib(m.Heap), mib(m.Live))
	return m, err
}

// idleReconciles counts the reconciles over the idle window, once the mesh
// has settled and the last pod events have been delivered, and the memory at
// its end.
func (b *bench) idleReconciles(ctx context.Context, n int) (memory, int, error) {
	if err := b.settle(ctx, n); err != nil {
		return memory{}, 0, err
	}
	if err := sleep(ctx, podEventCoalesce); err != nil {
		return memory{}, 0, err
	}
	before, err := scrape(ctx, b.metricsAddr)
	if err != nil {
		return memory{}, 0, err
	}
	b.say("counting reconciles over %s of idling", b.idle)
	if err := sleep(ctx, b.idle); err != nil {
		return memory{}, 0, err
	}
	after, err := scrape(ctx, b.metricsAddr)
	if err != nil {
		return memory{}, 0, err
	}
	m, err := b.operatorMemory(ctx)
	return m, int(after.reconciles - before.reconciles), err
}

// restartedGenerations sums the generations of the control plane and the
// applications: each restart (a pod-template change) adds one.
func (b *bench) restartedGenerations(ctx context.Context) (int64, error) {
	var sum int64
	deployments := &appsv1.DeploymentList{}
	if err := b.kube.List(ctx, deployments, client.MatchingLabels{fixture.AppLabel: "true"}); err != nil {
		return 0, err
	}
	for _, d := range deployments.Items {
		sum += d.Generation
	}
	for _, w := range fixture.ControlPlane {
		var obj client.Object = &appsv1.Deployment{}
		if w.Kind == "StatefulSet" {
			obj = &appsv1.StatefulSet{}
		}
		if err := b.kube.Get(ctx, client.ObjectKey{Namespace: fixture.ControlPlaneNamespace, Name: w.Name}, obj); err != nil {
			return 0, err
		}
		sum += obj.GetGeneration()
	}
	return sum, nil
}

// createForeign creates the foreign Deployments and waits until they are rolled out.
func (b *bench) createForeign(ctx context.Context) error {
	if b.foreign == 0 {
		return nil
	}
	b.say("creating %d foreign Deployments of %d replica(s)", b.foreign, b.foreignReplicas)
	start := time.Now()
	for ns := 0; ns*foreignPerNS < b.foreign; ns++ {
		name := fmt.Sprintf("foreign-%03d", ns)
		if err := b.kube.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}); err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
	}
	work := make(chan int)
	errs := make(chan error, 8)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for i := range work {
				if err := b.kube.Create(ctx, foreignDeployment(i, int32(b.foreignReplicas))); err != nil && !apierrors.IsAlreadyExists(err) {
					errs <- err
					return
				}
			}
		})
	}
	for i := range b.foreign {
		select {
		case work <- i:
		case err := <-errs:
			close(work)
			wg.Wait()
			return fmt.Errorf("creating foreign Deployments: %w", err)
		}
	}
	close(work)
	wg.Wait()
	b.say("created in %s; waiting for them to roll out", seconds(time.Since(start)))
	var done int
	err := wait.PollUntilContextTimeout(ctx, 5*time.Second, foreignTimeout, false, func(ctx context.Context) (bool, error) {
		list := &appsv1.DeploymentList{}
		if err := b.kube.List(ctx, list, client.MatchingLabels{foreignLabel: "true"}); err != nil {
			return false, nil
		}
		done = 0
		for i := range list.Items {
			if fixture.DeploymentRolledOut(&list.Items[i]) {
				done++
			}
		}
		return done == b.foreign, nil
	})
	if err != nil {
		return fmt.Errorf("waiting for the foreign Deployments (%d of %d rolled out): %w", done, b.foreign, err)
	}
	b.say("%d foreign Deployments rolled out after %s", b.foreign, seconds(time.Since(start)))
	return nil
}

func foreignDeployment(i int, replicas int32) *appsv1.Deployment {
	name := fmt.Sprintf("foreign-%05d", i)
	labels := map[string]string{"app": name, foreignLabel: "true"}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: fmt.Sprintf("foreign-%03d", i/foreignPerNS), Labels: labels},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: map[string]string{"example.com/owner": "another-team"}},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: ptr.To[int64](1),
					Containers:                    []corev1.Container{{Name: "app", Image: "fixture.invalid/foreign:1"}},
				},
			},
		},
	}
}

// script runs hack/restart-by-kubectl.sh over the n applications.
func (b *bench) script(ctx context.Context, n int) (time.Duration, error) {
	var lines []string
	for _, app := range b.fixtureOptions(n).AppList() {
		lines = append(lines, app.Namespace+" "+app.Name)
	}
	appsFile := filepath.Join(b.dir, "apps.txt")
	if err := os.WriteFile(appsFile, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		return 0, err
	}
	cmd := exec.CommandContext(ctx, "bash", filepath.Join(b.root, "hack", "restart-by-kubectl.sh"), strconv.Itoa(b.wave), appsFile)
	cmd.Env = append(os.Environ(), "KUBECTL="+filepath.Join(b.root, "bin", "k8s", "assets", "kubectl"),
		"KUBECONFIG="+filepath.Join(b.dir, "kubeconfig"))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("the kubectl script: %w", err)
	}
	return time.Since(start), nil
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

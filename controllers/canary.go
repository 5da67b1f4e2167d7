package controllers

import (
	"context"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/convergence"
	"github.com/mtls-rotator/mtls-rotator/internal/pki"
	"github.com/mtls-rotator/mtls-rotator/internal/restart"
	"github.com/mtls-rotator/mtls-rotator/internal/rotation"
)

// The first application a phase restarts is its canary, restarted alone.
// Dapr's sidecar injector decides what its new pods get, as it decides for
// every pod: it patches only pods whose creator it allows (kube-system's
// controllers, its ALLOWED_SERVICE_ACCOUNTS, system:masters), and hands the
// daprd sidecar the anchors it read last. So the canary's pods are the
// evidence a probe of the operator's own cannot be: only when they hold the
// anchors the phase published does any other application restart. An
// injector serving stale anchors (dapr/dapr#7161, or a mount kubelet has
// not refreshed yet) would otherwise start every restarted application on
// the old bundle.

// canaryWait is what status.rotation.waitingFor names while the canary's
// new pods are looked for.
const canaryWait = "the canary's pods"

// canaryGate returns nil once the phase's canary has shown, from its pods,
// that the injector hands out the published anchors (or when no
// application runs a pod to learn it from). Until then it restarts the
// canary, waits for its rollout and its pods, and ends the pass: with a
// wait, or a stall naming the pod that got other anchors, or none.
func (p *pass) canaryGate(ctx context.Context, apps []restart.Observed) error {
	rot, id := p.rot(), rotation.RestartID(p.rot())
	chosen := ""
	if c := rot.Canary; c != nil && c.RestartID == id {
		if c.VerifiedAt != nil {
			return nil
		}
		chosen = c.Workload
	}
	canary, ok := restart.Canary(apps, chosen)
	if !ok {
		return nil
	}
	if rot.Canary == nil || rot.Canary.RestartID != id || rot.Canary.Workload != canary.Ref.String() {
		rot.Canary = &rotatorv1.CanaryStatus{RestartID: id, Workload: canary.Ref.String()}
	}
	switch {
	case !canary.Restarted:
		return p.restartCanary(ctx, canary.Ref)
	case !canary.RolledOut:
		return p.pollUntil(canary.RestartedAt.Add(p.obj.Spec.Applications.GetRolloutTimeout()),
			"rotation %s: waiting for %s, restarted first and alone, to roll out: %s", rot.ID, canary.Ref, canary.Waiting)
	}
	return p.judgeCanary(ctx, canary)
}

// restartCanary restarts the canary, once the Secret and ConfigMap hold
// what was published (guardPublished).
func (p *pass) restartCanary(ctx context.Context, ref restart.Ref) error {
	rot, now := p.rot(), p.now()
	if err := p.guardPublished(ctx, "the first application"); err != nil {
		return err
	}
	if err := p.restartWorkload(ctx, ref, rotation.RestartID(rot)); err != nil {
		return err
	}
	rot.WaitingFor, rot.WaitingSince = appsWait, &now
	return p.pollUntil(now.Add(p.obj.Spec.Applications.GetRolloutTimeout()),
		"rotation %s: restarted %s first, alone: its new pods show which trust anchors Dapr's sidecar injector hands out before any other application restarts%s",
		rot.ID, ref, phaseSuffix(rot))
}

// judgeCanary reads the anchors of the canary's newest pod injected since
// its restart: the published ones open the window; others stall the
// rotation (InjectorStale); none, once the cache has had gateGrace to show
// them, stalls it too (InjectorNotVerified), naming a pod admitted with no
// sidecar where there is one.
func (p *pass) judgeCanary(ctx context.Context, canary restart.Observed) error {
	rot, obj := p.rot(), p.obj
	pods, err := p.observePods(ctx)
	if err != nil {
		return err
	}
	want, err := publishedAnchors(p.target.ConfigMap, keysOf(obj).CA)
	if err != nil {
		return err
	}
	v := convergence.JudgeInjector(pods, canary.Ref.String(), canary.RestartedAt, want)
	switch {
	case v.Published:
		now := p.now()
		rot.Canary.Pod, rot.Canary.VerifiedAt = v.Pod.Namespace+"/"+v.Pod.Name, &now
		p.normal("InjectorVerified", "Restart", "rotation %s: pod %s/%s of %s, restarted first, got the published trust anchors from Dapr's sidecar injector; the other applications restart%s",
			rot.ID, v.Pod.Namespace, v.Pod.Name, canary.Ref, phaseSuffix(rot))
		return nil
	case v.Found:
		got := convergence.ShortAll(v.Pod.Anchors)
		if v.Pod.Problem != "" {
			got = []string{v.Pod.Problem}
		}
		return stall(rotatorv1.InjectorStaleReason,
			"pod %s/%s of %s, restarted first, got trust anchors [%s] from Dapr's sidecar injector, but rotation %s published [%s]%s: no other application was restarted; restart the injector (or check the ConfigMap it mounts), then recreate that pod (kubectl rollout restart), and the rotation goes on by itself once a new pod of it holds the published anchors",
			v.Pod.Namespace, v.Pod.Name, canary.Ref, strings.Join(got, " "), rot.ID, strings.Join(convergence.ShortAll(want), " "), phaseSuffix(rot)).
			retry(p.pollInterval())
	}
	since := rotation.Wait(rot, canaryWait, p.now())
	if p.now().Sub(since.Time) < gateGrace {
		return p.poll("rotation %s: %s rolled out; looking for its new pods with a Dapr sidecar", rot.ID, canary.Ref)
	}
	bare, err := p.uninjectedPod(ctx, canary)
	if err != nil {
		return err
	}
	return stall(rotatorv1.InjectorNotVerifiedReason,
		"%s, restarted first, rolled out, but %s: Dapr's sidecar injector did not patch its new pods, so what it hands out is not known and no other application was restarted; check that the injector runs, that its webhook is registered, and that the pods' creator is one it allows (kube-system's controllers, ALLOWED_SERVICE_ACCOUNTS); then recreate the pod",
		canary.Ref, bare).retry(p.stalledRetry(since.Time))
}

// uninjectedPod names, for a message, a pod of the canary's namespace
// created from its restarted template that has no Dapr sidecar. Such pods
// are not in the cache (it holds injected pods only), so the namespace is
// listed live: once, when the rotation stalls.
func (p *pass) uninjectedPod(ctx context.Context, canary restart.Observed) (string, error) {
	pods := &corev1.PodList{}
	if err := p.reader().List(ctx, pods, client.InNamespace(canary.Namespace)); err != nil {
		return "", fmt.Errorf("listing the pods of %s: %w", canary.Ref, err)
	}
	id := rotation.RestartID(p.rot())
	for i := range pods.Items {
		pod := &pods.Items[i]
		if !restart.RestartedFor(pod.Annotations, id) ||
			slices.ContainsFunc(pod.Spec.Containers, func(c corev1.Container) bool { return c.Name == convergence.SidecarContainer }) {
			continue
		}
		return fmt.Sprintf("its pod %s was created with no daprd container", pod.Name), nil
	}
	return "no pod of it with a Dapr sidecar was observed", nil
}

// publishedAnchors are the fingerprints of the anchors the ConfigMap Sentry
// and the injector read holds.
func publishedAnchors(cm *corev1.ConfigMap, key string) ([]string, error) {
	certs, err := pki.ParseCertificates([]byte(cm.Data[key]))
	if err != nil {
		return nil, err
	}
	fingerprints := make([]string, 0, len(certs))
	for _, c := range certs {
		fingerprints = append(fingerprints, pki.Fingerprint(c))
	}
	return fingerprints, nil
}

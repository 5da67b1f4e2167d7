package controllers

import (
	"fmt"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/bundle"
	"github.com/mtls-rotator/mtls-rotator/internal/convergence"
	"github.com/mtls-rotator/mtls-rotator/internal/pki"
)

// afterPhases records the steps of the phases a rotation went through, the
// Switch phase's control plane finished at switched.
func afterPhases(switched time.Time, phases ...rotatorv1.RotationPhase) objSetter {
	return withRotation(func(r *rotatorv1.RotationStatus) {
		var steps []rotatorv1.StepStatus
		for _, ph := range phases {
			for _, s := range []rotatorv1.RotationStep{rotatorv1.StepPublishing, rotatorv1.StepRestartingControlPlane, rotatorv1.StepRestartingApplications} {
				at := metav1.NewTime(t0.Add(-2 * time.Hour))
				if ph == rotatorv1.PhaseSwitch && s == rotatorv1.StepRestartingControlPlane {
					at = metav1.NewTime(switched)
				}
				steps = append(steps, rotatorv1.StepStatus{Name: s, Phase: ph, StartedAt: at, FinishedAt: &at})
			}
		}
		r.Steps = append(steps, r.Steps...)
	})
}

func started(pod *corev1.Pod, at time.Time) *corev1.Pod {
	pod.Status.StartTime = &metav1.Time{Time: at}
	return pod
}

// TestPhaseGates: Switch and Prune publish only when the Dapr pods that run
// are ready for them, as observed; a closed gate waits, then stalls naming
// the pods, and opens by itself.
func TestPhaseGates(t *testing.T) {
	k := newPKI(t)
	original := bundleFrom(t, k.oldIssuer, k.old)
	overlap := bundleFrom(t, k.oldIssuer, k.old, k.fresh)
	switched := bundleFrom(t, k.freshIssuer, k.old, k.fresh)
	both := append(k.old.CertPEM(), k.fresh.CertPEM()...)
	issuedNew := []client.Object{issued(t, "mesh-root-g2", k.fresh, k.fresh), issued(t, "mesh-issuer", k.freshIssuer, k.fresh)}
	backup := func(before pki.Bundle) *corev1.Secret {
		s := backupOf(t, before)
		s.Annotations[ReplacedByAnnotation] = "r-0"
		return s
	}
	switchedAt := t0.Add(-10 * time.Minute)
	switchPhase := []objSetter{atStep(rotatorv1.StepPublishing, rotatorv1.KeyPolicyRotate, rotatorv1.PhaseSwitch), afterPhases(switchedAt, rotatorv1.PhaseOverlap)}
	prunePhase := []objSetter{atStep(rotatorv1.StepPublishing, rotatorv1.KeyPolicyRotate, rotatorv1.PhasePrune),
		afterPhases(switchedAt, rotatorv1.PhaseOverlap, rotatorv1.PhaseSwitch)}
	tests := []struct {
		name       string
		obj        *rotatorv1.MTLSRootRotation
		installed  pki.Bundle
		pods       []client.Object
		want       string
		message    string
		wantEvents []string
		retry      time.Duration // a stall's: looked at again after
	}{{
		name: "switch: every pod trusts the new root",
		obj:  rotationObj(switchPhase...), installed: overlap,
		pods: []client.Object{sidecarPod("team", "a", "web-1", ns, both), sidecarPod("team", "b", "web-1", ns, both)},
		want: "", wantEvents: []string{"TrustBundlePublished"},
	}, {
		name: "switch: a bare pod on the old root waits, within the grace",
		obj:  rotationObj(switchPhase...), installed: overlap,
		pods: []client.Object{sidecarPod("team", "a", "web-1", ns, both), sidecarPod("team", "bare", "", ns, k.old.CertPEM())},
		want: "wait", message: "team/bare (no owner: it does not trust root " + pki.Fingerprint(k.fresh.Cert)[:11] + ")",
	}, {
		name: "switch: then stalls naming it, whatever the spec restarts",
		obj:  rotationObj(append(switchPhase, waitingSince(podsWait, t0.Add(-time.Minute)))...), installed: overlap,
		pods: []client.Object{sidecarPod("team", "a", "web-1", ns, both), sidecarPod("team", "bare", "", ns, k.old.CertPEM())},
		want: "stall:" + rotatorv1.PodsNotConvergedReason, message: "waits for 1 of 2 Dapr pods: team/bare", retry: 15 * time.Second,
	}, {
		name: "switch: a stall looks again by itself less often the longer it lasts",
		obj:  rotationObj(append(switchPhase, waitingSince(podsWait, t0.Add(-time.Hour)))...), installed: overlap,
		pods: []client.Object{sidecarPod("team", "bare", "", ns, k.old.CertPEM())},
		want: "stall:" + rotatorv1.PodsNotConvergedReason, retry: maxStalledRetry,
	}, {
		name: "switch: a pod whose anchors cannot be read holds it too",
		obj:  rotationObj(switchPhase...), installed: overlap,
		pods: []client.Object{sidecarPod("jobs", "x", "", ns, nil)},
		want: "wait", message: "its trust anchors cannot be read",
	}, {
		name: "switch: opens once they converge, and says so",
		obj:  rotationObj(append(switchPhase, waitingSince(podsWait, t0.Add(-time.Minute)))...), installed: overlap,
		pods: []client.Object{sidecarPod("team", "a", "web-1", ns, both)},
		want: "", wantEvents: []string{"PodsConverged", "TrustBundlePublished"},
	}, {
		name: "switch: pods of another control plane do not count",
		obj:  rotationObj(switchPhase...), installed: overlap,
		pods: []client.Object{sidecarPod("team", "a", "web-1", ns, both), sidecarPod("team", "other", "", "dapr-other", k.old.CertPEM())},
		want: "", wantEvents: []string{"TrustBundlePublished"},
	}, {
		name: "prune: every pod started after Sentry signed with the new issuer",
		obj:  rotationObj(prunePhase...), installed: switched,
		pods: []client.Object{started(sidecarPod("team", "a", "web-1", ns, both), switchedAt.Add(time.Minute))},
		want: "", wantEvents: []string{"TrustBundlePublished"},
	}, {
		name: "prune: a pod started before may still present an old-issuer certificate",
		obj:  rotationObj(prunePhase...), installed: switched,
		pods: []client.Object{started(sidecarPod("team", "a", "web-1", ns, both), switchedAt.Add(-time.Minute))},
		want: "wait", message: "before Sentry signed with the new issuer",
	}, {
		name: "prune: not once workloadCertTTL and allowedClockSkew passed since",
		obj: rotationObj(append(prunePhase, func(obj *rotatorv1.MTLSRootRotation) {
			obj.Status.DaprConfiguration = &rotatorv1.DaprConfigurationStatus{WorkloadCertTTL: "5m", AllowedClockSkew: "1m"}
		})...), installed: switched,
		pods: []client.Object{started(sidecarPod("team", "a", "web-1", ns, both), switchedAt.Add(-time.Minute))},
		want: "", wantEvents: []string{"TrustBundlePublished"},
	}, {
		name: "a rotation that went straight to prune over nothing installed is not gated",
		obj:  rotationObj(atStep(rotatorv1.StepPublishing, rotatorv1.KeyPolicyRotate, rotatorv1.PhasePrune)), installed: pki.Bundle{},
		pods: []client.Object{sidecarPod("team", "bare", "", ns, nil)},
		want: "", wantEvents: []string{"TrustBundlePublished"},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			objs := append(append(trustBundle(tt.installed), issuedNew...), tt.pods...)
			if !tt.installed.IsEmpty() {
				objs = append(objs, backup(original))
			}
			h := newHarness(t, append(objs, tt.obj)...)
			p := h.pass("mesh")
			err := p.stepPublishing(t.Context())
			g.Expect(kindOf(err)).To(Equal(tt.want), "%v", err)
			if tt.message != "" {
				g.Expect(err.Error()).To(ContainSubstring(tt.message))
			}
			g.Expect(h.eventReasons()).To(Equal(tt.wantEvents))
			if tt.retry != 0 {
				g.Expect(err.(*stallError).RetryAfter).To(Equal(tt.retry))
			}
			if tt.want != "" {
				s := h.get(&corev1.Secret{}, "dapr-trust-bundle").(*corev1.Secret)
				g.Expect(bundle.FromSecret(s.Data, keysOf(p.obj))).To(Equal(tt.installed), "a closed gate publishes nothing")
			}
		})
	}
}

// TestApplicationsAlreadyConvergedAreNotRestarted: an application whose pods
// all hold what the phase needs (redeployed by its owner since the publish,
// say) is skipped and counted; one pod short of it, it is restarted.
func TestApplicationsAlreadyConvergedAreNotRestarted(t *testing.T) {
	k := newPKI(t)
	renewed := bundleFrom(t, k.renewIssuer, k.renewed)
	switched := bundleFrom(t, k.freshIssuer, k.old, k.fresh)
	both := append(k.old.CertPEM(), k.fresh.CertPEM()...)
	switchedAt := t0.Add(-10 * time.Minute)
	apps := []client.Object{daprApp("team", "a", ""), daprApp("team", "b", ""), daprApp("team", "c", "")}
	// The canary, another application, went first and opened the window.
	waves := func(obj *rotatorv1.MTLSRootRotation) {
		obj.Spec.Applications.MaxConcurrent = 5
		canaryVerified("Deployment team/z")(obj)
	}
	tests := []struct {
		name         string
		obj          *rotatorv1.MTLSRootRotation
		installed    pki.Bundle
		pods         []client.Object
		wantWrites   []string
		wantProgress string
	}{{
		name: "same key: pods on the published root are not restarted", installed: renewed,
		obj:        rotationObj(atStep(rotatorv1.StepRestartingApplications, rotatorv1.KeyPolicyReuse, ""), waves),
		pods:       []client.Object{sidecarPod("team", "a-5d4f9-x", "a-5d4f9", ns, k.renewed.CertPEM()), sidecarPod("team", "a-5d4f9-y", "a-5d4f9", ns, k.renewed.CertPEM())},
		wantWrites: []string{"patch Deployment/b", "patch Deployment/c"}, wantProgress: "1/3",
	}, {
		name: "same key: one pod still on the previous root certificate, restarted", installed: renewed,
		obj:        rotationObj(atStep(rotatorv1.StepRestartingApplications, rotatorv1.KeyPolicyReuse, ""), waves),
		pods:       []client.Object{sidecarPod("team", "a-5d4f9-x", "a-5d4f9", ns, k.renewed.CertPEM()), sidecarPod("team", "a-5d4f9-y", "a-5d4f9", ns, k.old.CertPEM())},
		wantWrites: []string{"patch Deployment/a", "patch Deployment/b", "patch Deployment/c"}, wantProgress: "0/3",
	}, {
		name: "prune: a pod that still trusts the old root too, restarted", installed: bundleFrom(t, k.freshIssuer, k.fresh),
		obj: rotationObj(atStep(rotatorv1.StepRestartingApplications, rotatorv1.KeyPolicyRotate, rotatorv1.PhasePrune), waves,
			afterPhases(switchedAt, rotatorv1.PhaseOverlap, rotatorv1.PhaseSwitch)),
		pods:       []client.Object{sidecarPod("team", "a-5d4f9-x", "a-5d4f9", ns, both)},
		wantWrites: []string{"patch Deployment/a", "patch Deployment/b", "patch Deployment/c"}, wantProgress: "0/3",
	}, {
		name: "switch: pods that started after Sentry signed with the new issuer are not restarted", installed: switched,
		obj: rotationObj(atStep(rotatorv1.StepRestartingApplications, rotatorv1.KeyPolicyRotate, rotatorv1.PhaseSwitch), waves,
			afterPhases(switchedAt, rotatorv1.PhaseOverlap, rotatorv1.PhaseSwitch)),
		pods:       []client.Object{started(sidecarPod("team", "a-5d4f9-x", "a-5d4f9", ns, both), switchedAt.Add(time.Minute))},
		wantWrites: []string{"patch Deployment/b", "patch Deployment/c"}, wantProgress: "1/3",
	}, {
		name: "switch: the same pods started before it, restarted", installed: switched,
		obj: rotationObj(atStep(rotatorv1.StepRestartingApplications, rotatorv1.KeyPolicyRotate, rotatorv1.PhaseSwitch), waves,
			afterPhases(switchedAt, rotatorv1.PhaseOverlap, rotatorv1.PhaseSwitch)),
		pods:       []client.Object{started(sidecarPod("team", "a-5d4f9-x", "a-5d4f9", ns, both), switchedAt.Add(-time.Minute))},
		wantWrites: []string{"patch Deployment/a", "patch Deployment/b", "patch Deployment/c"}, wantProgress: "0/3",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			h := newHarness(t, append(append(append(trustBundle(tt.installed), apps...), tt.pods...), tt.obj)...)
			p := h.pass("mesh")
			g.Expect(kindOf(p.stepApplications(t.Context()))).To(Equal("wait"))
			g.Expect(h.writes).To(Equal(tt.wantWrites))
			g.Expect(p.obj.Status.Applications.Progress).To(Equal(tt.wantProgress))
		})
	}
}

// orphanReplicaSetPod is a Dapr pod of a ReplicaSet no Deployment owns: no
// pod-template-hash label, whatever the ReplicaSet's name looks like.
func orphanReplicaSetPod(namespace, name, replicaSet string, anchors []byte) *corev1.Pod {
	p := sidecarPod(namespace, name, replicaSet, ns, anchors)
	delete(p.Labels, convergence.PodTemplateHashLabel)
	return p
}

// TestGateEvictsUnmanagedPodsWhenAskedTo: with evictUnmanagedPods, a bare
// pod and a pod of a ReplicaSet of its own holding the Switch are evicted
// (and announced); the next pass publishes.
// A pod of a workload the rotation restarts is never evicted.
func TestGateEvictsUnmanagedPodsWhenAskedTo(t *testing.T) {
	g := NewWithT(t)
	k := newPKI(t)
	overlap := bundleFrom(t, k.oldIssuer, k.old, k.fresh)
	backup := backupOf(t, bundleFrom(t, k.oldIssuer, k.old))
	backup.Annotations[ReplacedByAnnotation] = "r-0"
	obj := rotationObj(atStep(rotatorv1.StepPublishing, rotatorv1.KeyPolicyRotate, rotatorv1.PhaseSwitch), afterPhases(t0, rotatorv1.PhaseOverlap),
		withSpec(func(s *rotatorv1.MTLSRootRotationSpec) { s.Applications.EvictUnmanagedPods = true }))
	h := newHarness(t, append(trustBundle(overlap), issued(t, "mesh-root-g2", k.fresh, k.fresh), issued(t, "mesh-issuer", k.freshIssuer, k.fresh), backup,
		daprApp("team", "a", ""), sidecarPod("team", "a-5d4f9-x", "a-5d4f9", ns, k.old.CertPEM()),
		sidecarPod("team", "bare", "", ns, k.old.CertPEM()), orphanReplicaSetPod("team", "rs-of-its-own-x", "rs-of-its-own", k.old.CertPEM()), obj)...)
	p := h.pass("mesh")
	err := p.stepPublishing(t.Context())
	g.Expect(kindOf(err)).To(Equal("wait"), "%v", err)
	g.Expect(h.eventReasons()).To(Equal([]string{rotatorv1.UnmanagedPodsEvictedReason}))
	g.Expect(h.client.Get(t.Context(), client.ObjectKey{Namespace: "team", Name: "bare"}, &corev1.Pod{})).NotTo(Succeed(), "evicted")
	g.Expect(h.client.Get(t.Context(), client.ObjectKey{Namespace: "team", Name: "rs-of-its-own-x"}, &corev1.Pod{})).NotTo(Succeed(),
		"a ReplicaSet of its own is no Deployment's, whatever its name: evicted")
	g.Expect(h.client.Get(t.Context(), client.ObjectKey{Namespace: "team", Name: "a-5d4f9-x"}, &corev1.Pod{})).To(Succeed(), "a Deployment's pod is left to its restart")
}

// TestSameKeyRotationEvictsItsStragglersWhenAskedTo: with
// evictUnmanagedPods, once a same-key rotation has restarted its
// applications, the pods no restart reached that hold only the root
// certificate it replaced are evicted, and pods holding the published one
// are not; without it, nothing is evicted (status.convergence.cutOff names
// them instead).
func TestSameKeyRotationEvictsItsStragglersWhenAskedTo(t *testing.T) {
	k := newPKI(t)
	for _, evict := range []bool{true, false} {
		t.Run(fmt.Sprintf("evictUnmanagedPods %v", evict), func(t *testing.T) {
			g := NewWithT(t)
			obj := rotationObj(atStep(rotatorv1.StepRestartingApplications, rotatorv1.KeyPolicyReuse, ""), canaryVerified("Deployment team/a"),
				withSpec(func(s *rotatorv1.MTLSRootRotationSpec) { s.Applications.EvictUnmanagedPods = evict }))
			h := newHarness(t, append(trustBundle(bundleFrom(t, k.renewIssuer, k.renewed)), daprApp("team", "a", "r-1"),
				sidecarPod("team", "bare", "", ns, k.old.CertPEM()), sidecarPod("team", "bare-renewed", "", ns, k.renewed.CertPEM()), obj)...)
			g.Expect(kindOf(h.pass("mesh").stepApplications(t.Context()))).To(BeEmpty())
			err := h.client.Get(t.Context(), client.ObjectKey{Namespace: "team", Name: "bare"}, &corev1.Pod{})
			g.Expect(apierrors.IsNotFound(err)).To(Equal(evict), "evicted only when asked to: %v", err)
			g.Expect(h.client.Get(t.Context(), client.ObjectKey{Namespace: "team", Name: "bare-renewed"}, &corev1.Pod{})).To(Succeed())
			if evict {
				g.Expect(h.eventReasons()).To(ContainElement(rotatorv1.UnmanagedPodsEvictedReason))
			}
		})
	}
}

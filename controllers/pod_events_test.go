package controllers

import (
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/convergence"
)

// queued records what a handler adds to the work queue, and when (0: at once).
type queued struct {
	workqueue.TypedRateLimitingInterface[reconcile.Request]
	after map[string]time.Duration
}

func (q *queued) AddAfter(r reconcile.Request, d time.Duration) { q.after[r.String()] = d }
func (q *queued) Add(r reconcile.Request)                       { q.after[r.String()] = 0 }

// TestPodEventsWakeTheirControlPlane: a Dapr pod event wakes the rotations
// of its control plane only; soon those waiting on pods (a closed gate, a
// lazy wait), coalesced the others; an update that changes nothing
// convergence reads wakes none.
func TestPodEventsWakeTheirControlPlane(t *testing.T) {
	k := newPKI(t)
	waiting := func(what string) objSetter {
		return withRotation(func(r *rotatorv1.RotationStatus) { r.WaitingFor = what })
	}
	named := func(name string, set ...objSetter) *rotatorv1.MTLSRootRotation {
		obj := rotationObj(set...)
		obj.Name = name
		return obj
	}
	other := named("elsewhere")
	other.Namespace = "other-dapr"
	h := newHarness(t,
		named("gate", atStep(rotatorv1.StepPublishing, rotatorv1.KeyPolicyRotate, rotatorv1.PhaseSwitch), waiting(podsWait)),
		named("lazy", atStep(rotatorv1.StepRestartingApplications, rotatorv1.KeyPolicyReuse, ""), waiting(lazyWait)),
		named("rolling", atStep(rotatorv1.StepRestartingApplications, rotatorv1.KeyPolicyReuse, ""), waiting("applications wave")),
		named("idle"), other)
	handler := h.r.podEvents()
	pod := func(anchors []byte) *corev1.Pod {
		return convergence.Trim(sidecarPod("team", "a-1", "a-rs", ns, anchors))
	}
	key := func(name string) string { return types.NamespacedName{Namespace: ns, Name: name}.String() }

	g := NewWithT(t)
	q := &queued{after: map[string]time.Duration{}}
	handler.Create(t.Context(), event.CreateEvent{Object: pod(k.old.CertPEM())}, q)
	g.Expect(q.after).To(Equal(map[string]time.Duration{
		key("gate"): podWake, key("lazy"): podWake, key("rolling"): podCoalesce, key("idle"): podCoalesce,
	}), "only this control plane's rotations; soon those waiting on pods")

	q = &queued{after: map[string]time.Duration{}}
	before, after := pod(k.old.CertPEM()), pod(k.old.CertPEM())
	after.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	handler.Update(t.Context(), event.UpdateEvent{ObjectOld: before, ObjectNew: after}, q)
	g.Expect(q.after).To(BeEmpty(), "a status update convergence does not read")

	after = pod(k.renewed.CertPEM())
	handler.Update(t.Context(), event.UpdateEvent{ObjectOld: before, ObjectNew: after}, q)
	g.Expect(q.after).To(HaveLen(4), "other anchors")

	q = &queued{after: map[string]time.Duration{}}
	elsewhere := convergence.Trim(sidecarPod("team", "b-1", "b-rs", "other-dapr", k.old.CertPEM()))
	handler.Delete(t.Context(), event.DeleteEvent{Object: elsewhere}, q)
	g.Expect(q.after).To(Equal(map[string]time.Duration{"other-dapr/elsewhere": podCoalesce}))
}

package controllers

import (
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
)

// TestRestartedWorkloadsWakeTheirRotation: a workload's update wakes, at
// once, the rotation in flight whose restart (or rollback) it carries, and
// nothing else: not a finished rotation, not for a workload no rotation
// restarted.
func TestRestartedWorkloadsWakeTheirRotation(t *testing.T) {
	named := func(name, id string, set ...objSetter) *rotatorv1.MTLSRootRotation {
		obj := rotationObj(set...)
		obj.Name, obj.Status.Rotation.ID = name, id
		return obj
	}
	finished := named("finished", "r-0", atStep(rotatorv1.StepCompleted, rotatorv1.KeyPolicyReuse, ""))
	h := newHarness(t,
		named("same-key", "r-1", atStep(rotatorv1.StepRestartingApplications, rotatorv1.KeyPolicyReuse, "")),
		named("new-key", "r-2", atStep(rotatorv1.StepRestartingControlPlane, rotatorv1.KeyPolicyRotate, rotatorv1.PhaseSwitch)),
		finished)
	handler := h.r.workloadEvents()
	for _, tt := range []struct {
		name string
		obj  client.Object
		want map[string]time.Duration
	}{
		{"an application of a same-key rotation", daprApp("team", "a", "r-1"), map[string]time.Duration{ns + "/same-key": 0}},
		{"a control-plane workload of a phase", deployment("dapr-sentry", "r-2-switch"), map[string]time.Duration{ns + "/new-key": 0}},
		{"a workload rolled back in that phase", deployment("dapr-sentry", "r-2-switch-rollback"), map[string]time.Duration{ns + "/new-key": 0}},
		{"a workload of an earlier phase", deployment("dapr-sentry", "r-2-overlap"), map[string]time.Duration{}},
		{"a workload of a finished rotation", daprApp("team", "b", "r-0"), map[string]time.Duration{}},
		{"a workload no rotation restarted", daprApp("team", "c", ""), map[string]time.Duration{}},
		{"an Argo Rollout", argoRollout("team", "web", "r-1", false), map[string]time.Duration{ns + "/same-key": 0}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			q := &queued{after: map[string]time.Duration{}}
			handler.Update(t.Context(), event.UpdateEvent{ObjectOld: tt.obj, ObjectNew: tt.obj}, q)
			NewWithT(t).Expect(q.after).To(Equal(tt.want))
		})
	}
}

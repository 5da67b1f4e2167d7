package e2e

import (
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/types"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
)

// TestRotationsAreWokenByEventsNotPolls: with the poll interval set to an
// hour, a first issuance and then a new-key rotation (three phases, each with
// its gate, control-plane and application restarts) still complete: every
// wait ends on a watch event (a Certificate issued, a restarted workload
// rolled out, a Dapr pod started), never on a poll.
func TestRotationsAreWokenByEventsNotPolls(t *testing.T) {
	freshBundle(t)
	startOperatorWith(t, operatorOptions{pollInterval: time.Hour})
	key := newRotation(t, "events", rotatorv1.MTLSRootRotationSpec{Trigger: "first", Applications: rotatorv1.ApplicationsSpec{MaxConcurrent: 2}})
	waitRotationCompleted(t, key, "first")

	done := rotateToANewKey(t, key)
	assertRestartedOnce(t, done.Status.LastCompletedRotation.ID+"-prune")
}

// rotateToANewKey has the settled object key rotate to a new key (trigger
// "new-key") and returns it completed, through its three phases.
func rotateToANewKey(t *testing.T, key types.NamespacedName) *rotatorv1.MTLSRootRotation {
	t.Helper()
	obj := getRotation(t, key)
	obj.Spec.Trigger, obj.Spec.Root.KeyPolicy = "new-key", rotatorv1.KeyPolicyRotate
	updateRotation(t, obj)
	done := waitRotationCompleted(t, key, "new-key")
	NewWithT(t).Expect(publishedPhases(done)).To(Equal([]rotatorv1.RotationPhase{rotatorv1.PhaseOverlap, rotatorv1.PhaseSwitch, rotatorv1.PhasePrune}))
	return done
}

package e2e

import (
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/e2e/fixture"
)

// TestAvailabilityOracle proves that a same-key rotation keeps every handshake
// working at every observed moment, and that the oracle does catch a rotation
// that breaks them (a new root key published without a trust overlap).
func TestAvailabilityOracle(t *testing.T) {
	freshBundle(t)
	startOperator(t)
	key := newRotation(t, "oracle", rotatorv1.MTLSRootRotationSpec{
		Trigger: "first", Applications: rotatorv1.ApplicationsSpec{MaxConcurrent: 1},
	})
	waitRotationCompleted(t, key, "first") // every pod now holds real anchors

	t.Run("same-key rotation: zero failed handshakes", func(t *testing.T) {
		g := NewWithT(t)
		o := startOracle(t)
		obj := getRotation(t, key)
		obj.Spec.Trigger = "second"
		updateRotation(t, obj)
		waitRotationCompleted(t, key, "second")
		time.Sleep(200 * time.Millisecond)
		o.stop()
		moments, mixed, failures := o.report()
		t.Logf("oracle: %d moments observed, %d with pods on different issuers", moments, mixed)
		g.Expect(failures).To(BeEmpty())
		g.Expect(moments).To(BeNumerically(">=", 10))
		g.Expect(mixed).To(BeNumerically(">", 0), "the oracle must have seen the mesh mid-rotation")
	})

	t.Run("new root key without overlap: caught", func(t *testing.T) {
		g := NewWithT(t)
		o := startOracle(t)
		// What a careless manual rotation does: a new root and issuer (as
		// Sentry makes them), then restarts.
		installSentryBundle(t)
		restartWorkload(t, controlPlaneRef(sentryWorkload), "manual")
		waitDeploymentRolledOut(t, fixture.ControlPlaneNamespace, fixture.Sentry)
		app := daprApps()[0]
		restartWorkload(t, appRef(app), "manual")
		waitDeploymentRolledOut(t, app.Namespace, app.Name)
		time.Sleep(200 * time.Millisecond)
		o.stop()
		_, _, failures := o.report()
		t.Logf("oracle caught %d distinct failures, for example: %s", len(failures), first(failures))
		g.Expect(failures).NotTo(BeEmpty())
		g.Expect(strings.Join(failures, "\n")).To(ContainSubstring("rejects " + app.Namespace + "/" + app.Name))
	})
}

func first(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}

package e2e

import (
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/types"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/e2e/fixture"
	"github.com/mtls-rotator/mtls-rotator/internal/pki"
	"github.com/mtls-rotator/mtls-rotator/internal/rotation"
)

// crashPoint stops the operator as soon as the rotation's status matches.
type crashPoint struct {
	name string
	at   func(r *rotatorv1.RotationStatus, obj *rotatorv1.MTLSRootRotation) bool
}

// runWithCrashes starts the operator, kills it at each crash point in turn,
// then lets a last one finish the rotation.
func runWithCrashes(t *testing.T, key types.NamespacedName, trigger string, points []crashPoint) *rotatorv1.MTLSRootRotation {
	t.Helper()
	for _, p := range points {
		op := startOperator(t)
		NewWithT(t).Eventually(func(g Gomega) {
			obj := getRotation(t, key)
			r := obj.Status.Rotation
			g.Expect(r).NotTo(BeNil())
			g.Expect(r.Trigger).To(Equal(trigger))
			g.Expect(p.at(r, obj)).To(BeTrue(), "waiting to crash at %s; rotation at %s (%s)", p.name, r.Step, r.Message)
		}).WithTimeout(2 * time.Minute).WithPolling(5 * time.Millisecond).Should(Succeed())
		op.stop()
		t.Logf("operator killed at %s (step %s)", p.name, getRotation(t, key).Status.Rotation.Step)
	}
	// The last operator stops with the rotation: one left running would
	// race the next run's operators (two operators at once restart twice).
	op := startOperator(t)
	defer op.stop()
	return waitRotationCompleted(t, key, trigger)
}

// TestCrashesDoNotRestartAnythingTwice kills the operator at every step of a
// first issuance and of a renewal; each time a new one resumes from status.
func TestCrashesDoNotRestartAnythingTwice(t *testing.T) {
	g := NewWithT(t)
	freshBundle(t)
	key := newRotation(t, "crashy", rotatorv1.MTLSRootRotationSpec{
		Trigger: "one", Applications: rotatorv1.ApplicationsSpec{MaxConcurrent: 1},
	})
	stepIs := func(s rotatorv1.RotationStep) func(*rotatorv1.RotationStatus, *rotatorv1.MTLSRootRotation) bool {
		return func(r *rotatorv1.RotationStatus, _ *rotatorv1.MTLSRootRotation) bool { return r.Step == s }
	}
	points := []crashPoint{
		{"issuing", stepIs(rotatorv1.StepIssuing)},
		{"control plane, mid-way", func(r *rotatorv1.RotationStatus, _ *rotatorv1.MTLSRootRotation) bool {
			return r.Step == rotatorv1.StepRestartingControlPlane && strings.Contains(r.WaitingFor, fixture.Operator)
		}},
		// Mid-way as the cluster shows it: an application restarted, though
		// status may not count it yet (progress is written every 5 s).
		{"applications, mid-way", func(r *rotatorv1.RotationStatus, _ *rotatorv1.MTLSRootRotation) bool {
			return r.Step == rotatorv1.StepRestartingApplications && len(restartedApps(t, rotation.RestartID(r))) >= 1
		}},
	}
	first := runWithCrashes(t, key, "one", points)
	assertRestartedOnce(t, first.Status.LastCompletedRotation.ID)

	obj := getRotation(t, key)
	obj.Spec.Trigger = "two"
	updateRotation(t, obj)
	points[0] = crashPoint{"renewal requested", func(r *rotatorv1.RotationStatus, _ *rotatorv1.MTLSRootRotation) bool {
		return r.Step == rotatorv1.StepIssuing && r.RootRevision > 0
	}}
	// Right after the publish, before any restart completed.
	points = append(points[:1], append([]crashPoint{{"published", stepIs(rotatorv1.StepRestartingControlPlane)}}, points[1:]...)...)
	second := runWithCrashes(t, key, "two", points)
	assertRestartedOnce(t, second.Status.LastCompletedRotation.ID)
	g.Expect(second.Status.Rotation.RootRevision).To(Equal(first.Status.Rotation.RootRevision+1), "the root was renewed once")
	g.Expect(second.Status.Rotation.IssuerRevision).To(Equal(first.Status.Rotation.IssuerRevision+1), "the issuer was renewed once")
}

// TestRotateSurvivesCrashesAtEveryPhaseBoundary kills the operator as each
// phase of a trust-overlap rotation starts and mid-way through its restarts;
// within each phase no workload is restarted twice.
func TestRotateSurvivesCrashesAtEveryPhaseBoundary(t *testing.T) {
	freshBundle(t)
	sentryRoot := installSentryBundle(t)
	key := newRotation(t, "crashy-rotate", rotatorv1.MTLSRootRotationSpec{
		Trigger: "one", Root: rotatorv1.RootSpec{KeyPolicy: rotatorv1.KeyPolicyRotate},
		Applications: rotatorv1.ApplicationsSpec{MaxConcurrent: 1},
	})
	at := func(phase rotatorv1.RotationPhase, step rotatorv1.RotationStep) func(*rotatorv1.RotationStatus, *rotatorv1.MTLSRootRotation) bool {
		return func(r *rotatorv1.RotationStatus, _ *rotatorv1.MTLSRootRotation) bool {
			return r.Phase == phase && r.Step == step
		}
	}
	var points []crashPoint
	for _, phase := range []rotatorv1.RotationPhase{rotatorv1.PhaseOverlap, rotatorv1.PhaseSwitch, rotatorv1.PhasePrune} {
		points = append(points,
			crashPoint{string(phase) + " published", at(phase, rotatorv1.StepRestartingControlPlane)},
			crashPoint{string(phase) + " applications", at(phase, rotatorv1.StepRestartingApplications)},
		)
	}
	done := runWithCrashes(t, key, "one", points)
	for _, phase := range []string{"overlap", "switch", "prune"} {
		assertRestartedOnce(t, done.Status.LastCompletedRotation.ID+"-"+phase)
	}
	s, _ := readBundle(t)
	anchors, err := pki.ParseCertificates(s.Data["ca.crt"])
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	NewWithT(t).Expect(anchors).To(HaveLen(1))
	NewWithT(t).Expect(pki.SamePublicKey(anchors[0], sentryRoot.Cert)).To(BeFalse())
}

package rotation

import (
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
)

// allSteps are the steps a rotation in status can be at, RolledBack included.
var allSteps = append(slices.Clone(Steps), rotatorv1.StepRollingBack, rotatorv1.StepRolledBack)

// FuzzDecide decides over arbitrary specs and statuses: a rotation in
// status or not, at any step, phase and trigger, with or without a last
// completed rotation, certificates at any distance from expiry, a renewal
// margin, a drift. Whatever they are, the decision holds together: a known
// action, a start exactly when it begins, a reason when it holds or stalls,
// a new id unlike the last completed one, a renewal that keeps the key.
func FuzzDecide(f *testing.F) {
	f.Add("b", "a", "a", uint8(0), uint8(0), true, true, "", int16(0), int32(8000), int32(8000), false)
	f.Add("a", "a", "a", uint8(6), uint8(0), true, true, "", int16(168), int32(100), int32(8000), true)
	f.Add("a", "a", "a", uint8(8), uint8(1), true, false, "ca.crt differs", int16(1), int32(-1), int32(-1), false)
	f.Add("", "", "", uint8(3), uint8(2), false, true, "", int16(-5), int32(0), int32(0), true)
	f.Fuzz(func(t *testing.T, trigger, rotTrigger, lastTrigger string, step, phase uint8, inFlight, hasLast bool,
		drift string, renewBeforeHours int16, issuerHoursLeft, rootHoursLeft int32, rotate bool) {
		spec, status := &rotatorv1.MTLSRootRotationSpec{Trigger: trigger}, &rotatorv1.MTLSRootRotationStatus{}
		if rotate {
			spec.Root.KeyPolicy = rotatorv1.KeyPolicyRotate
		}
		if renewBeforeHours > 0 {
			spec.RenewBefore = &metav1.Duration{Duration: time.Duration(renewBeforeHours) * time.Hour}
		}
		now := metav1.NewTime(t0)
		status.Issuer = &rotatorv1.CertificateStatus{NotAfter: metav1.NewTime(t0.Add(time.Duration(issuerHoursLeft) * time.Hour))}
		status.Root = &rotatorv1.CertificateStatus{NotAfter: metav1.NewTime(t0.Add(time.Duration(rootHoursLeft) * time.Hour))}
		if hasLast {
			status.LastCompletedRotation = &rotatorv1.CompletedRotation{ID: "r-last", Trigger: lastTrigger,
				Cause: rotatorv1.CauseTrigger, FinishedAt: metav1.NewTime(t0.Add(-time.Hour))}
		}
		if inFlight {
			rot := Start("r-now", rotTrigger, "hash", spec.Root.GetKeyPolicy(), now)
			rot.Step = allSteps[int(step)%len(allSteps)]
			if rot.Phase != "" {
				rot.Phase = Phases[int(phase)%len(Phases)]
			}
			status.Rotation = rot
		}
		d := Decide(spec, status, Observed{Drift: drift}, t0)

		if !slices.Contains([]Action{Continue, Begin, Idle, Hold, Stall}, d.Action) {
			t.Fatalf("unknown action %q", d.Action)
		}
		if (d.Action == Begin) != (d.Start != nil) {
			t.Fatalf("action %s with start %+v", d.Action, d.Start)
		}
		if (d.Action == Hold || d.Action == Stall) && d.Reason == "" {
			t.Fatalf("%s without a reason", d.Action)
		}
		if d.Replace != "" && (status.Rotation == nil || d.Replace != status.Rotation.ID || Published(status.Rotation)) {
			t.Fatalf("replaces %q, which is not the unpublished rotation in status", d.Replace)
		}
		if d.Action == Continue && (!InFlight(status.Rotation) || d.Replace != "") {
			t.Fatal("continues a rotation that is not in flight")
		}
		if d.Start == nil {
			return
		}
		if id := NewID("uid", spec.Trigger, d.Start.PreviousID); hasLast && id == status.LastCompletedRotation.ID {
			t.Fatalf("a new rotation takes the last one's id %s", id)
		}
		if d.Start.Cause == rotatorv1.CauseRenewal && d.Start.KeyPolicy != rotatorv1.KeyPolicyReuse {
			t.Fatal("a renewal that does not keep the key")
		}
	})
}

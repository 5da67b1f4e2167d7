package rotation

import (
	"testing"
	"time"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
)

func TestNewIDIsDeterministicAndChanges(t *testing.T) {
	g := NewWithT(t)
	a := NewID("uid", "t1", "")
	g.Expect(a).To(MatchRegexp(`^r-[0-9a-f]{10}$`))
	g.Expect(NewID("uid", "t1", "")).To(Equal(a))
	g.Expect(NewID("uid", "t1", a)).NotTo(Equal(a), "the same trigger again is a new rotation")
	g.Expect(NewID("uid", "t2", "")).NotTo(Equal(a))
	g.Expect(NewID("other", "t1", "")).NotTo(Equal(a))
}

func TestSpecHashIgnoresTriggerAndSuspend(t *testing.T) {
	g := NewWithT(t)
	s := rotatorv1.MTLSRootRotationSpec{Trigger: "a"}
	h := SpecHash(s)
	s.Trigger, s.Suspend = "b", true
	g.Expect(SpecHash(s)).To(Equal(h))
	s.Applications.MaxConcurrent = 2
	g.Expect(SpecHash(s)).NotTo(Equal(h))
}

func TestAdvanceWalksEveryStepOnce(t *testing.T) {
	g := NewWithT(t)
	t0 := metav1.NewTime(time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC))
	r := Start("r-1", "t", "h", rotatorv1.KeyPolicyReuse, t0)
	g.Expect(InFlight(r)).To(BeTrue())
	var seen []rotatorv1.RotationStep
	for i := 1; InFlight(r); i++ {
		Wait(r, "something", t0)
		seen = append(seen, Advance(r, metav1.NewTime(t0.Add(time.Duration(i)*time.Minute))))
		g.Expect(r.WaitingFor).To(BeEmpty())
	}
	g.Expect(seen).To(Equal(Steps[1:]))
	g.Expect(r.Steps).To(HaveLen(len(Steps)))
	for _, s := range r.Steps {
		g.Expect(s.FinishedAt).NotTo(BeNil(), "step %s has no finish time", s.Name)
		g.Expect(s.FinishedAt.Before(&s.StartedAt)).To(BeFalse())
	}
	g.Expect(Advance(r, t0)).To(Equal(rotatorv1.StepCompleted))
	g.Expect(r.Steps).To(HaveLen(len(Steps)))
}

func TestRotateRunsThreePhases(t *testing.T) {
	g := NewWithT(t)
	t0 := metav1.NewTime(time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC))
	r := Start("r-1", "t", "h", rotatorv1.KeyPolicyRotate, t0)
	g.Expect(r.Phase).To(Equal(rotatorv1.PhaseOverlap))
	type at struct {
		Phase rotatorv1.RotationPhase
		Step  rotatorv1.RotationStep
		ID    string
	}
	var seen []at
	for InFlight(r) {
		Advance(r, t0)
		seen = append(seen, at{r.Phase, r.Step, RestartID(r)})
	}
	g.Expect(seen).To(Equal([]at{
		{rotatorv1.PhaseOverlap, rotatorv1.StepVerifying, "r-1-overlap"},
		{rotatorv1.PhaseOverlap, rotatorv1.StepPublishing, "r-1-overlap"},
		{rotatorv1.PhaseOverlap, rotatorv1.StepRestartingControlPlane, "r-1-overlap"},
		{rotatorv1.PhaseOverlap, rotatorv1.StepRestartingApplications, "r-1-overlap"},
		{rotatorv1.PhaseSwitch, rotatorv1.StepPublishing, "r-1-switch"},
		{rotatorv1.PhaseSwitch, rotatorv1.StepRestartingControlPlane, "r-1-switch"},
		{rotatorv1.PhaseSwitch, rotatorv1.StepRestartingApplications, "r-1-switch"},
		{rotatorv1.PhasePrune, rotatorv1.StepPublishing, "r-1-prune"},
		{rotatorv1.PhasePrune, rotatorv1.StepRestartingControlPlane, "r-1-prune"},
		{rotatorv1.PhasePrune, rotatorv1.StepRestartingApplications, "r-1-prune"},
		{rotatorv1.PhasePrune, rotatorv1.StepCompleted, "r-1-prune"},
	}))
	for _, s := range r.Steps {
		g.Expect(s.FinishedAt).NotTo(BeNil(), "step %s/%s finished", s.Phase, s.Name)
	}

	// With nothing installed, there is nothing to overlap.
	r = Start("r-2", "t", "h", rotatorv1.KeyPolicyRotate, t0)
	Advance(r, t0)
	Advance(r, t0)
	SkipToLastPhase(r)
	g.Expect(r.Phase).To(Equal(rotatorv1.PhasePrune))
	g.Expect(RestartID(r)).To(Equal("r-2-prune"))
	g.Expect(RestartID(Start("r-3", "t", "h", rotatorv1.KeyPolicyReuse, t0))).To(Equal("r-3"))
}

func TestWaitKeepsTheStartOfTheSameWait(t *testing.T) {
	g := NewWithT(t)
	t0 := metav1.NewTime(time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC))
	r := Start("r-1", "t", "h", rotatorv1.KeyPolicyReuse, t0)
	g.Expect(Wait(r, "Deployment a", t0)).To(Equal(t0))
	later := metav1.NewTime(t0.Add(time.Minute))
	g.Expect(Wait(r, "Deployment a", later)).To(Equal(t0))
	g.Expect(Wait(r, "Deployment b", later)).To(Equal(later))
}

func TestRollBackEndsTheRotationWhereItStood(t *testing.T) {
	g := NewWithT(t)
	t0 := metav1.NewTime(time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC))
	t1 := metav1.NewTime(t0.Add(time.Minute))
	r := Start("r-1", "t", "h", rotatorv1.KeyPolicyRotate, t0)
	for r.Step != rotatorv1.StepRestartingControlPlane || r.Phase != rotatorv1.PhaseSwitch {
		Advance(r, t0)
	}
	Wait(r, "Deployment dapr-system/dapr-sentry", t0)

	RollBack(r, t1)
	g.Expect(r.Step).To(Equal(rotatorv1.StepRolledBack))
	g.Expect(r.Phase).To(Equal(rotatorv1.PhaseSwitch), "the phase it stopped in stays visible")
	g.Expect(InFlight(r)).To(BeFalse())
	g.Expect(r.WaitingFor).To(BeEmpty())
	g.Expect(r.WaitingSince).To(BeNil())
	n := len(r.Steps)
	g.Expect(r.Steps[n-2]).To(Equal(rotatorv1.StepStatus{Name: rotatorv1.StepRestartingControlPlane, Phase: rotatorv1.PhaseSwitch, StartedAt: t0, FinishedAt: &t1}))
	g.Expect(r.Steps[n-1].Name).To(Equal(rotatorv1.StepRolledBack))

	before := *r
	before.Steps = append([]rotatorv1.StepStatus(nil), r.Steps...)
	RollBack(r, metav1.NewTime(t1.Add(time.Hour)))
	g.Expect(Advance(r, t1)).To(Equal(rotatorv1.StepRolledBack), "a rolled-back rotation does not advance")
	g.Expect(*r).To(Equal(before), "rolling back twice changes nothing")
}

// TestRotateThatKeepsTheRetiredRootEndsWithSwitch: Prune would publish what
// Switch did, the old root kept, so the rotation completes after Switch;
// with nothing to overlap, its one phase is still Prune.
func TestRotateThatKeepsTheRetiredRootEndsWithSwitch(t *testing.T) {
	g := NewWithT(t)
	t0 := metav1.NewTime(time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC))
	r := Start("r-1", "t", "h", rotatorv1.KeyPolicyRotate, t0)
	r.KeepsRetiredRoots = true
	var phases []rotatorv1.RotationPhase
	for InFlight(r) {
		Advance(r, t0)
		if len(phases) == 0 || phases[len(phases)-1] != r.Phase {
			phases = append(phases, r.Phase)
		}
	}
	g.Expect(phases).To(Equal([]rotatorv1.RotationPhase{rotatorv1.PhaseOverlap, rotatorv1.PhaseSwitch}))
	g.Expect(r.Step).To(Equal(rotatorv1.StepCompleted))

	r = Start("r-2", "t", "h", rotatorv1.KeyPolicyRotate, t0)
	r.KeepsRetiredRoots = true
	Advance(r, t0)
	Advance(r, t0)
	SkipToLastPhase(r)
	g.Expect(r.Phase).To(Equal(rotatorv1.PhasePrune))
	for range 3 {
		Advance(r, t0)
	}
	g.Expect(r.Step).To(Equal(rotatorv1.StepCompleted))
	g.Expect(r.Phase).To(Equal(rotatorv1.PhasePrune))
}

func TestKeepsRetiredRoots(t *testing.T) {
	on := &rotatorv1.DaprConfigurationStatus{Name: "daprsystem", WorkflowHistorySigning: "shop/orders"}
	off := &rotatorv1.DaprConfigurationStatus{Name: "daprsystem"}
	for _, tt := range []struct {
		policy rotatorv1.RetiredRootsPolicy
		dapr   *rotatorv1.DaprConfigurationStatus
		want   bool
		why    string
	}{
		{"", on, true, "WorkflowHistorySigning is on in Dapr Configuration shop/orders"},
		{rotatorv1.RetiredRootsAuto, off, false, "WorkflowHistorySigning is off"},
		{rotatorv1.RetiredRootsAuto, nil, false, "WorkflowHistorySigning is off"},
		{rotatorv1.RetiredRootsKeep, nil, true, "spec.root.retired.policy is Keep"},
		{rotatorv1.RetiredRootsDrop, on, false, "spec.root.retired.policy is Drop"},
	} {
		keeps, why := KeepsRetiredRoots(&rotatorv1.RetiredRootsSpec{Policy: tt.policy}, tt.dapr)
		NewWithT(t).Expect([]any{keeps, why}).To(Equal([]any{tt.want, tt.why}), "policy %q", tt.policy)
	}
}

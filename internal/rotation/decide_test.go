package rotation

import (
	"testing"
	"time"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/expiry"
)

var t0 = time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)

// Builders, in the manner of trust-manager's gen package: a base object
// changed by setters.

type specSetter func(*rotatorv1.MTLSRootRotationSpec)
type statusSetter func(*rotatorv1.MTLSRootRotationStatus)

func specOf(set ...specSetter) *rotatorv1.MTLSRootRotationSpec {
	s := &rotatorv1.MTLSRootRotationSpec{Trigger: "a"}
	for _, f := range set {
		f(s)
	}
	return s
}

func trigger(t string) specSetter { return func(s *rotatorv1.MTLSRootRotationSpec) { s.Trigger = t } }
func keyPolicy(p rotatorv1.KeyPolicy) specSetter {
	return func(s *rotatorv1.MTLSRootRotationSpec) { s.Root.KeyPolicy = p }
}
func issuerRef(name string) specSetter {
	return func(s *rotatorv1.MTLSRootRotationSpec) { s.Issuer.IssuerRef = &rotatorv1.IssuerReference{Name: name} }
}
func renewBefore(d time.Duration) specSetter {
	return func(s *rotatorv1.MTLSRootRotationSpec) { s.RenewBefore = &metav1.Duration{Duration: d} }
}

func statusOf(set ...statusSetter) *rotatorv1.MTLSRootRotationStatus {
	s := &rotatorv1.MTLSRootRotationStatus{}
	for _, f := range set {
		f(s)
	}
	return s
}

// inFlight puts a rotation for trigger at step into status.
func inFlight(id, trigger string, step rotatorv1.RotationStep, set ...func(*rotatorv1.RotationStatus)) statusSetter {
	return func(s *rotatorv1.MTLSRootRotationStatus) {
		r := Start(id, trigger, "h", rotatorv1.KeyPolicyReuse, metav1.NewTime(t0.Add(-time.Hour)))
		r.Cause = rotatorv1.CauseTrigger
		r.Step = step
		for _, f := range set {
			f(r)
		}
		s.Rotation = r
	}
}

func withPolicy(p rotatorv1.KeyPolicy) func(*rotatorv1.RotationStatus) {
	return func(r *rotatorv1.RotationStatus) { r.KeyPolicy = p }
}
func withCause(c rotatorv1.RotationCause) func(*rotatorv1.RotationStatus) {
	return func(r *rotatorv1.RotationStatus) { r.Cause = c }
}
func withIssuerRef(name string) func(*rotatorv1.RotationStatus) {
	return func(r *rotatorv1.RotationStatus) { r.IssuerRef = &rotatorv1.IssuerReference{Name: name} }
}
func withMessage(m string) func(*rotatorv1.RotationStatus) {
	return func(r *rotatorv1.RotationStatus) { r.Message = m }
}
func rolledBackAt(at time.Time) func(*rotatorv1.RotationStatus) {
	return func(r *rotatorv1.RotationStatus) {
		r.Steps = append(r.Steps, rotatorv1.StepStatus{Name: rotatorv1.StepRolledBack, StartedAt: metav1.NewTime(at), FinishedAt: &metav1.Time{Time: at}})
	}
}
func deferredPolicy(p rotatorv1.KeyPolicy) func(*rotatorv1.RotationStatus) {
	return func(r *rotatorv1.RotationStatus) { r.DeferredKeyPolicy = p }
}
func issuerDeferred() func(*rotatorv1.RotationStatus) {
	return func(r *rotatorv1.RotationStatus) { r.IssuerRefChangeDeferred = true }
}

// lastCompleted records a completed rotation for trigger, finished at.
func lastDone(id, trigger string, cause rotatorv1.RotationCause, at time.Time) statusSetter {
	return func(s *rotatorv1.MTLSRootRotationStatus) {
		s.LastCompletedRotation = &rotatorv1.CompletedRotation{ID: id, Trigger: trigger, Cause: cause, FinishedAt: metav1.NewTime(at)}
	}
}

// renewalTook records the completed renewal id in status.rotation, started
// took before it finished.
func renewalTook(id string, finished time.Time, took time.Duration) statusSetter {
	return func(s *rotatorv1.MTLSRootRotationStatus) {
		r := Start(id, "a", "h", rotatorv1.KeyPolicyReuse, metav1.NewTime(finished.Add(-took)))
		r.Cause, r.Step = rotatorv1.CauseRenewal, rotatorv1.StepCompleted
		s.Rotation = r
	}
}

// issuerRootExpires says the published issuer chains to an anchor older
// than status.root, expiring at.
func issuerRootExpires(at time.Time) statusSetter {
	return func(s *rotatorv1.MTLSRootRotationStatus) {
		s.IssuerRoot = &rotatorv1.CertificateStatus{NotAfter: metav1.NewTime(at)}
	}
}

// published says the root and issuer in status expire at those moments.
func published(root, issuer time.Time) statusSetter {
	return func(s *rotatorv1.MTLSRootRotationStatus) {
		s.Root = &rotatorv1.CertificateStatus{NotAfter: metav1.NewTime(root)}
		s.Issuer = &rotatorv1.CertificateStatus{NotAfter: metav1.NewTime(issuer)}
	}
}

func TestDecide(t *testing.T) {
	far, soon := t0.Add(365*24*time.Hour), t0.Add(30*time.Minute)
	settled := []statusSetter{lastDone("r-last", "a", rotatorv1.CauseTrigger, t0.Add(-24*time.Hour)), published(far, far)}
	tests := []struct {
		name   string
		spec   *rotatorv1.MTLSRootRotationSpec
		status *rotatorv1.MTLSRootRotationStatus
		drift  string
		want   Decision
	}{{
		name:   "a new object starts its first rotation with the spec's key policy",
		spec:   specOf(keyPolicy(rotatorv1.KeyPolicyRotate)),
		status: statusOf(),
		want:   Decision{Action: Begin, Start: &StartSpec{Cause: rotatorv1.CauseTrigger, KeyPolicy: rotatorv1.KeyPolicyRotate}},
	}, {
		name:   "a new trigger starts a rotation chained to the last",
		spec:   specOf(trigger("b")),
		status: statusOf(settled...),
		want:   Decision{Action: Begin, Start: &StartSpec{Cause: rotatorv1.CauseTrigger, KeyPolicy: rotatorv1.KeyPolicyReuse, PreviousID: "r-last"}},
	}, {
		name:   "settled with nothing due is Idle",
		spec:   specOf(),
		status: statusOf(settled...),
		want:   Decision{Action: Idle, Settled: true, Message: "rotation r-last completed at " + t0.Add(-24*time.Hour).Format(time.RFC3339)},
	}, {
		name:   "settled with drift stalls and does not overwrite",
		spec:   specOf(),
		status: statusOf(settled...),
		drift:  "Secret changed",
		want: Decision{Action: Stall, Settled: true, Reason: rotatorv1.TrustBundleDriftReason,
			Message: "Secret changed; it is not overwritten: change spec.trigger to rotate onto a bundle of this operator (with keyPolicy Rotate if Sentry generated a new CA)"},
	}, {
		name:   "drift is not looked at while a rotation runs",
		spec:   specOf(trigger("b")),
		status: statusOf(append(settled, inFlight("r-2", "b", rotatorv1.StepPublishing))...),
		drift:  "Secret changed",
		want:   Decision{Action: Continue},
	}, {
		name:   "an issuer falling due renews the issuer with the same key, whatever the key policy",
		spec:   specOf(renewBefore(time.Hour), keyPolicy(rotatorv1.KeyPolicyRotate)),
		status: statusOf(lastDone("r-last", "a", rotatorv1.CauseTrigger, t0.Add(-24*time.Hour)), published(far, soon)),
		want: Decision{Action: Begin, Settled: true,
			Start:   &StartSpec{Cause: rotatorv1.CauseRenewal, Renews: expiry.Issuer, KeyPolicy: rotatorv1.KeyPolicyReuse, PreviousID: "r-last"},
			Message: "issuer certificate expires at " + soon.Format(time.RFC3339) + ", within spec.renewBefore 1h0m0s: renewing the issuer with the same key"},
	}, {
		name:   "a root falling due renews root and issuer",
		spec:   specOf(renewBefore(time.Hour)),
		status: statusOf(lastDone("r-last", "a", rotatorv1.CauseTrigger, t0.Add(-24*time.Hour)), published(soon, soon)),
		want: Decision{Action: Begin, Settled: true,
			Start:   &StartSpec{Cause: rotatorv1.CauseRenewal, Renews: expiry.Root, KeyPolicy: rotatorv1.KeyPolicyReuse, PreviousID: "r-last"},
			Message: "root certificate expires at " + soon.Format(time.RFC3339) + ", within spec.renewBefore 1h0m0s: renewing the root and issuer with the same key"},
	}, {
		name:   "the root the issuer chains to falling due renews root and issuer, though the newest anchor is far from due",
		spec:   specOf(renewBefore(time.Hour)),
		status: statusOf(lastDone("r-last", "a", rotatorv1.CauseTrigger, t0.Add(-24*time.Hour)), published(far, far), issuerRootExpires(soon)),
		want: Decision{Action: Begin, Settled: true,
			Start:   &StartSpec{Cause: rotatorv1.CauseRenewal, Renews: expiry.Root, KeyPolicy: rotatorv1.KeyPolicyReuse, PreviousID: "r-last"},
			Message: "root certificate expires at " + soon.Format(time.RFC3339) + ", within spec.renewBefore 1h0m0s: renewing the root and issuer with the same key"},
	}, {
		name:   "an issuer root that outlives the newest anchor leaves the newest anchor to fall due",
		spec:   specOf(renewBefore(time.Hour)),
		status: statusOf(lastDone("r-last", "a", rotatorv1.CauseTrigger, t0.Add(-24*time.Hour)), published(far, far), issuerRootExpires(far.Add(time.Hour))),
		want:   Decision{Action: Idle, Settled: true, Message: "rotation r-last completed at " + t0.Add(-24*time.Hour).Format(time.RFC3339)},
	}, {
		name:   "a renewal that did not move the due moment past its end stalls instead of looping",
		spec:   specOf(renewBefore(time.Hour)),
		status: statusOf(lastDone("r-renew", "a", rotatorv1.CauseRenewal, t0.Add(-time.Minute)), published(far, soon)),
		want: Decision{Action: Stall, Settled: true, Reason: rotatorv1.RenewalIneffectiveReason,
			Message: "automatic renewal r-renew completed at " + t0.Add(-time.Minute).Format(time.RFC3339) + ", but issuer certificate expires at " + soon.Format(time.RFC3339) +
				", within spec.renewBefore 1h0m0s: the signer caps its validity or the renewal takes longer than the margin; lower spec.renewBefore or lengthen the certificate, or change spec.trigger"},
	}, {
		// The moments are recorded to the second: a renewal that ends in
		// the second before the next due moment did not move it.
		name:   "a renewal that ended a second before its certificate fell due again stalls",
		spec:   specOf(renewBefore(time.Hour)),
		status: statusOf(lastDone("r-renew", "a", rotatorv1.CauseRenewal, t0.Add(-time.Second)), published(far, t0.Add(time.Hour))),
		want: Decision{Action: Stall, Settled: true, Reason: rotatorv1.RenewalIneffectiveReason,
			Message: "automatic renewal r-renew completed at " + t0.Add(-time.Second).Format(time.RFC3339) + ", but issuer certificate expires at " + t0.Add(time.Hour).Format(time.RFC3339) +
				", within spec.renewBefore 1h0m0s: the signer caps its validity or the renewal takes longer than the margin; lower spec.renewBefore or lengthen the certificate, or change spec.trigger"},
	}, {
		name: "a renewal that left less margin than it took stalls",
		spec: specOf(renewBefore(time.Hour)),
		status: statusOf(renewalTook("r-renew", t0.Add(-5*time.Second), 10*time.Second),
			lastDone("r-renew", "a", rotatorv1.CauseRenewal, t0.Add(-5*time.Second)), published(far, t0.Add(time.Hour))),
		want: Decision{Action: Stall, Settled: true, Reason: rotatorv1.RenewalIneffectiveReason,
			Message: "automatic renewal r-renew completed at " + t0.Add(-5*time.Second).Format(time.RFC3339) + ", but issuer certificate expires at " + t0.Add(time.Hour).Format(time.RFC3339) +
				", within spec.renewBefore 1h0m0s: the signer caps its validity or the renewal takes longer than the margin; lower spec.renewBefore or lengthen the certificate, or change spec.trigger"},
	}, {
		name: "a renewal that left more margin than it took renews again when due",
		spec: specOf(renewBefore(time.Hour)),
		status: statusOf(renewalTook("r-renew", t0.Add(-time.Minute), 10*time.Second),
			lastDone("r-renew", "a", rotatorv1.CauseRenewal, t0.Add(-time.Minute)), published(far, t0.Add(time.Hour))),
		want: Decision{Action: Begin, Settled: true,
			Start:   &StartSpec{Cause: rotatorv1.CauseRenewal, Renews: expiry.Issuer, KeyPolicy: rotatorv1.KeyPolicyReuse, PreviousID: "r-renew"},
			Message: "issuer certificate expires at " + t0.Add(time.Hour).Format(time.RFC3339) + ", within spec.renewBefore 1h0m0s: renewing the issuer with the same key"},
	}, {
		name:   "a renewal that moved the due moment renews again when due",
		spec:   specOf(renewBefore(time.Hour)),
		status: statusOf(lastDone("r-renew", "a", rotatorv1.CauseRenewal, t0.Add(-2*time.Hour)), published(far, soon)),
		want: Decision{Action: Begin, Settled: true,
			Start:   &StartSpec{Cause: rotatorv1.CauseRenewal, Renews: expiry.Issuer, KeyPolicy: rotatorv1.KeyPolicyReuse, PreviousID: "r-renew"},
			Message: "issuer certificate expires at " + soon.Format(time.RFC3339) + ", within spec.renewBefore 1h0m0s: renewing the issuer with the same key"},
	}, {
		name:   "an unpublished rotation is replaced by a new trigger",
		spec:   specOf(trigger("c")),
		status: statusOf(append(settled, inFlight("r-2", "b", rotatorv1.StepIssuing))...),
		want:   Decision{Action: Begin, Replace: "r-2", Start: &StartSpec{Cause: rotatorv1.CauseTrigger, KeyPolicy: rotatorv1.KeyPolicyReuse, PreviousID: "r-last/r-2"}},
	}, {
		name:   "an unpublished rotation reverted to the settled trigger is replaced and the object settles",
		spec:   specOf(),
		status: statusOf(append(settled, inFlight("r-2", "b", rotatorv1.StepVerifying))...),
		want:   Decision{Action: Idle, Replace: "r-2", Settled: true, Message: "rotation r-last completed at " + t0.Add(-24*time.Hour).Format(time.RFC3339)},
	}, {
		name:   "an unpublished rotation is replaced by a new key policy (the way out of RootKeyUnknown)",
		spec:   specOf(trigger("b"), keyPolicy(rotatorv1.KeyPolicyRotate)),
		status: statusOf(append(settled, inFlight("r-2", "b", rotatorv1.StepVerifying))...),
		want:   Decision{Action: Begin, Replace: "r-2", Start: &StartSpec{Cause: rotatorv1.CauseTrigger, KeyPolicy: rotatorv1.KeyPolicyRotate, PreviousID: "r-last/r-2"}},
	}, {
		name:   "an unpublished renewal is not replaced by a key policy change: a renewal always keeps the key",
		spec:   specOf(keyPolicy(rotatorv1.KeyPolicyRotate)),
		status: statusOf(append(settled, inFlight("r-2", "a", rotatorv1.StepIssuing, withCause(rotatorv1.CauseRenewal)))...),
		want:   Decision{Action: Continue},
	}, {
		name:   "an unpublished rotation is replaced by a new issuer",
		spec:   specOf(trigger("b"), issuerRef("org-ca")),
		status: statusOf(append(settled, inFlight("r-2", "b", rotatorv1.StepIssuing))...),
		want:   Decision{Action: Begin, Replace: "r-2", Start: &StartSpec{Cause: rotatorv1.CauseTrigger, KeyPolicy: rotatorv1.KeyPolicyReuse, PreviousID: "r-last/r-2"}},
	}, {
		name:   "a published rotation is not replaced by a new trigger: it finishes",
		spec:   specOf(trigger("c")),
		status: statusOf(append(settled, inFlight("r-2", "b", rotatorv1.StepRestartingApplications))...),
		want:   Decision{Action: Continue},
	}, {
		name:   "a published rotation refuses a key policy change once",
		spec:   specOf(trigger("b"), keyPolicy(rotatorv1.KeyPolicyRotate)),
		status: statusOf(append(settled, inFlight("r-2", "b", rotatorv1.StepPublishing))...),
		want:   Decision{Action: Continue, DeferKeyPolicy: rotatorv1.KeyPolicyRotate},
	}, {
		name:   "a key policy change already refused is not refused again",
		spec:   specOf(trigger("b"), keyPolicy(rotatorv1.KeyPolicyRotate)),
		status: statusOf(append(settled, inFlight("r-2", "b", rotatorv1.StepPublishing, deferredPolicy(rotatorv1.KeyPolicyRotate)))...),
		want:   Decision{Action: Continue},
	}, {
		name:   "a published renewal takes no key policy change to refuse",
		spec:   specOf(keyPolicy(rotatorv1.KeyPolicyRotate)),
		status: statusOf(append(settled, inFlight("r-2", "a", rotatorv1.StepPublishing, withCause(rotatorv1.CauseRenewal)))...),
		want:   Decision{Action: Continue},
	}, {
		name:   "a published rotation refuses an issuer change once",
		spec:   specOf(trigger("b")),
		status: statusOf(append(settled, inFlight("r-2", "b", rotatorv1.StepRestartingControlPlane, withIssuerRef("org-ca")))...),
		want:   Decision{Action: Continue, DeferIssuerRef: true},
	}, {
		name:   "an issuer change already refused is not refused again",
		spec:   specOf(trigger("b")),
		status: statusOf(append(settled, inFlight("r-2", "b", rotatorv1.StepRollingBack, withIssuerRef("org-ca"), issuerDeferred()))...),
		want:   Decision{Action: Continue},
	}, {
		name:   "a Rotate rotation publishing keeps its policy against a Reuse spec",
		spec:   specOf(trigger("b")),
		status: statusOf(append(settled, inFlight("r-2", "b", rotatorv1.StepPublishing, withPolicy(rotatorv1.KeyPolicyRotate)))...),
		want:   Decision{Action: Continue, DeferKeyPolicy: rotatorv1.KeyPolicyReuse},
	}, {
		name:   "a rolled-back rotation holds while the trigger is unchanged",
		spec:   specOf(trigger("b")),
		status: statusOf(append(settled, inFlight("r-2", "b", rotatorv1.StepRolledBack, withMessage("rolled back because")))...),
		want:   Decision{Action: Hold, Reason: rotatorv1.RolledBackReason, Message: "rolled back because"},
	}, {
		name: "a rolled-back rotation holding while a renewal falls due says so, once however often it is held",
		spec: specOf(trigger("b"), renewBefore(3*time.Hour)),
		status: statusOf(lastDone("r-last", "a", rotatorv1.CauseTrigger, t0.Add(-24*time.Hour)), published(far, t0.Add(2*time.Hour)),
			inFlight("r-2", "b", rotatorv1.StepRolledBack, withMessage("rolled back because; meanwhile the root certificate expires at an earlier time"))),
		want: Decision{Action: Hold, Reason: rotatorv1.RolledBackReason,
			Message: "rolled back because; meanwhile the issuer certificate expires at " + t0.Add(2*time.Hour).UTC().Format(time.RFC3339) +
				" and falls within spec.renewBefore, but is not renewed while this rolled-back rotation holds: change spec.trigger to rotate again"},
	}, {
		// The restored issuer expires at t0+2h; the rollback was at t0-1h.
		name: "a rolled-back renewal holds until halfway from the rollback to the restored issuer's expiry",
		spec: specOf(renewBefore(3 * time.Hour)),
		status: statusOf(lastDone("r-last", "a", rotatorv1.CauseTrigger, t0.Add(-24*time.Hour)), published(far, t0.Add(2*time.Hour)),
			inFlight("r-2", "a", rotatorv1.StepRolledBack, withCause(rotatorv1.CauseRenewal), withMessage("rolled back because"), rolledBackAt(t0.Add(-time.Hour)))),
		want: Decision{Action: Hold, Reason: rotatorv1.RolledBackReason, RetryAt: t0.Add(30 * time.Minute),
			Message: "rolled back because; the renewal is tried again at " + t0.Add(30*time.Minute).UTC().Format(time.RFC3339)},
	}, {
		// The restored issuer root expires at t0+2h; the rollback was at t0-1h.
		name: "a rolled-back renewal is retried halfway to the expiry of the root the restored issuer chains to",
		spec: specOf(renewBefore(3 * time.Hour)),
		status: statusOf(lastDone("r-last", "a", rotatorv1.CauseTrigger, t0.Add(-24*time.Hour)), published(far, far), issuerRootExpires(t0.Add(2*time.Hour)),
			inFlight("r-2", "a", rotatorv1.StepRolledBack, withCause(rotatorv1.CauseRenewal), withMessage("rolled back because"), rolledBackAt(t0.Add(-time.Hour)))),
		want: Decision{Action: Hold, Reason: rotatorv1.RolledBackReason, RetryAt: t0.Add(30 * time.Minute),
			Message: "rolled back because; the renewal is tried again at " + t0.Add(30*time.Minute).UTC().Format(time.RFC3339)},
	}, {
		name: "a held renewal's message says its retry once, however often it is held",
		spec: specOf(renewBefore(3 * time.Hour)),
		status: statusOf(lastDone("r-last", "a", rotatorv1.CauseTrigger, t0.Add(-24*time.Hour)), published(far, t0.Add(2*time.Hour)),
			inFlight("r-2", "a", rotatorv1.StepRolledBack, withCause(rotatorv1.CauseRenewal), rolledBackAt(t0.Add(-time.Hour)),
				withMessage("rolled back because; the renewal is tried again at "+t0.Add(30*time.Minute).UTC().Format(time.RFC3339)))),
		want: Decision{Action: Hold, Reason: rotatorv1.RolledBackReason, RetryAt: t0.Add(30 * time.Minute),
			Message: "rolled back because; the renewal is tried again at " + t0.Add(30*time.Minute).UTC().Format(time.RFC3339)},
	}, {
		name: "a rolled-back renewal is tried again once halfway, chained to it",
		spec: specOf(renewBefore(3 * time.Hour)),
		status: statusOf(lastDone("r-last", "a", rotatorv1.CauseTrigger, t0.Add(-24*time.Hour)), published(far, t0.Add(2*time.Hour)),
			inFlight("r-2", "a", rotatorv1.StepRolledBack, withCause(rotatorv1.CauseRenewal), rolledBackAt(t0.Add(-3*time.Hour)))),
		want: Decision{Action: Begin, Settled: true,
			Start:   &StartSpec{Cause: rotatorv1.CauseRenewal, Renews: expiry.Issuer, KeyPolicy: rotatorv1.KeyPolicyReuse, PreviousID: "r-last/r-2"},
			Message: "issuer certificate expires at " + t0.Add(2*time.Hour).Format(time.RFC3339) + ", within spec.renewBefore 3h0m0s: renewing the issuer with the same key"},
	}, {
		name:   "a new trigger after a rollback starts again, chained to both",
		spec:   specOf(trigger("c")),
		status: statusOf(append(settled, inFlight("r-2", "b", rotatorv1.StepRolledBack))...),
		want:   Decision{Action: Begin, Start: &StartSpec{Cause: rotatorv1.CauseTrigger, KeyPolicy: rotatorv1.KeyPolicyReuse, PreviousID: "r-last/r-2"}},
	}, {
		name:   "a rollback of a renewal reverted to the settled trigger settles on the last completion",
		spec:   specOf(),
		status: statusOf(append(settled, inFlight("r-2", "b", rotatorv1.StepRolledBack))...),
		want:   Decision{Action: Idle, Settled: true, Message: "rotation r-last completed at " + t0.Add(-24*time.Hour).Format(time.RFC3339)},
	}, {
		name:   "a completion whose record was lost is recorded, not started again",
		spec:   specOf(trigger("b")),
		status: statusOf(append(settled, inFlight("r-2", "b", rotatorv1.StepCompleted))...),
		want:   Decision{Action: Idle, RecordCompleted: true, Settled: true, Message: "rotation r-2 completed at " + t0.Add(-time.Hour).Format(time.RFC3339)},
	}, {
		name:   "a lost completion is recorded before a new trigger starts the next rotation",
		spec:   specOf(trigger("c")),
		status: statusOf(append(settled, inFlight("r-2", "b", rotatorv1.StepCompleted))...),
		want:   Decision{Action: Begin, RecordCompleted: true, Start: &StartSpec{Cause: rotatorv1.CauseTrigger, KeyPolicy: rotatorv1.KeyPolicyReuse, PreviousID: "r-2"}},
	}, {
		name:   "a recorded completion is not recorded again",
		spec:   specOf(trigger("b")),
		status: statusOf(inFlight("r-2", "b", rotatorv1.StepCompleted), lastDone("r-2", "b", rotatorv1.CauseTrigger, t0), published(far, far)),
		want:   Decision{Action: Idle, Settled: true, Message: "rotation r-2 completed at " + t0.Format(time.RFC3339)},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			before := tt.status.DeepCopy()
			got := Decide(tt.spec, tt.status, Observed{Drift: tt.drift}, t0)
			g.Expect(got).To(Equal(tt.want))
			g.Expect(tt.status).To(Equal(before), "Decide changes nothing")
			// The drift is read only when the decision looks at it.
			g.Expect(NeedsDriftCheck(tt.spec, tt.status, t0)).To(Equal(got.Settled))
			if !got.Settled {
				g.Expect(Decide(tt.spec, tt.status, Observed{Drift: "anything"}, t0)).To(Equal(got))
			}
		})
	}
}

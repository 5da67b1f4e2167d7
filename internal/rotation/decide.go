package rotation

import (
	"fmt"
	"strings"
	"time"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/expiry"
)

// Observed is what a pass saw of the world before deciding. Only what the
// decision needs: the reads are done by the caller (see NeedsDriftCheck).
type Observed struct {
	// Drift names how the installed bundle differs from what was last
	// published; "" when it does not, or when it was not read.
	Drift string
}

// Action is what a pass does with the rotation in status before the step
// machine runs.
type Action string

const (
	// Continue: a rotation is in flight; the step machine goes on with it.
	Continue Action = "Continue"
	// Begin: a new rotation starts (Decision.Start says how).
	Begin Action = "Begin"
	// Idle: the last rotation completed for the current trigger and nothing
	// falls due: the object is Ready.
	Idle Action = "Idle"
	// Hold: a rolled-back rotation keeps its failure on display until
	// spec.trigger changes, or, for an automatic renewal, until it is
	// tried again (Decision.RetryAt).
	Hold Action = "Hold"
	// Stall: nothing can be done until the cluster or the spec changes
	// (Decision.Reason says why).
	Stall Action = "Stall"
)

// StartSpec is how a new rotation starts.
type StartSpec struct {
	Cause     rotatorv1.RotationCause
	Renews    expiry.Renewal
	KeyPolicy rotatorv1.KeyPolicy
	// PreviousID chains the new id to what came before it, so that the id
	// (and every restart annotation) differs from the last rotation's.
	PreviousID string
}

// Decision is the outcome of Decide. Besides its Action, a pass may have to
// give up an unpublished rotation, record a completion that was lost, and
// refuse spec changes a published rotation cannot take.
type Decision struct {
	Action Action
	// Reason and Message explain a Hold or Stall (a Stalled condition), or a
	// renewal start (its event).
	Reason  string
	Message string
	// Start is set with Action Begin.
	Start *StartSpec
	// Replace is the id of an in-flight rotation that published nothing and
	// is given up for a new one.
	Replace string
	// RecordCompleted: the rotation in status completed, but its record as
	// the last completed rotation was lost (a crash between two patches).
	RecordCompleted bool
	// Settled: the last rotation completed for the current trigger; the pass
	// keeps the issuance of the settled state in shape (Idle, a renewal, or
	// a stalled one).
	Settled bool
	// DeferKeyPolicy is a spec.root.keyPolicy refused for the rotation in
	// flight, to announce once; DeferIssuerRef likewise for spec.issuer.issuerRef.
	DeferKeyPolicy rotatorv1.KeyPolicy
	DeferIssuerRef bool
	// RetryAt is, with Action Hold, when a rolled-back renewal is tried again.
	RetryAt time.Time
}

// Decide decides what a pass does before the step machine runs, from the
// spec, the status and what was observed, at now. It is pure: the caller
// reads, decides, then acts on the Decision.
func Decide(spec *rotatorv1.MTLSRootRotationSpec, status *rotatorv1.MTLSRootRotationStatus, seen Observed, now time.Time) Decision {
	var d Decision
	rot := status.Rotation
	if Replaceable(spec, rot) {
		d.Replace, rot = rot.ID, nil
	}
	if rot != nil && rot.Step == rotatorv1.StepCompleted &&
		(status.LastCompletedRotation == nil || status.LastCompletedRotation.ID != rot.ID) {
		d.RecordCompleted = true
	}
	if holds, retryAt := holding(spec, status, now); holds {
		d.Action, d.Reason, d.Message, d.RetryAt = Hold, rotatorv1.RolledBackReason, rot.Message, retryAt
		if !retryAt.IsZero() {
			d.Message = WithRetryNote(rot.Message, retryAt)
		} else if state := ExpiryOf(spec, status, now); state.Due != "" {
			// Held until spec.trigger changes, as the user asked; said, so
			// that the renewal falling due meanwhile is not missed.
			d.Message = withHeldRenewalNote(rot.Message, status, state.Due)
		}
		return d
	}
	if InFlight(rot) {
		d.Action = Continue
		d.DeferKeyPolicy, d.DeferIssuerRef = deferrals(spec, rot)
		return d
	}
	last := lastCompleted(status, rot, d.RecordCompleted)
	state := ExpiryOf(spec, status, now)
	start := &StartSpec{Cause: rotatorv1.CauseTrigger, KeyPolicy: spec.Root.GetKeyPolicy(), PreviousID: previousID(last, d.Replace, rot)}
	if last != nil && last.Trigger == spec.Trigger {
		d.Settled = true
		if settled, done := decideSettled(spec, status, last, seen.Drift, state); done {
			settled.Replace, settled.RecordCompleted, settled.Settled = d.Replace, d.RecordCompleted, true
			return settled
		}
		// A renewal keeps the key, whatever the key policy.
		start.Cause, start.Renews, start.KeyPolicy = rotatorv1.CauseRenewal, state.Due, rotatorv1.KeyPolicyReuse
		d.Message = fmt.Sprintf("%s, within spec.renewBefore %s: renewing the %s with the same key",
			DescribeDue(status, state.Due), spec.GetRenewBefore(), RenewsWhat(state.Due))
	}
	d.Action, d.Start = Begin, start
	return d
}

// decideSettled decides for an object whose last rotation completed for the
// current trigger: a drifted bundle stalls it, nothing due leaves it Idle, a
// renewal that did not help stalls it; otherwise (done false) a renewal starts.
func decideSettled(spec *rotatorv1.MTLSRootRotationSpec, status *rotatorv1.MTLSRootRotationStatus, last *rotatorv1.CompletedRotation,
	drift string, state expiry.State) (Decision, bool) {
	switch {
	case drift != "":
		return Decision{Action: Stall, Reason: rotatorv1.TrustBundleDriftReason, Message: drift +
			"; it is not overwritten: change spec.trigger to rotate onto a bundle of this operator (with keyPolicy Rotate if Sentry generated a new CA)"}, true
	case state.Due == expiry.None:
		return Decision{Action: Idle, Message: fmt.Sprintf("rotation %s completed at %s", last.ID, last.FinishedAt.Format(time.RFC3339))}, true
	case last.Cause == rotatorv1.CauseRenewal && renewalIneffective(status.Rotation, last, state.RenewAt):
		return Decision{Action: Stall, Reason: rotatorv1.RenewalIneffectiveReason, Message: fmt.Sprintf(
			"automatic renewal %s completed at %s, but %s, within spec.renewBefore %s: the signer caps its validity or the renewal takes longer than the margin; lower spec.renewBefore or lengthen the certificate, or change spec.trigger",
			last.ID, last.FinishedAt.Format(time.RFC3339), DescribeDue(status, state.Due), spec.GetRenewBefore())}, true
	}
	return Decision{}, false
}

// renewalIneffective reports whether the last renewal left its certificate
// due again within the time the renewal took (plus the second both moments
// are recorded to): another would do the same, so the operator would spend
// its time restarting the control plane in a loop. The rotation in status
// gives the start when it is the renewal; otherwise the renewal counts as
// instant.
func renewalIneffective(rot *rotatorv1.RotationStatus, last *rotatorv1.CompletedRotation, renewAt time.Time) bool {
	var took time.Duration
	if rot != nil && rot.ID == last.ID {
		took = max(last.FinishedAt.Sub(rot.StartedAt.Time), 0)
	}
	return renewAt.Sub(last.FinishedAt.Time) <= took+time.Second
}

// NeedsDriftCheck reports whether Decide will look at Observed.Drift: only
// when the last rotation completed for the current trigger, so a pass reads
// the bundle live only then.
func NeedsDriftCheck(spec *rotatorv1.MTLSRootRotationSpec, status *rotatorv1.MTLSRootRotationStatus, now time.Time) bool {
	rot := status.Rotation
	if Replaceable(spec, rot) {
		rot = nil
	}
	if holds, _ := holding(spec, status, now); InFlight(rot) || holds {
		return false
	}
	recordLost := rot != nil && rot.Step == rotatorv1.StepCompleted &&
		(status.LastCompletedRotation == nil || status.LastCompletedRotation.ID != rot.ID)
	last := lastCompleted(status, rot, recordLost)
	return last != nil && last.Trigger == spec.Trigger
}

// holding reports whether the rotation in status rolled back for the current
// trigger and holds: a rotation started by a trigger until spec.trigger
// changes, an automatic renewal until retryAt (RenewalRetryAt).
func holding(spec *rotatorv1.MTLSRootRotationSpec, status *rotatorv1.MTLSRootRotationStatus, now time.Time) (holds bool, retryAt time.Time) {
	rot := status.Rotation
	if rot == nil || rot.Step != rotatorv1.StepRolledBack || rot.Trigger != spec.Trigger {
		return false, time.Time{}
	}
	retryAt, retries := RenewalRetryAt(status)
	return !retries || now.Before(retryAt), retryAt
}

// retryNote starts what a rolled-back renewal's message says of its retry.
const retryNote = "; the renewal is tried again at "

// WithRetryNote is msg saying that the renewal is tried again at at, in
// place of what it said of a retry before: the same message on every pass.
func WithRetryNote(msg string, at time.Time) string {
	base, _, _ := strings.Cut(msg, retryNote)
	return base + retryNote + at.UTC().Format(time.RFC3339)
}

// heldRenewalNote starts what a rotation held after its rollback says of a
// renewal that fell due meanwhile.
const heldRenewalNote = "; meanwhile the "

// withHeldRenewalNote is msg saying that the renewal of due is held with
// the rotation, in place of what it said of it before.
func withHeldRenewalNote(msg string, status *rotatorv1.MTLSRootRotationStatus, due expiry.Renewal) string {
	base, _, _ := strings.Cut(msg, heldRenewalNote)
	return base + heldRenewalNote + DescribeDue(status, due) +
		" and falls within spec.renewBefore, but is not renewed while this rolled-back rotation holds: change spec.trigger to rotate again"
}

// RenewalRetryAt returns when a rolled-back automatic renewal is tried
// again: halfway from the rollback to the expiry of the bundle it restored
// (status.root and status.issuer describe it), so each attempt leaves half
// of the remaining life for the next, and the restored issuer is renewed
// before it expires without anyone changing spec.trigger. ok is false for a
// rotation that is not a rolled-back renewal.
func RenewalRetryAt(status *rotatorv1.MTLSRootRotationStatus) (at time.Time, ok bool) {
	rot := status.Rotation
	if rot == nil || rot.Step != rotatorv1.StepRolledBack || rot.Cause != rotatorv1.CauseRenewal || status.Issuer == nil || len(rot.Steps) == 0 {
		return time.Time{}, false
	}
	rolledBack := rot.Steps[len(rot.Steps)-1].StartedAt.Time
	expires := status.Issuer.NotAfter.Time
	if root := rootThatExpires(status); root != nil && root.NotAfter.Time.Before(expires) {
		expires = root.NotAfter.Time
	}
	return rolledBack.Add(max(expires.Sub(rolledBack), 0) / 2), true
}

// Replaceable reports whether rot is in flight, has published nothing, and
// the spec asks for another rotation: a new trigger, key policy (the way out
// of a RootKeyUnknown stall) or issuer.
func Replaceable(spec *rotatorv1.MTLSRootRotationSpec, rot *rotatorv1.RotationStatus) bool {
	if !InFlight(rot) || Published(rot) {
		return false
	}
	return rot.Trigger != spec.Trigger ||
		(rot.Cause != rotatorv1.CauseRenewal && rot.KeyPolicy != "" && rot.KeyPolicy != spec.Root.GetKeyPolicy()) ||
		!SameIssuerRef(rot.IssuerRef, spec.Issuer.IssuerRef)
}

// deferrals returns the spec changes a published rotation refuses and has
// not announced yet: switching key policy or issuer half-way would publish
// bundles no phase proved. It finishes as it started; the change applies to
// the next rotation.
func deferrals(spec *rotatorv1.MTLSRootRotationSpec, rot *rotatorv1.RotationStatus) (rotatorv1.KeyPolicy, bool) {
	if !Published(rot) {
		return "", false
	}
	var policy rotatorv1.KeyPolicy
	if want := spec.Root.GetKeyPolicy(); rot.Cause != rotatorv1.CauseRenewal && rot.KeyPolicy != "" &&
		rot.KeyPolicy != want && rot.DeferredKeyPolicy != want {
		policy = want
	}
	return policy, !SameIssuerRef(rot.IssuerRef, spec.Issuer.IssuerRef) && !rot.IssuerRefChangeDeferred
}

// lastCompleted is the last completed rotation, counting one whose record
// is about to be restored.
func lastCompleted(status *rotatorv1.MTLSRootRotationStatus, rot *rotatorv1.RotationStatus, recordLost bool) *rotatorv1.CompletedRotation {
	if recordLost {
		return Completion(rot)
	}
	return status.LastCompletedRotation
}

// previousID chains a new rotation to the last completed one, and to the
// unpublished or rolled-back one it follows.
func previousID(last *rotatorv1.CompletedRotation, replaced string, rot *rotatorv1.RotationStatus) string {
	previous := ""
	if last != nil {
		previous = last.ID
	}
	if replaced != "" {
		previous += "/" + replaced
	}
	if rot != nil && rot.Step == rotatorv1.StepRolledBack {
		previous += "/" + rot.ID
	}
	return previous
}

// Completion is the record of a completed rotation: it finished when its
// last step started.
func Completion(rot *rotatorv1.RotationStatus) *rotatorv1.CompletedRotation {
	finished := rot.StartedAt
	if n := len(rot.Steps); n > 0 {
		finished = rot.Steps[n-1].StartedAt
	}
	return &rotatorv1.CompletedRotation{ID: rot.ID, Trigger: rot.Trigger, Cause: rot.Cause, FinishedAt: finished}
}

// Published reports whether a rotation has written anything to the bundle.
func Published(rot *rotatorv1.RotationStatus) bool {
	return rot.Step != rotatorv1.StepIssuing && rot.Step != rotatorv1.StepVerifying
}

// SameIssuerRef reports whether two external issuer references name the same
// issuer (nil: a root of the object's own).
func SameIssuerRef(a, b *rotatorv1.IssuerReference) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Name == b.Name && a.GetKind() == b.GetKind() && a.GetGroup() == b.GetGroup()
}

// RenewsWhat names what a renewal renews.
func RenewsWhat(due expiry.Renewal) string {
	if due == expiry.Root {
		return "root and issuer"
	}
	return "issuer"
}

// ExpiryOf evaluates the expiry of the root and issuer published (or
// observed installed) at now, under the spec's warning and renewal windows.
func ExpiryOf(spec *rotatorv1.MTLSRootRotationSpec, status *rotatorv1.MTLSRootRotationStatus, now time.Time) expiry.State {
	cert := func(name string, c *rotatorv1.CertificateStatus) expiry.Certificate {
		if c == nil {
			return expiry.Certificate{Name: name}
		}
		return expiry.Certificate{Name: name, NotAfter: c.NotAfter.Time}
	}
	return expiry.Evaluate(cert("root", rootThatExpires(status)), cert("issuer", status.Issuer), expiry.Policy{
		Warning:       spec.GetExpiryWarning(),
		RenewBefore:   spec.GetRenewBefore(),
		RootRenewable: spec.Issuer.IssuerRef == nil,
	}, now, heldByPods(status)...)
}

// heldByPods is the previous root running pods still hold alone, whose
// expiry cuts them off before the published root's does (see
// status.convergence.cutOff); none when no pod holds one.
func heldByPods(status *rotatorv1.MTLSRootRotationStatus) []expiry.Certificate {
	if status.Convergence == nil || status.Convergence.CutOff == nil {
		return nil
	}
	c := status.Convergence.CutOff
	return []expiry.Certificate{{Name: "previous root", NotAfter: c.At.Time, Detail: fmt.Sprintf(
		", and with it every peer of %d Dapr pods that trust no newer root (%s): recreate them to give them the published anchors",
		c.Pods, strings.Join(c.First, ", "))}}
}

// rootThatExpires is the published root whose expiry cuts the mesh off
// first: the newest anchor, or, when it expires sooner, the anchor the issuer
// chains to (an overlap bundle before its Switch phase).
func rootThatExpires(status *rotatorv1.MTLSRootRotationStatus) *rotatorv1.CertificateStatus {
	if r := status.IssuerRoot; r != nil && (status.Root == nil || r.NotAfter.Before(&status.Root.NotAfter)) {
		return r
	}
	return status.Root
}

// DescribeDue says which published certificate fell due.
func DescribeDue(status *rotatorv1.MTLSRootRotationStatus, due expiry.Renewal) string {
	c, name := status.Issuer, "issuer"
	if due == expiry.Root {
		c, name = rootThatExpires(status), "root"
	}
	if c == nil {
		return name + " certificate due"
	}
	return fmt.Sprintf("%s certificate expires at %s", name, c.NotAfter.UTC().Format(time.RFC3339))
}

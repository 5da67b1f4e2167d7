package controllers

import (
	"context"
	"crypto/x509"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/bundle"
	"github.com/mtls-rotator/mtls-rotator/internal/pki"
	"github.com/mtls-rotator/mtls-rotator/internal/rotation"
)

// Annotations on the objects the operator writes.
const (
	// BundleHashAnnotation is the content hash of the bundle last published.
	BundleHashAnnotation = "mtls.rotator.dev/bundle-hash"
	// RotationAnnotation names the rotation that wrote an object.
	RotationAnnotation = "mtls.rotator.dev/rotation-id"
)

// reconcileIssuance has the strategy of the rotation in flight put in place
// what cert-manager issues from.
func (p *pass) reconcileIssuance(ctx context.Context) error { return p.strategy().prepare(ctx) }

// step is one step of the machine: nil when it is finished and the machine
// advances, or an error that ends the pass (see outcome.go).
type step func(ctx context.Context) error

// stepFor is the step the rotation is at.
func (p *pass) stepFor(s rotatorv1.RotationStep) (step, bool) {
	st := p.strategy()
	steps := map[rotatorv1.RotationStep]step{
		rotatorv1.StepIssuing:                st.issue,
		rotatorv1.StepVerifying:              st.verify,
		rotatorv1.StepPublishing:             p.stepPublishing,
		rotatorv1.StepRestartingControlPlane: p.stepControlPlane,
		rotatorv1.StepRestartingApplications: p.stepApplications,
		rotatorv1.StepRollingBack:            p.stepRollingBack,
	}
	f, ok := steps[s]
	return f, ok
}

// reconcileSteps runs the steps of the rotation in flight, recording each
// finished one, until one waits or the rotation completes.
func (p *pass) reconcileSteps(ctx context.Context) error {
	rot := p.rot()
	for rotation.InFlight(rot) {
		run, ok := p.stepFor(rot.Step)
		if !ok {
			return stall(rotatorv1.InvalidBundleReason, "unknown rotation step %q in status", rot.Step).terminal()
		}
		if err := run(ctx); err != nil {
			return err
		}
		if err := p.advance(ctx); err != nil {
			return err
		}
	}
	if rot.Step != rotatorv1.StepCompleted {
		return errDone
	}
	if err := p.strategy().complete(ctx); err != nil {
		// Retried between rotations.
		p.log.Error(err, "cleaning up after the rotation")
	}
	p.normal("RotationCompleted", "Rotate", "rotation %s completed", rot.ID)
	p.log.Info("rotation completed", "rotation", rot.ID)
	p.completed = true
	return nil
}

// advance finishes the current step and records the next one: the
// completion of a rotation is recorded in the same patch as its last step,
// so that a crash cannot leave a completed rotation that looks like one to start.
func (p *pass) advance(ctx context.Context) error {
	rot := p.rot()
	finished, phase, startedAt := rot.Step, rot.Phase, stepStartedAt(rot)
	next := rotation.Advance(rot, p.now())
	p.log.Info("rotation step", "rotation", rot.ID, "step", next)
	if next == rotatorv1.StepCompleted {
		recordCompleted(p.obj, rot)
	} else {
		markProgress(p.obj, "rotation %s: %s", rot.ID, next)
	}
	if err := p.checkpoint(ctx, fmt.Sprintf("step %s of rotation %s", next, rot.ID)); err != nil {
		return err
	}
	// Counted once recorded: a replay of an unrecorded step counts once.
	p.Metrics.stepFinished(finished, phase, p.now().Sub(startedAt.Time))
	if next == rotatorv1.StepCompleted {
		p.Metrics.rotationEnded(p.obj, rot, ResultCompleted, p.now().Time)
	}
	return nil
}

// stepStartedAt is when the current step of rot started.
func stepStartedAt(rot *rotatorv1.RotationStatus) metav1.Time {
	for i := len(rot.Steps) - 1; i >= 0; i-- {
		if s := rot.Steps[i]; s.Name == rot.Step && s.Phase == rot.Phase {
			return s.StartedAt
		}
	}
	return rot.StartedAt
}

// stepPublishing keeps the installed bundle in the backup Secret, then writes
// the bundle the strategy composed and proved to the Secret and the
// ConfigMap, byte-identical anchors in both, leaving every other key, label
// and annotation as it is.
func (p *pass) stepPublishing(ctx context.Context) error {
	rot, obj := p.rot(), p.obj
	pub, err := p.strategy().next(ctx)
	if err != nil {
		return err
	}
	if rot.KeepsRetiredRoots {
		pub = pki.Retain(pub, p.installed(), obj.Spec.Root.Retired.GetKeepAfterExpiry(), p.now().Time)
	}
	if err := p.backups().keep(ctx, p.installed(), p.target, rot.ID, rotation.RestartID(rot)); err != nil {
		return err
	}
	if err := p.writeBundle(ctx, pub.Bundle, pub.Bundle.TrustAnchors, rot.ID); err != nil {
		return err
	}
	setPublished(obj, bundle.Hash(pub.Bundle), pub.Parsed)
	if pub.CutOff != nil {
		p.warnCutOff(*pub.CutOff)
	}
	p.normal("TrustBundlePublished", "Publish",
		"rotation %s: published root %s and issuer %s (trust anchors: %d%s) to Secret and ConfigMap %s/%s%s",
		rot.ID, shortFingerprint(obj.Status.Root), shortFingerprint(obj.Status.Issuer), obj.Status.TrustAnchors, keptSuffix(rot, obj.Status.RetiredRootsKept), obj.Namespace, p.target.Secret.Name, phaseSuffix(rot))
	return nil
}

// keptSuffix says how many retired roots a publish of rot kept.
func keptSuffix(rot *rotatorv1.RotationStatus, kept int32) string {
	if !rot.KeepsRetiredRoots || kept == 0 {
		return ""
	}
	return fmt.Sprintf(", of which %d retired and kept for workflow history signing", kept)
}

// warnCutOff says that the bundle just replaced had already cut the mesh off:
// its issuer or root had expired, so the rotation repaired it at once, with
// no overlap, and everything restarts onto the new bundle.
func (p *pass) warnCutOff(e pki.Expiry) {
	reason, why := "InstalledIssuerExpired", "no workload can renew its certificate"
	if e.What == "root" {
		reason, why = "InstalledRootExpired", "no workload certificate verifies under it"
	}
	how := "the renewed root and issuer"
	if rot := p.rot(); rot.Phase != "" {
		how = fmt.Sprintf("the new root and issuer directly (%s phase)", rot.Phase)
	}
	p.event(corev1.EventTypeWarning, reason, "Publish",
		"rotation %s: the installed %s expired at %s, so %s and the mesh was already cut off; published %s with no trust overlap",
		p.rot().ID, e.What, e.NotAfter.UTC().Format(time.RFC3339), why, how)
}

// writeBundle writes b to the Secret and the ConfigMap's anchors to
// configMapCA, leaving every other key, label and annotation as it is. Each
// write is conditional on the resourceVersion last read into the target, and
// skipped when it would change nothing.
func (p *pass) writeBundle(ctx context.Context, b pki.Bundle, configMapCA []byte, rotationID string) error {
	t, keys := p.target, keysOf(p.obj)
	hash := bundle.Hash(b)
	annotations := map[string]string{BundleHashAnnotation: hash, RotationAnnotation: rotationID}
	if _, changed := bundle.SecretData(t.Secret.Data, b, keys); changed || t.Secret.Annotations[BundleHashAnnotation] != hash {
		ac := corev1ac.Secret(t.Secret.Name, t.Secret.Namespace).
			WithResourceVersion(t.Secret.ResourceVersion).
			WithLabels(map[string]string{OwnerLabel: p.obj.Name}).
			WithAnnotations(annotations).
			WithData(map[string][]byte{keys.CA: b.TrustAnchors, keys.IssuerCert: b.IssuerChain, keys.IssuerKey: b.IssuerKey})
		if err := p.Apply(ctx, ac, client.FieldOwner(ControllerName), client.ForceOwnership); err != nil {
			return fmt.Errorf("writing Secret %s/%s: %w", t.Secret.Namespace, t.Secret.Name, err)
		}
	}
	return p.writeConfigMap(ctx, configMapCA, hash, rotationID)
}

// writeConfigMap writes the anchors of the bundle whose hash is given to the
// ConfigMap, as writeBundle does.
func (p *pass) writeConfigMap(ctx context.Context, anchors []byte, hash, rotationID string) error {
	cm, key := p.target.ConfigMap, keysOf(p.obj).CA
	if current, ok := cm.Data[key]; ok && current == string(anchors) && cm.Annotations[BundleHashAnnotation] == hash {
		return nil
	}
	ac := corev1ac.ConfigMap(cm.Name, cm.Namespace).
		WithResourceVersion(cm.ResourceVersion).
		WithAnnotations(map[string]string{BundleHashAnnotation: hash, RotationAnnotation: rotationID}).
		WithData(map[string]string{key: string(anchors)})
	if err := p.Apply(ctx, ac, client.FieldOwner(ControllerName), client.ForceOwnership); err != nil {
		return fmt.Errorf("writing ConfigMap %s/%s: %w", cm.Namespace, cm.Name, err)
	}
	return nil
}

// setPublished records in status what the bundle now installed holds.
func setPublished(obj *rotatorv1.MTLSRootRotation, hash string, parsed *pki.ParsedBundle) {
	obj.Status.PublishedBundleHash = hash
	describeBundle(&obj.Status, parsed)
}

// describeBundle records the bundle's newest anchor, the anchor its issuer
// chains to (when another), its issuer and how many anchors it holds.
func describeBundle(status *rotatorv1.MTLSRootRotationStatus, parsed *pki.ParsedBundle) {
	newest, inUse := parsed.Anchors[len(parsed.Anchors)-1], parsed.IssuerRoot()
	status.Root = certificateStatus(newest)
	status.IssuerRoot = nil
	if inUse != nil && !inUse.Equal(newest) {
		status.IssuerRoot = certificateStatus(inUse)
	}
	status.Issuer = certificateStatus(parsed.Issuer())
	status.TrustAnchors = int32(len(parsed.Anchors))
	status.RetiredRootsKept = int32(retiredIn(parsed.Anchors, newest, inUse))
}

// retiredIn counts the anchors that are neither the newest nor the one the
// issuer chains to (inUse, nil when none): roots a rotation retired and kept
// (an older certificate of the issuer's root key among them).
func retiredIn(anchors []*x509.Certificate, newest, inUse *x509.Certificate) int {
	n := 0
	for _, a := range anchors {
		if !a.Equal(newest) && (inUse == nil || !a.Equal(inUse)) {
			n++
		}
	}
	return n
}

func certificateStatus(c *x509.Certificate) *rotatorv1.CertificateStatus {
	return &rotatorv1.CertificateStatus{
		NotBefore:         metav1.NewTime(c.NotBefore),
		NotAfter:          metav1.NewTime(c.NotAfter),
		SerialNumber:      fmt.Sprintf("%x", c.SerialNumber),
		Subject:           c.Subject.String(),
		SHA256Fingerprint: pki.Fingerprint(c),
		PublicKeySHA256:   pki.PublicKeyFingerprint(c),
	}
}

func shortFingerprint(c *rotatorv1.CertificateStatus) string {
	if c == nil || len(c.SHA256Fingerprint) < 11 {
		return "?"
	}
	return c.SHA256Fingerprint[:11]
}

func phaseSuffix(rot *rotatorv1.RotationStatus) string {
	if rot.Phase == "" {
		return ""
	}
	return " (" + string(rot.Phase) + " phase)"
}

package controllers

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	cmapiutil "github.com/cert-manager/cert-manager/pkg/api/util"
	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"github.com/fluxcd/pkg/runtime/patch"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/bundle"
	"github.com/mtls-rotator/mtls-rotator/internal/expiry"
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

// caSettle is how long after a root is issued the issuer is re-issued by it.
const caSettle = 2 * time.Second

// stepIssuing renews the root (same key) and waits for the new revision, then
// makes sure the issuer was signed by that root certificate, renewing it when
// it was not, as 'cmctl renew' would. The root revision it waits for is
// recorded before the renewal is triggered, so a replay never renews twice;
// the issuer's state is read from what it was signed by.
func (r *MTLSRootRotationReconciler) stepIssuing(ctx context.Context, obj *rotatorv1.MTLSRootRotation, patcher *patch.SerialPatcher) stepResult {
	if issuerRefOf(obj) != nil {
		return r.stepIssuingExternal(ctx, obj, patcher)
	}
	rot := obj.Status.Rotation
	n := namesFor(obj)
	rootCrt, root, res, ok := r.rotationCertificate(ctx, obj, n.Root, &rot.RootRevision)
	if !ok {
		return res
	}
	if rot.RootRevision == 0 {
		rot.RootRevision = root.Revision + 1
		if rot.Renews == string(expiry.Issuer) {
			rot.RootRevision = max(root.Revision, 1) // the root stays as it is
		}
		if err := checkpoint(ctx, patcher, obj); err != nil {
			return fail(fmt.Errorf("recording the revision to issue: %w", err))
		}
	}
	if rot.KeyPolicy == rotatorv1.KeyPolicyRotate {
		// The Certificate now names a new, empty Secret: cert-manager issues
		// a root with a fresh key into it on its own. The live Secret is the gate.
		if _, err := r.issuedSecret(ctx, obj.Namespace, rootSecretName(obj)); err != nil {
			if res, waiting := r.issuanceFailed(obj, rootCrt); waiting {
				return res
			}
			markProgress(obj, "rotation %s: waiting for a new root key in Secret %s", rot.ID, rootSecretName(obj))
			return waitFor(r.poll())
		}
		if ready, err := r.caIssuerReady(ctx, obj); err != nil || !ready {
			markProgress(obj, "rotation %s: waiting for Issuer %s to use the new root", rot.ID, n.RootIssuer)
			return stop(r.poll(), err)
		}
	} else if root.Revision < rot.RootRevision {
		if res, waiting := r.issuanceFailed(obj, rootCrt); waiting {
			return res
		}
		// A new Certificate is issued by cert-manager on its own, unless it
		// adopted a root Secret it finds up to date (the key of a deleted and
		// re-created MTLSRootRotation): that one is Ready with no revision.
		if !root.Issuing && (root.Revision > 0 || root.Ready) {
			if err := r.renew(ctx, rootCrt); err != nil {
				return fail(err)
			}
			ctrlLog(ctx).Info("renewal triggered", "certificate", n.Root, "revision", rot.RootRevision)
		}
		markProgress(obj, "rotation %s: waiting for Certificate %s revision %d", rot.ID, n.Root, rot.RootRevision)
		return waitFor(r.poll())
	}
	if !root.Ready && rot.KeyPolicy != rotatorv1.KeyPolicyRotate {
		if res, waiting := r.issuanceFailed(obj, rootCrt); waiting {
			return res
		}
		markProgress(obj, "rotation %s: waiting for Certificate %s to be Ready: %s", rot.ID, n.Root, root.Message)
		return waitFor(r.poll())
	}

	issuerCrt, issuer, res, ok := r.rotationCertificate(ctx, obj, n.Issuer, nil)
	if !ok {
		return res
	}
	if rot.Renews == string(expiry.Issuer) {
		// The root is not renewed: the issuer is re-issued by it once.
		if res, waiting := r.renewIssuerOnce(ctx, obj, patcher, issuerCrt, issuer, "Issuer "+n.RootIssuer); waiting {
			return res
		}
	}
	if !issuer.Ready {
		if res, waiting := r.issuanceFailed(obj, issuerCrt); waiting {
			return res
		}
		markProgress(obj, "rotation %s: waiting for Certificate %s to be Ready: %s", rot.ID, n.Issuer, issuer.Message)
		return waitFor(r.poll())
	}
	current, err := r.signedByCurrentRoot(ctx, obj)
	if err != nil {
		return fail(err)
	}
	if !current {
		if res, waiting := r.issuanceFailed(obj, issuerCrt); waiting {
			return res
		}
		if nb := rootCrt.Status.NotBefore; nb != nil && r.now().Sub(nb.Time) < caSettle {
			// cert-manager's CA issuer signs with the root its own cache
			// holds: give it a moment to see the new one, or the issuer is
			// signed by the old root and has to be issued once more.
			markProgress(obj, "rotation %s: letting cert-manager see root revision %d before re-issuing Certificate %s", rot.ID, rot.RootRevision, n.Issuer)
			return waitFor(ctrl.Result{RequeueAfter: caSettle})
		}
		if err := r.renew(ctx, issuerCrt); err != nil {
			return fail(err)
		}
		ctrlLog(ctx).Info("renewal triggered", "certificate", n.Issuer)
		markProgress(obj, "rotation %s: waiting for Certificate %s to be re-issued by root revision %d", rot.ID, n.Issuer, rot.RootRevision)
		return waitFor(r.poll())
	}
	rot.IssuerRevision = issuer.Revision
	r.EventRecorder.Eventf(obj, nil, corev1.EventTypeNormal, "CertificatesIssued", "Issue",
		"rotation %s: root revision %d and issuer revision %d issued by cert-manager", rot.ID, rot.RootRevision, rot.IssuerRevision)
	return advance()
}

// issuanceFailed reports whether cert-manager failed to issue crt since the
// rotation started; it then retries on its own back-off, and the rotation waits
// without asking again.
func (r *MTLSRootRotationReconciler) issuanceFailed(obj *rotatorv1.MTLSRootRotation, crt *cmapi.Certificate) (stepResult, bool) {
	rot := obj.Status.Rotation
	failed := crt.Status.LastFailureTime
	if failed == nil || failed.Before(&rot.StartedAt) {
		return stepResult{}, false
	}
	msg := ""
	if c := cmapiutil.GetCertificateCondition(crt, cmapi.CertificateConditionReady); c != nil {
		msg = c.Message
	}
	markProgress(obj, "rotation %s: cert-manager failed to issue Certificate %s at %s (%s); it retries with back-off",
		rot.ID, crt.Name, failed.Format(time.RFC3339), msg)
	return waitFor(ctrl.Result{RequeueAfter: 30 * time.Second}), true
}

// signedByCurrentRoot reports whether the issued issuer certificate was signed
// by the root certificate cert-manager holds now. Same key and subject make
// every root revision verify the same signatures; the ca.crt cert-manager's CA
// issuer records with each issuance names the exact root certificate.
func (r *MTLSRootRotationReconciler) signedByCurrentRoot(ctx context.Context, obj *rotatorv1.MTLSRootRotation) (bool, error) {
	n := namesFor(obj)
	root, err := r.issuedSecret(ctx, obj.Namespace, rootSecretName(obj))
	if err != nil {
		return false, err
	}
	issuer, err := r.issuedSecret(ctx, obj.Namespace, n.Issuer)
	if err != nil {
		return false, err
	}
	rootCerts, err := pki.ParseCertificates(root.Data[corev1.TLSCertKey])
	if err != nil {
		return false, fmt.Errorf("root certificate: %w", err)
	}
	signer, err := pki.ParseCertificates(issuer.Data[cmmeta.TLSCAKey])
	if err != nil {
		return false, nil // not recorded: have it re-issued
	}
	return bytes.Equal(signer[0].Raw, rootCerts[0].Raw), nil
}

// issuedBundle composes the bundle to publish from what cert-manager issued;
// the root is the newest trust anchor it holds.
func (r *MTLSRootRotationReconciler) issuedBundle(ctx context.Context, obj *rotatorv1.MTLSRootRotation) (pki.Bundle, *x509.Certificate, error) {
	n := namesFor(obj)
	issuer, err := r.issuedSecret(ctx, obj.Namespace, n.Issuer)
	if err != nil {
		return pki.Bundle{}, nil, err
	}
	if issuerRefOf(obj) != nil {
		anchors, err := externalAnchors(issuer)
		if err != nil {
			return pki.Bundle{}, nil, err
		}
		return pki.Bundle{
			TrustAnchors: pki.EncodeCertificates(anchors...),
			IssuerChain:  issuer.Data[corev1.TLSCertKey],
			IssuerKey:    issuer.Data[corev1.TLSPrivateKeyKey],
		}, anchors[len(anchors)-1], nil
	}
	root, err := r.issuedSecret(ctx, obj.Namespace, rootSecretName(obj))
	if err != nil {
		return pki.Bundle{}, nil, err
	}
	rootCerts, err := pki.ParseCertificates(root.Data[corev1.TLSCertKey])
	if err != nil {
		return pki.Bundle{}, nil, fmt.Errorf("root certificate: %w", err)
	}
	rootCert := rootCerts[0]
	return pki.Bundle{
		TrustAnchors: pki.EncodeCertificates(rootCert),
		IssuerChain:  issuer.Data[corev1.TLSCertKey],
		IssuerKey:    issuer.Data[corev1.TLSPrivateKeyKey],
	}, rootCert, nil
}

// proveNext validates the issued bundle as Sentry would and proves that
// publishing it over the installed one keeps every handshake working. It
// marks the object Stalled when the proof fails for a reason only a change of
// spec can fix.
func (r *MTLSRootRotationReconciler) proveNext(ctx context.Context, obj *rotatorv1.MTLSRootRotation, t *target) (pki.Bundle, *pki.ParsedBundle, stepResult, bool) {
	next, rootCert, err := r.issuedBundle(ctx, obj)
	if err != nil {
		return pki.Bundle{}, nil, fail(err), false
	}
	now := r.now().Time
	parsed, err := next.Validate(now)
	if err != nil {
		r.markStalled(ctx, obj, rotatorv1.InvalidBundleReason, "the issued bundle would be refused by Dapr Sentry: %v", err)
		return pki.Bundle{}, nil, stop(ctrl.Result{RequeueAfter: time.Minute}, nil), false
	}
	// What is about to be replaced is read live, and the write that follows
	// is conditional on its resourceVersion: nothing unproven is overwritten.
	if err := r.refreshTarget(ctx, t); err != nil {
		return pki.Bundle{}, nil, fail(err), false
	}
	installed := bundle.FromSecret(t.Secret.Data, keysOf(obj))
	var installedParsed *pki.ParsedBundle
	if !installed.IsEmpty() && !sameBundle(installed, next) {
		installedParsed, err = validateInstalled(installed, now)
		if err != nil {
			r.markStalled(ctx, obj, rotatorv1.RootKeyUnknownReason,
				"the installed bundle in Secret %s/%s is not valid (%v), so no same-key rotation can keep every handshake working; set spec.root.keyPolicy: Rotate",
				obj.Namespace, t.Secret.Name, err)
			return pki.Bundle{}, nil, stop(ctrl.Result{}, reconcile.TerminalError(err)), false
		}
	}
	if err := pki.ProveReuse(installedParsed, parsed, rootCert, now); err != nil {
		if errors.Is(err, pki.ErrRootKeyUnknown) {
			r.markStalled(ctx, obj, rotatorv1.RootKeyUnknownReason,
				"the trust anchors installed in Secret %s/%s were not made with this rotation's root key (Sentry may have generated them and discarded its key); a same-key rotation would break every connection: set spec.root.keyPolicy: Rotate to take them over with a trust overlap",
				obj.Namespace, t.Secret.Name)
		} else {
			r.markStalled(ctx, obj, rotatorv1.InvalidBundleReason, "the issued bundle cannot replace the installed one without failed handshakes: %v", err)
		}
		return pki.Bundle{}, nil, stop(ctrl.Result{}, reconcile.TerminalError(err)), false
	}
	return next, parsed, stepResult{}, true
}

func sameBundle(a, b pki.Bundle) bool { return bundle.Hash(a) == bundle.Hash(b) }

// validateInstalled checks the installed bundle as Sentry would, at a moment
// its issuer was valid: an expired issuer is a reason to rotate, not a reason
// to distrust the bundle.
func validateInstalled(b pki.Bundle, now time.Time) (*pki.ParsedBundle, error) {
	chain, err := pki.ParseCertificates(b.IssuerChain)
	if err != nil {
		return nil, fmt.Errorf("issuer certificate: %w", err)
	}
	return b.Validate(pki.ValidAt(now, chain...))
}

// allApplicationsRestarted reports whether every phase restarts every Dapr
// application; selectors and restart: false leave some on old anchors.
func allApplicationsRestarted(obj *rotatorv1.MTLSRootRotation) bool {
	a := obj.Spec.Applications
	return a.RestartEnabled() && a.Selector == nil && a.NamespaceSelector == nil
}

// refreshTarget re-reads the Secret and ConfigMap from the API server.
func (r *MTLSRootRotationReconciler) refreshTarget(ctx context.Context, t *target) error {
	s, cm := &corev1.Secret{}, &corev1.ConfigMap{}
	if err := r.reader().Get(ctx, client.ObjectKeyFromObject(t.Secret), s); err != nil {
		return fmt.Errorf("reading Secret %s/%s: %w", t.Secret.Namespace, t.Secret.Name, err)
	}
	if err := r.reader().Get(ctx, client.ObjectKeyFromObject(t.ConfigMap), cm); err != nil {
		return fmt.Errorf("reading ConfigMap %s/%s: %w", t.ConfigMap.Namespace, t.ConfigMap.Name, err)
	}
	t.Secret, t.ConfigMap = s, cm
	return nil
}

func keysOf(obj *rotatorv1.MTLSRootRotation) bundle.Keys {
	k := obj.Spec.Target.Keys
	return bundle.Keys{CA: k.GetCA(), IssuerCert: k.GetIssuerCert(), IssuerKey: k.GetIssuerKey()}
}

// stepVerifying proves the new bundle before anything is written.
func (r *MTLSRootRotationReconciler) stepVerifying(ctx context.Context, obj *rotatorv1.MTLSRootRotation, t *target) stepResult {
	if obj.Status.Rotation.KeyPolicy == rotatorv1.KeyPolicyRotate {
		// Each phase is proven when it is published; here the new root and
		// issuer must pass Sentry's checks on their own.
		next, _, err := r.issuedBundle(ctx, obj)
		if err != nil {
			return fail(err)
		}
		if _, err := next.Validate(r.now().Time); err != nil {
			r.markStalled(ctx, obj, rotatorv1.InvalidBundleReason, "the issued bundle would be refused by Dapr Sentry: %v", err)
			return stop(ctrl.Result{RequeueAfter: time.Minute}, nil)
		}
		return advance()
	}
	if _, _, res, ok := r.proveNext(ctx, obj, t); !ok {
		return res
	}
	return advance()
}

// phaseBundle composes and proves the bundle of the current phase of a Rotate
// rotation from the bundle installed before it (kept in the backup Secret)
// and what cert-manager issued:
//   - Overlap: installed anchors + new root, installed issuer;
//   - Switch: installed anchors + new root, new issuer;
//   - Prune: new root, new issuer.
//
// Each is proven against the mesh the previous phase left: the trust sets its
// pods hold and the issuers whose certificates are alive.
func (r *MTLSRootRotationReconciler) phaseBundle(ctx context.Context, obj *rotatorv1.MTLSRootRotation, t *target) (pki.Bundle, *pki.ParsedBundle, stepResult, bool) {
	rot := obj.Status.Rotation
	now := r.now().Time
	if err := r.refreshTarget(ctx, t); err != nil {
		return pki.Bundle{}, nil, fail(err), false
	}
	original, err := r.backup(ctx, obj, bundle.FromSecret(t.Secret.Data, keysOf(obj)), rot.ID)
	if err != nil {
		return pki.Bundle{}, nil, fail(err), false
	}
	issued, _, err := r.issuedBundle(ctx, obj)
	if err != nil {
		return pki.Bundle{}, nil, fail(err), false
	}
	if original.IsEmpty() {
		// Nothing installed, nothing to overlap: publish the end state.
		rotation.SkipToLastPhase(rot)
	}
	issuedParsed, err := issued.Validate(now)
	if err != nil {
		r.markStalled(ctx, obj, rotatorv1.InvalidBundleReason, "the issued bundle would be refused by Dapr Sentry: %v", err)
		return pki.Bundle{}, nil, stop(ctrl.Result{RequeueAfter: time.Minute}, nil), false
	}
	if rot.Phase == rotatorv1.PhasePrune && original.IsEmpty() {
		return issued, issuedParsed, stepResult{}, true
	}
	orig, err := validateInstalled(original, now)
	if err != nil {
		r.markStalled(ctx, obj, rotatorv1.InvalidBundleReason,
			"the bundle installed before rotation %s is not valid (%v); there is no trust to overlap with", rot.ID, err)
		return pki.Bundle{}, nil, stop(ctrl.Result{}, reconcile.TerminalError(err)), false
	}
	if pki.Expired(now, orig.Chain...) {
		// No workload certificate chains to a valid issuer any more: the
		// mesh is already cut off, and an overlap would only delay its repair.
		if rot.Phase == rotation.Phases[0] {
			rotation.SkipToLastPhase(rot)
			r.EventRecorder.Eventf(obj, nil, corev1.EventTypeWarning, "InstalledIssuerExpired", "Publish",
				"rotation %s: the installed issuer expired at %s, so no workload can renew its certificate and there is no working trust to overlap with; publishing the new root and issuer directly (%s phase) and restarting everything",
				rot.ID, orig.Issuer().NotAfter.UTC().Format(time.RFC3339), rot.Phase)
		}
		if rot.Phase == rotatorv1.PhasePrune {
			return issued, issuedParsed, stepResult{}, true
		}
	}
	overlap := pki.ComposeAnchors(orig.Anchors, issuedParsed.Anchors)
	// Later phases are proven against what is installed now (what the
	// previous phase published), not against a recomputation of it.
	live, err := validateInstalled(bundle.FromSecret(t.Secret.Data, keysOf(obj)), now)
	if err != nil {
		r.markStalled(ctx, obj, rotatorv1.InvalidBundleReason, "the installed bundle is not valid during rotation %s: %v", rot.ID, err)
		return pki.Bundle{}, nil, stop(ctrl.Result{}, reconcile.TerminalError(err)), false
	}
	trustSets := [][]*x509.Certificate{live.Anchors}
	if !allApplicationsRestarted(obj) {
		// Dapr workloads left out of the restarts still hold the original
		// anchors: the proof must keep them working too.
		trustSets = append(trustSets, orig.Anchors)
	}
	var next pki.Bundle
	var mesh pki.Mesh
	switch rot.Phase {
	case rotatorv1.PhaseOverlap:
		next = pki.Bundle{TrustAnchors: overlap, IssuerChain: original.IssuerChain, IssuerKey: original.IssuerKey}
		mesh = pki.Mesh{TrustSets: [][]*x509.Certificate{orig.Anchors}, Issuers: [][]*x509.Certificate{orig.Chain}}
	case rotatorv1.PhaseSwitch:
		next = pki.Bundle{TrustAnchors: overlap, IssuerChain: issued.IssuerChain, IssuerKey: issued.IssuerKey}
		mesh = pki.Mesh{TrustSets: trustSets, Issuers: [][]*x509.Certificate{orig.Chain, live.Chain}}
	default:
		next = issued
		mesh = pki.Mesh{TrustSets: trustSets, Issuers: [][]*x509.Certificate{live.Chain}}
	}
	parsed, err := next.Validate(pki.ValidAt(now, orig.Chain...))
	if err == nil {
		err = pki.ProveTransition(mesh, parsed, now)
	}
	if err != nil {
		r.markStalled(ctx, obj, rotatorv1.InvalidBundleReason, "the %s bundle of rotation %s cannot be published without failed handshakes: %v", rot.Phase, rot.ID, err)
		return pki.Bundle{}, nil, stop(ctrl.Result{}, reconcile.TerminalError(err)), false
	}
	return next, parsed, stepResult{}, true
}

// stepPublishing keeps the installed bundle in a backup Secret, then writes
// the new bundle to the Secret and the ConfigMap, byte-identical anchors in
// both, leaving every other key, label and annotation as it is.
func (r *MTLSRootRotationReconciler) stepPublishing(ctx context.Context, obj *rotatorv1.MTLSRootRotation, t *target) stepResult {
	rot := obj.Status.Rotation
	var (
		next   pki.Bundle
		parsed *pki.ParsedBundle
		res    stepResult
		ok     bool
	)
	if rot.KeyPolicy == rotatorv1.KeyPolicyRotate {
		next, parsed, res, ok = r.phaseBundle(ctx, obj, t)
	} else {
		next, parsed, res, ok = r.proveNext(ctx, obj, t)
	}
	if !ok {
		return res
	}
	keys := keysOf(obj)
	if _, err := r.backup(ctx, obj, bundle.FromSecret(t.Secret.Data, keys), rot.ID); err != nil {
		return fail(err)
	}
	if err := r.keepReplaced(ctx, obj, t, rotation.RestartID(rot)); err != nil {
		return fail(err)
	}
	hash := bundle.Hash(next)
	if err := r.writeBundle(ctx, obj, t, next, next.TrustAnchors, rot.ID); err != nil {
		return fail(err)
	}
	setPublished(obj, hash, parsed)
	r.EventRecorder.Eventf(obj, nil, corev1.EventTypeNormal, "TrustBundlePublished", "Publish",
		"rotation %s: published root %s and issuer %s (trust anchors: %d) to Secret and ConfigMap %s/%s%s",
		rot.ID, shortFingerprint(obj.Status.Root), shortFingerprint(obj.Status.Issuer), obj.Status.TrustAnchors, obj.Namespace, t.Secret.Name, phaseSuffix(rot))
	return advance()
}

// writeBundle writes b to the Secret and the ConfigMap's anchors to
// configMapCA, leaving every other key, label and annotation as it is. Each
// write is conditional on the resourceVersion last read into t, and skipped
// when it would change nothing.
func (r *MTLSRootRotationReconciler) writeBundle(ctx context.Context, obj *rotatorv1.MTLSRootRotation, t *target, b pki.Bundle, configMapCA []byte, rotationID string) error {
	keys := keysOf(obj)
	hash := bundle.Hash(b)
	annotations := map[string]string{BundleHashAnnotation: hash, RotationAnnotation: rotationID}
	if _, changed := bundle.SecretData(t.Secret.Data, b, keys); changed || t.Secret.Annotations[BundleHashAnnotation] != hash {
		ac := corev1ac.Secret(t.Secret.Name, t.Secret.Namespace).
			WithResourceVersion(t.Secret.ResourceVersion).
			WithAnnotations(annotations).
			WithData(map[string][]byte{keys.CA: b.TrustAnchors, keys.IssuerCert: b.IssuerChain, keys.IssuerKey: b.IssuerKey})
		if err := r.Apply(ctx, ac, client.FieldOwner(ControllerName), client.ForceOwnership); err != nil {
			return fmt.Errorf("writing Secret %s/%s: %w", t.Secret.Namespace, t.Secret.Name, err)
		}
	}
	if current, ok := t.ConfigMap.Data[keys.CA]; !ok || current != string(configMapCA) || t.ConfigMap.Annotations[BundleHashAnnotation] != hash {
		ac := corev1ac.ConfigMap(t.ConfigMap.Name, t.ConfigMap.Namespace).
			WithResourceVersion(t.ConfigMap.ResourceVersion).
			WithAnnotations(annotations).
			WithData(map[string]string{keys.CA: string(configMapCA)})
		if err := r.Apply(ctx, ac, client.FieldOwner(ControllerName), client.ForceOwnership); err != nil {
			return fmt.Errorf("writing ConfigMap %s/%s: %w", t.ConfigMap.Namespace, t.ConfigMap.Name, err)
		}
	}
	return nil
}

// setPublished records in status what the bundle now installed holds.
func setPublished(obj *rotatorv1.MTLSRootRotation, hash string, parsed *pki.ParsedBundle) {
	obj.Status.PublishedBundleHash = hash
	obj.Status.Root = certificateStatus(parsed.Anchors[len(parsed.Anchors)-1]) // the newest
	obj.Status.Issuer = certificateStatus(parsed.Issuer())
	obj.Status.TrustAnchors = int32(len(parsed.Anchors))
}

func backupName(obj *rotatorv1.MTLSRootRotation) string { return obj.Name + "-backup" }

// backup keeps the bundle installed before a rotation in a Secret owned by
// obj, once per rotation, and returns it: a replay after a publish must not
// overwrite it with what the rotation wrote, so it is read live.
func (r *MTLSRootRotationReconciler) backup(ctx context.Context, obj *rotatorv1.MTLSRootRotation, installed pki.Bundle, rotationID string) (pki.Bundle, error) {
	keys := keysOf(obj)
	s := &corev1.Secret{}
	key := client.ObjectKey{Namespace: obj.Namespace, Name: backupName(obj)}
	err := r.reader().Get(ctx, key, s)
	switch {
	case err == nil && s.Annotations[RotationAnnotation] == rotationID:
		return bundle.FromSecret(s.Data, keys), nil
	case err != nil && !apierrors.IsNotFound(err):
		return pki.Bundle{}, fmt.Errorf("reading the backup Secret: %w", err)
	}
	exists := err == nil
	s.Name, s.Namespace = key.Name, key.Namespace
	s.Labels = map[string]string{OwnerLabel: obj.Name}
	s.Annotations = map[string]string{RotationAnnotation: rotationID, BundleHashAnnotation: bundle.Hash(installed)}
	s.Type = corev1.SecretTypeOpaque
	s.Data, _ = bundle.SecretData(nil, installed, keys)
	if err := controllerutil.SetControllerReference(obj, s, r.Scheme()); err != nil {
		return pki.Bundle{}, err
	}
	if exists {
		err = r.Update(ctx, s)
	} else {
		err = r.Create(ctx, s)
	}
	if err != nil {
		return pki.Bundle{}, fmt.Errorf("writing the backup Secret: %w", err)
	}
	return installed, nil
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

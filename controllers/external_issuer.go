package controllers

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"github.com/fluxcd/pkg/runtime/patch"
	corev1 "k8s.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/pki"
)

// stepIssuingExternal has the external issuer (spec.issuer.issuerRef) sign a
// new Dapr issuer once per rotation and checks that the CA it names is a
// self-signed root. The issuer revision it waits for is recorded before the
// renewal is triggered, so a replay never renews twice.
func (r *MTLSRootRotationReconciler) stepIssuingExternal(ctx context.Context, obj *rotatorv1.MTLSRootRotation, patcher *patch.SerialPatcher) stepResult {
	rot := obj.Status.Rotation
	n := namesFor(obj)
	crt, issuer, res, ok := r.rotationCertificate(ctx, obj, n.Issuer, &rot.IssuerRevision)
	if !ok {
		return res
	}
	ref := issuerRefOf(obj)
	if res, waiting := r.renewIssuerOnce(ctx, obj, patcher, crt, issuer, describeIssuerRef(ref)); waiting {
		return res
	}
	if _, _, err := r.issuedBundle(ctx, obj); err != nil {
		return fail(err) // an unusable CA stalls the rotation (stallOnExternalCA)
	}
	r.EventRecorder.Eventf(obj, nil, corev1.EventTypeNormal, "CertificatesIssued", "Issue",
		"rotation %s: issuer revision %d issued by %s %s", rot.ID, issuer.Revision, ref.GetKind(), ref.Name)
	return advance()
}

// renewIssuerOnce has the issuer Certificate issued anew once per rotation,
// by signer, and reports whether the rotation still waits for it. The
// revision it waits for is recorded before the renewal is triggered, so a
// replay never renews twice.
func (r *MTLSRootRotationReconciler) renewIssuerOnce(ctx context.Context, obj *rotatorv1.MTLSRootRotation, patcher *patch.SerialPatcher,
	crt *cmapi.Certificate, issuer certificateState, signer string) (stepResult, bool) {
	rot := obj.Status.Rotation
	if rot.IssuerRevision == 0 {
		rot.IssuerRevision = issuer.Revision + 1
		if err := checkpoint(ctx, patcher, obj); err != nil {
			return fail(fmt.Errorf("recording the revision to issue: %w", err)), true
		}
	}
	if issuer.Revision >= rot.IssuerRevision && issuer.Ready {
		return stepResult{}, false
	}
	if res, waiting := r.issuanceFailed(obj, crt); waiting {
		return res, true
	}
	// A new Certificate is issued by cert-manager on its own.
	if issuer.Revision < rot.IssuerRevision && !issuer.Issuing && (issuer.Revision > 0 || issuer.Ready) {
		if err := r.renew(ctx, crt); err != nil {
			return fail(err), true
		}
		ctrlLog(ctx).Info("renewal triggered", "certificate", crt.Name, "revision", rot.IssuerRevision)
	}
	markProgress(obj, "rotation %s: waiting for %s to issue Certificate %s revision %d: %s",
		rot.ID, signer, crt.Name, rot.IssuerRevision, issuer.Message)
	return waitFor(r.poll()), true
}

// stallOnExternalCA turns a step's failure on an unusable external CA, at
// whatever step it is found, into a Stalled condition and a terminal error:
// only a change of the issuer (and a new trigger) can fix it.
func (r *MTLSRootRotationReconciler) stallOnExternalCA(ctx context.Context, obj *rotatorv1.MTLSRootRotation, res stepResult) stepResult {
	var reason externalCAError
	if !errors.As(res.err, &reason) {
		return res
	}
	r.markStalled(ctx, obj, rotatorv1.IssuerCANotSelfSignedReason,
		"%s cannot be Dapr's trust anchor: %s; Dapr Sentry only accepts self-signed roots: point spec.issuer.issuerRef at an issuer whose CA is a root (for a CA issuer on an intermediate, add the root as ca.crt to its Secret), then change spec.trigger",
		describeIssuerRef(issuerRefOf(obj)), string(reason))
	return stop(ctrl.Result{}, reconcile.TerminalError(reason))
}

// externalCAError says why the CA an external issuer names cannot be a trust
// anchor. It holds no certificate body.
type externalCAError string

func (e externalCAError) Error() string { return string(e) }

// externalAnchors returns the CA an external issuer recorded with the issued
// certificate (ca.crt), which must be self-signed roots.
func externalAnchors(issued *corev1.Secret) ([]*x509.Certificate, error) {
	if len(issued.Data[cmmeta.TLSCAKey]) == 0 {
		return nil, externalCAError("it recorded no CA certificate (ca.crt) with the issued certificate")
	}
	cas, err := pki.ParseCertificates(issued.Data[cmmeta.TLSCAKey])
	if err != nil {
		return nil, externalCAError(fmt.Sprintf("its CA certificate (ca.crt) cannot be parsed: %v", err))
	}
	for _, c := range cas {
		if err := pki.CheckSelfSignedCA(c); err != nil {
			return nil, externalCAError(fmt.Sprintf("its CA %q, issued by %q, is %v", c.Subject, c.Issuer, err))
		}
	}
	return cas, nil
}

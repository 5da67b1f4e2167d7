package controllers

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"time"

	cmapiutil "github.com/cert-manager/cert-manager/pkg/api/util"
	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/mtls-rotator/mtls-rotator/internal/expiry"
	"github.com/mtls-rotator/mtls-rotator/internal/pki"
)

// caSettle is how long after a root is issued the issuer is re-issued by it.
const caSettle = 2 * time.Second

// certificateState is what a rotation needs to know of a Certificate.
type certificateState struct {
	Revision int32 // 0 before the first issuance
	Ready    bool  // Ready, not issuing, and up to date with its spec
	Issuing  bool
	Message  string
}

func stateOf(crt *cmapi.Certificate) certificateState {
	var st certificateState
	if crt.Status.Revision != nil {
		st.Revision = int32(*crt.Status.Revision)
	}
	st.Issuing = cmapiutil.CertificateHasCondition(crt, cmapi.CertificateCondition{Type: cmapi.CertificateConditionIssuing, Status: cmmeta.ConditionTrue})
	ready := cmapiutil.GetCertificateCondition(crt, cmapi.CertificateConditionReady)
	st.Ready = ready != nil && ready.Status == cmmeta.ConditionTrue && ready.ObservedGeneration >= crt.Generation && !st.Issuing
	switch {
	case ready == nil:
		st.Message = "no Ready condition yet"
	case st.Issuing:
		st.Message = "being issued"
		if c := cmapiutil.GetCertificateCondition(crt, cmapi.CertificateConditionIssuing); c != nil && c.Message != "" {
			st.Message += ": " + c.Message
		}
	case ready.ObservedGeneration < crt.Generation:
		st.Message = fmt.Sprintf("generation %d not yet observed by cert-manager", crt.Generation)
	default:
		st.Message = ready.Message
	}
	return st
}

// rotationCertificate reads a Certificate a rotation waits on. One not in the
// cache yet was created by this pass: its first issuance is the rotation's, so
// an unset *revision becomes 1, and the rotation waits for it.
func (p *pass) rotationCertificate(ctx context.Context, name string, revision *int32) (*cmapi.Certificate, certificateState, error) {
	crt := &cmapi.Certificate{}
	err := p.Get(ctx, types.NamespacedName{Namespace: p.obj.Namespace, Name: name}, crt)
	if apierrors.IsNotFound(err) {
		if revision != nil && *revision == 0 {
			*revision = 1
		}
		return nil, certificateState{}, p.poll("rotation %s: waiting for Certificate %s to be created", p.rot().ID, name)
	}
	if err != nil {
		return nil, certificateState{}, err
	}
	return crt, stateOf(crt), nil
}

// rootCertificate reads the root Certificate and records, before anything
// triggers it, the revision the rotation issues: the next one, or the
// current one when only the issuer is renewed. A replay never renews twice.
func (p *pass) rootCertificate(ctx context.Context) (*cmapi.Certificate, certificateState, error) {
	rot := p.rot()
	crt, st, err := p.rotationCertificate(ctx, namesFor(p.obj).Root, &rot.RootRevision)
	if err != nil || rot.RootRevision != 0 {
		return crt, st, err
	}
	rot.RootRevision = st.Revision + 1
	if rot.Renews == string(expiry.Issuer) {
		rot.RootRevision = max(st.Revision, 1) // the root stays as it is
	}
	return crt, st, p.checkpoint(ctx, "the revision to issue")
}

// issueFromRoot makes sure the issuer was signed by the root certificate
// cert-manager holds now, renewing it when it was not, as 'cmctl renew'
// would; renewOnce re-issues it once even when it was (an issuer-only
// renewal). nil once it is issued.
func (p *pass) issueFromRoot(ctx context.Context, rootCrt *cmapi.Certificate, renewOnce bool) error {
	rot, n := p.rot(), namesFor(p.obj)
	issuerCrt, issuer, err := p.rotationCertificate(ctx, n.Issuer, nil)
	if err != nil {
		return err
	}
	if renewOnce {
		if err := p.renewIssuerOnce(ctx, issuerCrt, issuer, "Issuer "+n.RootIssuer); err != nil {
			return err
		}
	}
	if !issuer.Ready {
		if err := p.issuanceFailed(issuerCrt); err != nil {
			return err
		}
		return p.poll("rotation %s: waiting for Certificate %s to be Ready: %s", rot.ID, n.Issuer, issuer.Message)
	}
	current, err := p.signedByCurrentRoot(ctx)
	if err != nil {
		return err
	}
	if !current {
		if err := p.issuanceFailed(issuerCrt); err != nil {
			return err
		}
		if nb := rootCrt.Status.NotBefore; nb != nil && p.now().Sub(nb.Time) < caSettle {
			// cert-manager's CA issuer signs with the root its own cache
			// holds: give it a moment to see the new one, or the issuer is
			// signed by the old root and has to be issued once more.
			return p.wait(caSettle, "rotation %s: letting cert-manager see root revision %d before re-issuing Certificate %s", rot.ID, rot.RootRevision, n.Issuer)
		}
		if err := p.renew(ctx, issuerCrt); err != nil {
			return err
		}
		p.log.Info("renewal triggered", "certificate", n.Issuer)
		return p.poll("rotation %s: waiting for Certificate %s to be re-issued by root revision %d", rot.ID, n.Issuer, rot.RootRevision)
	}
	rot.IssuerRevision = issuer.Revision
	p.normal("CertificatesIssued", "Issue",
		"rotation %s: root revision %d and issuer revision %d issued by cert-manager", rot.ID, rot.RootRevision, rot.IssuerRevision)
	return nil
}

// renewIssuerOnce has the issuer Certificate issued anew once per rotation,
// by signer; nil once it is. The revision it waits for is recorded before
// the renewal is triggered, so a replay never renews twice.
func (p *pass) renewIssuerOnce(ctx context.Context, crt *cmapi.Certificate, issuer certificateState, signer string) error {
	rot := p.rot()
	if rot.IssuerRevision == 0 {
		rot.IssuerRevision = issuer.Revision + 1
		if err := p.checkpoint(ctx, "the revision to issue"); err != nil {
			return err
		}
	}
	if issuer.Revision >= rot.IssuerRevision && issuer.Ready {
		return nil
	}
	if err := p.issuanceFailed(crt); err != nil {
		return err
	}
	// A new Certificate is issued by cert-manager on its own.
	if issuer.Revision < rot.IssuerRevision && !issuer.Issuing && (issuer.Revision > 0 || issuer.Ready) {
		if err := p.renew(ctx, crt); err != nil {
			return err
		}
		p.log.Info("renewal triggered", "certificate", crt.Name, "revision", rot.IssuerRevision)
	}
	return p.poll("rotation %s: waiting for %s to issue Certificate %s revision %d: %s",
		rot.ID, signer, crt.Name, rot.IssuerRevision, issuer.Message)
}

// issuanceFailed returns a wait when cert-manager failed to issue crt since
// the rotation started: it retries on its own back-off, and the rotation
// waits without asking again.
func (p *pass) issuanceFailed(crt *cmapi.Certificate) error {
	rot := p.rot()
	failed := crt.Status.LastFailureTime
	if failed == nil || failed.Before(&rot.StartedAt) {
		return nil
	}
	msg := ""
	if c := cmapiutil.GetCertificateCondition(crt, cmapi.CertificateConditionReady); c != nil {
		msg = c.Message
	}
	return p.wait(30*time.Second, "rotation %s: cert-manager failed to issue Certificate %s at %s (%s); it retries with back-off",
		rot.ID, crt.Name, failed.Format(time.RFC3339), msg)
}

// caIssuerReady reports whether the CA Issuer has been made Ready for its
// current spec (the current root Secret).
func (p *pass) caIssuerReady(ctx context.Context) (bool, error) {
	iss := &cmapi.Issuer{}
	if err := p.reader().Get(ctx, types.NamespacedName{Namespace: p.obj.Namespace, Name: namesFor(p.obj).RootIssuer}, iss); err != nil {
		return false, client.IgnoreNotFound(err)
	}
	for _, c := range iss.Status.Conditions {
		if c.Type == cmapi.IssuerConditionReady {
			return c.Status == cmmeta.ConditionTrue && c.ObservedGeneration >= iss.Generation && iss.Spec.CA != nil &&
				iss.Spec.CA.SecretName == rootSecretName(p.obj), nil
		}
	}
	return false, nil
}

// renew asks cert-manager to re-issue a Certificate now, as 'cmctl renew' does.
func (p *pass) renew(ctx context.Context, crt *cmapi.Certificate) error {
	cmapiutil.SetCertificateCondition(crt, crt.Generation, cmapi.CertificateConditionIssuing, cmmeta.ConditionTrue,
		"ManuallyTriggered", fmt.Sprintf("Re-issuance triggered by %s", ControllerName))
	if err := p.Status().Update(ctx, crt); err != nil {
		return fmt.Errorf("triggering the renewal of Certificate %s: %w", crt.Name, err)
	}
	return nil
}

// exists reports whether the Certificate name exists.
func (p *pass) exists(ctx context.Context, name string) (bool, error) {
	err := p.Get(ctx, types.NamespacedName{Namespace: p.obj.Namespace, Name: name}, &cmapi.Certificate{})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	return err == nil, err
}

// issuedSecret reads the Secret cert-manager wrote for a Certificate.
func (p *pass) issuedSecret(ctx context.Context, name string) (*corev1.Secret, error) {
	s, ns := &corev1.Secret{}, p.obj.Namespace
	// Read live: the Certificate's status (from the cache) may be ahead of the
	// cached Secret; cert-manager writes the Secret before the status.
	if err := p.reader().Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, s); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("secret %s/%s of the issued certificate not found: %w", ns, name, err)
		}
		return nil, err
	}
	if len(s.Data[corev1.TLSCertKey]) == 0 || len(s.Data[corev1.TLSPrivateKeyKey]) == 0 {
		return nil, fmt.Errorf("secret %s/%s holds no issued certificate yet", ns, name)
	}
	return s, nil
}

// signedByCurrentRoot reports whether the issued issuer certificate was signed
// by the root certificate cert-manager holds now. Same key and subject make
// every root revision verify the same signatures; the ca.crt cert-manager's CA
// issuer records with each issuance names the exact root certificate.
func (p *pass) signedByCurrentRoot(ctx context.Context) (bool, error) {
	root, err := p.issuedSecret(ctx, rootSecretName(p.obj))
	if err != nil {
		return false, err
	}
	issuer, err := p.issuedSecret(ctx, namesFor(p.obj).Issuer)
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
func (p *pass) issuedBundle(ctx context.Context) (pki.Bundle, *x509.Certificate, error) {
	issuer, err := p.issuedSecret(ctx, namesFor(p.obj).Issuer)
	if err != nil {
		return pki.Bundle{}, nil, err
	}
	b := pki.Bundle{IssuerChain: issuer.Data[corev1.TLSCertKey], IssuerKey: issuer.Data[corev1.TLSPrivateKeyKey]}
	if issuerRefOf(p.obj) != nil {
		anchors, err := p.externalAnchors(issuer)
		if err != nil {
			return pki.Bundle{}, nil, err
		}
		b.TrustAnchors = pki.EncodeCertificates(anchors...)
		return b, anchors[len(anchors)-1], nil
	}
	root, err := p.issuedSecret(ctx, rootSecretName(p.obj))
	if err != nil {
		return pki.Bundle{}, nil, err
	}
	rootCerts, err := pki.ParseCertificates(root.Data[corev1.TLSCertKey])
	if err != nil {
		return pki.Bundle{}, nil, fmt.Errorf("root certificate: %w", err)
	}
	b.TrustAnchors = pki.EncodeCertificates(rootCerts[0])
	return b, rootCerts[0], nil
}

package controllers

import (
	"context"
	"crypto/x509"
	"fmt"

	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	corev1 "k8s.io/api/core/v1"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/pki"
)

// externalIssuer has an external issuer (spec.issuer.issuerRef: an Issuer or
// ClusterIssuer of any group) sign a new Dapr issuer once per rotation. Its
// CA, as cert-manager records it with the issued certificate (ca.crt), is the
// trust anchor and must be a self-signed root. With keyPolicy Rotate the
// rotation overlaps from the installed anchors onto the CA in three phases,
// as newKey does; otherwise it is published in one go, as sameKey does.
type externalIssuer struct {
	*pass
	ref     *rotatorv1.IssuerReference
	overlap bool
}

func (s *externalIssuer) begin(context.Context) error { return nil }

func (s *externalIssuer) prepare(ctx context.Context) error {
	if !s.overlap {
		if err := s.importRootKey(ctx); err != nil {
			return err
		}
	}
	return s.ensureIssuance(ctx)
}

// issue waits for the issuer Certificate's next revision, then checks that
// the CA it names can be a trust anchor.
func (s *externalIssuer) issue(ctx context.Context) error {
	rot := s.rot()
	crt, issuer, err := s.rotationCertificate(ctx, namesFor(s.obj).Issuer, &rot.IssuerRevision)
	if err != nil {
		return err
	}
	if err := s.renewIssuerOnce(ctx, crt, issuer, describeIssuerRef(s.ref)); err != nil {
		return err
	}
	if _, _, err := s.issuedBundle(ctx); err != nil {
		return err
	}
	s.normal("CertificatesIssued", "Issue", "rotation %s: issuer revision %d issued by %s %s", rot.ID, issuer.Revision, s.ref.GetKind(), s.ref.Name)
	return nil
}

func (s *externalIssuer) verify(ctx context.Context) error {
	if s.overlap {
		return (&newKey{s.pass}).verify(ctx)
	}
	_, err := s.reuseBundle(ctx)
	return err
}

func (s *externalIssuer) next(ctx context.Context) (pki.Publish, error) {
	if s.overlap {
		return s.phaseBundle(ctx)
	}
	return s.reuseBundle(ctx)
}

// complete deletes root keys an earlier new-key rotation left, as newKey does.
func (s *externalIssuer) complete(ctx context.Context) error {
	if s.overlap {
		return s.dropPreviousRootKeys(ctx)
	}
	return nil
}

func (s *externalIssuer) rolledBack() {}

func (s *externalIssuer) replaced() {}

func (s *externalIssuer) plan(ctx context.Context, installed pki.Bundle, plan *rotatorv1.RotationPlan) error {
	plan.Certificates = append(plan.Certificates, fmt.Sprintf("issue issuer Certificate %s signed by %s %s, whose CA becomes the trust anchor",
		namesFor(s.obj).Issuer, s.ref.GetKind(), s.ref.Name))
	if s.overlap {
		return s.planPhases(ctx, installed, plan)
	}
	return nil
}

// externalAnchors returns the CA an external issuer recorded with the issued
// certificate (ca.crt), which must be self-signed roots. A CA that cannot be
// a trust anchor stalls the rotation at whatever step it is found: only a
// change of the issuer (and a new trigger) can fix it.
func (p *pass) externalAnchors(issued *corev1.Secret) ([]*x509.Certificate, error) {
	why := ""
	var cas []*x509.Certificate
	if len(issued.Data[cmmeta.TLSCAKey]) == 0 {
		why = "it recorded no CA certificate (ca.crt) with the issued certificate"
	} else if parsed, err := pki.ParseCertificates(issued.Data[cmmeta.TLSCAKey]); err != nil {
		why = fmt.Sprintf("its CA certificate (ca.crt) cannot be parsed: %v", err)
	} else {
		cas = parsed
		for _, c := range cas {
			if err := pki.CheckSelfSignedCA(c); err != nil {
				why = fmt.Sprintf("its CA %q, issued by %q, is %v", c.Subject, c.Issuer, err)
				break
			}
		}
	}
	if why != "" {
		return nil, stall(rotatorv1.IssuerCANotSelfSignedReason,
			"%s cannot be Dapr's trust anchor: %s; Dapr Sentry only accepts self-signed roots: point spec.issuer.issuerRef at an issuer whose CA is a root (for a CA issuer on an intermediate, add the root as ca.crt to its Secret), then change spec.trigger",
			describeIssuerRef(issuerRefOf(p.obj)), why).terminal()
	}
	return cas, nil
}

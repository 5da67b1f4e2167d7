package controllers

import (
	"context"
	"fmt"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/expiry"
	"github.com/mtls-rotator/mtls-rotator/internal/pki"
)

// sameKey renews the root certificate with the same root key (keyPolicy
// Reuse, and every automatic renewal), then the issuer under it. A new issuer
// verifies under the old root certificate (same key, same subject), so the
// bundle is published in one go, proven against the installed one first.
type sameKey struct{ *pass }

func (s *sameKey) begin(context.Context) error { return nil }

// prepare imports a brought root key before cert-manager issues with it.
func (s *sameKey) prepare(ctx context.Context) error {
	if err := s.importRootKey(ctx); err != nil {
		return err
	}
	return s.ensureIssuance(ctx)
}

// issue renews the root and waits for the new revision (an issuer-only
// renewal keeps the root as it is), then has the issuer signed by it.
func (s *sameKey) issue(ctx context.Context) error {
	rot := s.rot()
	rootCrt, root, err := s.rootCertificate(ctx)
	if err != nil {
		return err
	}
	name := rootCrt.Name
	if root.Revision < rot.RootRevision {
		if err := s.issuanceFailed(rootCrt); err != nil {
			return err
		}
		// A new Certificate is issued by cert-manager on its own, unless it
		// adopted a root Secret it finds up to date (the key of a deleted and
		// re-created MTLSRootRotation): that one is Ready with no revision.
		if !root.Issuing && (root.Revision > 0 || root.Ready) {
			if err := s.renew(ctx, rootCrt); err != nil {
				return err
			}
			s.log.Info("renewal triggered", "certificate", name, "revision", rot.RootRevision)
		}
		return s.poll("rotation %s: waiting for Certificate %s revision %d", rot.ID, name, rot.RootRevision)
	}
	if !root.Ready {
		if err := s.issuanceFailed(rootCrt); err != nil {
			return err
		}
		return s.poll("rotation %s: waiting for Certificate %s to be Ready: %s", rot.ID, name, root.Message)
	}
	return s.issueFromRoot(ctx, rootCrt, rot.Renews == string(expiry.Issuer))
}

// verify proves the issued bundle can replace the installed one.
func (s *sameKey) verify(ctx context.Context) error {
	_, err := s.next(ctx)
	return err
}

// next is the issued bundle, proven against the installed one.
func (s *sameKey) next(ctx context.Context) (pki.Publish, error) { return s.reuseBundle(ctx) }

func (s *sameKey) complete(context.Context) error { return nil }

func (s *sameKey) rolledBack() {}

func (s *sameKey) replaced() {}

func (s *sameKey) plan(ctx context.Context, installed pki.Bundle, plan *rotatorv1.RotationPlan) error {
	n, obj := namesFor(s.obj), s.obj
	rootExists, err := s.exists(ctx, n.Root)
	if err != nil {
		return err
	}
	switch {
	case obj.Spec.Root.PrivateKeySecretRef != nil && !rootExists:
		plan.Certificates = append(plan.Certificates, fmt.Sprintf("issue root Certificate %s with the key of Secret %s", n.Root, obj.Spec.Root.PrivateKeySecretRef.Name))
	case rootExists:
		plan.Certificates = append(plan.Certificates, fmt.Sprintf("renew root Certificate %s with the same key", n.Root))
	default:
		plan.Certificates = append(plan.Certificates, fmt.Sprintf("issue root Certificate %s with a new key into Secret %s", n.Root, rootSecretName(obj)))
	}
	plan.Certificates = append(plan.Certificates, fmt.Sprintf("issue issuer Certificate %s signed by that root", n.Issuer))
	if !installed.IsEmpty() {
		if blocker := s.reuseBlocker(ctx, installed); blocker != "" {
			plan.Blockers = append(plan.Blockers, blocker)
		}
	}
	return nil
}

// reuseBundle is the issued bundle, proven able to replace the installed one
// with the same root key: nothing unproven is overwritten.
func (p *pass) reuseBundle(ctx context.Context) (pki.Publish, error) {
	issued, root, err := p.issuedBundle(ctx)
	if err != nil {
		return pki.Publish{}, err
	}
	// What is about to be replaced is read live, and the write that follows
	// is conditional on its resourceVersion.
	if err := p.refreshTarget(ctx); err != nil {
		return pki.Publish{}, err
	}
	pub, err := pki.ComposeReuse(p.installed(), issued, root, p.now().Time)
	if err != nil {
		return pki.Publish{}, p.reuseStall(err)
	}
	return pub, nil
}

// reuseStall says why a same-key publish cannot go ahead.
func (p *pass) reuseStall(err error) error {
	secret := p.obj.Namespace + "/" + p.target.Secret.Name
	switch pki.StageOf(err) {
	case pki.IssuedInvalid:
		return invalidIssued(err)
	case pki.InstalledInvalid:
		return stall(rotatorv1.RootKeyUnknownReason,
			"the installed bundle in Secret %s is not valid (%v), so no same-key rotation can keep every handshake working; set spec.root.keyPolicy: Rotate",
			secret, err).terminal()
	case pki.RootKeyUnknown:
		return stall(rotatorv1.RootKeyUnknownReason,
			"the trust anchors installed in Secret %s were not made with this rotation's root key (Sentry may have generated them and discarded its key); a same-key rotation would break every connection: set spec.root.keyPolicy: Rotate to take them over with a trust overlap",
			secret).terminal()
	case pki.Unproven:
		return stall(rotatorv1.InvalidBundleReason, "the issued bundle cannot replace the installed one without failed handshakes: %v", err).terminal()
	}
	return err
}

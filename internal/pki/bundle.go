package pki

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// Bundle is the trust material Dapr Sentry reads, as PEM: the trust anchors
// (ca.crt), the issuer chain (issuer.crt) and the issuer key (issuer.key).
type Bundle struct {
	TrustAnchors []byte
	IssuerChain  []byte
	IssuerKey    []byte
}

// IsEmpty reports whether no part of the bundle is set, as on a fresh Helm
// install whose chart was given no certificates.
func (b Bundle) IsEmpty() bool {
	return len(b.TrustAnchors) == 0 && len(b.IssuerChain) == 0 && len(b.IssuerKey) == 0
}

// ParsedBundle is a bundle that passed Sentry's checks.
type ParsedBundle struct {
	Anchors []*x509.Certificate
	Chain   []*x509.Certificate // the issuer first
	Key     crypto.Signer
}

// Issuer is the issuer certificate.
func (p *ParsedBundle) Issuer() *x509.Certificate { return p.Chain[0] }

// Validate applies the checks Dapr Sentry applies when it loads a bundle: every
// trust anchor is a self-signed CA certificate, the issuer chain verifies under
// the anchors with Go's default verification (so any extended key usage must
// allow server authentication), the issuer may sign certificates, the key
// matches the issuer, and everything is valid at now.
func (b Bundle) Validate(now time.Time) (*ParsedBundle, error) {
	var missing []string
	if len(b.TrustAnchors) == 0 {
		missing = append(missing, "trust anchors")
	}
	if len(b.IssuerChain) == 0 {
		missing = append(missing, "issuer certificate")
	}
	if len(b.IssuerKey) == 0 {
		missing = append(missing, "issuer key")
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("bundle is incomplete: no %v", missing)
	}
	anchors, err := ParseCertificates(b.TrustAnchors)
	if err != nil {
		return nil, fmt.Errorf("trust anchors: %w", err)
	}
	for i, a := range anchors {
		if err := CheckSelfSignedCA(a); err != nil {
			return nil, fmt.Errorf("trust anchor %d (%s): %w", i+1, a.Subject, err)
		}
	}
	chain, err := ParseCertificates(b.IssuerChain)
	if err != nil {
		return nil, fmt.Errorf("issuer certificate: %w", err)
	}
	key, err := ParsePrivateKey(b.IssuerKey)
	if err != nil {
		return nil, fmt.Errorf("issuer key: %w", err)
	}
	issuer := chain[0]
	if !issuer.IsCA || !issuer.BasicConstraintsValid {
		return nil, fmt.Errorf("issuer certificate (%s) is not a CA certificate", issuer.Subject)
	}
	if issuer.KeyUsage != 0 && issuer.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("issuer certificate (%s) may not sign certificates (no certSign key usage)", issuer.Subject)
	}
	if !KeyMatches(key, issuer) {
		return nil, errors.New("issuer key does not match the issuer certificate")
	}
	if err := VerifyChain(chain, anchors, now); err != nil {
		return nil, fmt.Errorf("issuer certificate does not verify under the trust anchors: %w", err)
	}
	return &ParsedBundle{Anchors: anchors, Chain: chain, Key: key}, nil
}

// CheckSelfSignedCA checks that c can be a Dapr trust anchor: a CA
// certificate signed by its own key.
func CheckSelfSignedCA(c *x509.Certificate) error {
	if !c.IsCA || !c.BasicConstraintsValid {
		return errors.New("not a CA certificate")
	}
	if err := c.CheckSignatureFrom(c); err != nil {
		return fmt.Errorf("not self-signed: %w", err)
	}
	return nil
}

// IssuerRoot returns the trust anchor the issuer chain verifies under for
// longest: of the anchors that signed the chain's last certificate, the one
// that expires last. It is nil when none did.
func (p *ParsedBundle) IssuerRoot() *x509.Certificate {
	top := p.Chain[len(p.Chain)-1]
	var root *x509.Certificate
	for _, a := range p.Anchors {
		if top.CheckSignatureFrom(a) == nil && (root == nil || a.NotAfter.After(root.NotAfter)) {
			root = a
		}
	}
	return root
}

// VerifyChain verifies chain[0], with chain[1:] as intermediates, under anchors
// at now, the way Sentry does (Go's default server-auth verification).
func VerifyChain(chain, anchors []*x509.Certificate, now time.Time) error {
	if len(chain) == 0 {
		return errors.New("empty certificate chain")
	}
	roots := x509.NewCertPool()
	for _, a := range anchors {
		roots.AddCert(a)
	}
	intermediates := x509.NewCertPool()
	for _, c := range chain[1:] {
		intermediates.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: intermediates, CurrentTime: now})
	return err
}

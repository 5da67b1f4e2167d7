package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"time"
)

// GenerateKey makes a private key of the API's algorithm names: ECDSA (256,
// 384 or 521), RSA (2048 or more) or Ed25519 (size 0).
func GenerateKey(algorithm string, size int) (crypto.Signer, error) {
	switch algorithm {
	case "ECDSA":
		curve := map[int]elliptic.Curve{256: elliptic.P256(), 384: elliptic.P384(), 521: elliptic.P521()}[size]
		if curve == nil {
			return nil, fmt.Errorf("ECDSA key size must be 256, 384 or 521, not %d", size)
		}
		return ecdsa.GenerateKey(curve, rand.Reader)
	case "RSA":
		if size < 2048 {
			return nil, fmt.Errorf("RSA keys must be at least 2048 bits, not %d", size)
		}
		return rsa.GenerateKey(rand.Reader, size)
	case "Ed25519":
		_, key, err := ed25519.GenerateKey(rand.Reader)
		return key, err
	}
	return nil, fmt.Errorf("unknown key algorithm %q (ECDSA, RSA or Ed25519)", algorithm)
}

// CA is a CA certificate with its key.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// CASpec shapes a CA certificate the way the operator's cert-manager
// Certificates are shaped: the common name (Dapr's trust domain by default),
// CA basic constraints, and cert-sign, CRL-sign and digital-signature usages.
type CASpec struct {
	CommonName string
	// RawSubject, when set, is the DER subject to use instead of the
	// common name: a renewed root keeps its predecessor's, byte for byte.
	RawSubject []byte
	Validity   time.Duration
	NotBefore  time.Time
}

// NewRoot self-signs a root CA certificate with key: with an existing root
// key it is a same-key renewal (a new serial, the same public key).
func NewRoot(spec CASpec, key crypto.Signer) (*CA, error) {
	return sign(spec, key, nil)
}

// NewIntermediate signs a CA certificate for key with parent: the Dapr issuer.
func NewIntermediate(spec CASpec, key crypto.Signer, parent *CA) (*CA, error) {
	return sign(spec, key, parent)
}

func sign(spec CASpec, key crypto.Signer, parent *CA) (*CA, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("making a serial number: %w", err)
	}
	notBefore := spec.NotBefore
	if notBefore.IsZero() {
		notBefore = time.Now()
	}
	// A little earlier, for clocks a little behind (Dapr allows 15m of skew).
	notBefore = notBefore.Add(-time.Minute).UTC().Truncate(time.Second)
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: spec.CommonName},
		RawSubject:            spec.RawSubject,
		NotBefore:             notBefore,
		NotAfter:              notBefore.Add(spec.Validity + time.Minute),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	signerCert, signerKey := tmpl, key
	if parent != nil {
		signerCert, signerKey = parent.Cert, parent.Key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signerCert, key.Public(), signerKey)
	if err != nil {
		return nil, fmt.Errorf("signing the certificate of %q: %w", spec.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key}, nil
}

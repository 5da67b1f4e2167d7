// Package pki holds the x509 checks mtls-rotator relies on: parsing Dapr's
// trust bundle, applying the checks Dapr Sentry applies before it accepts one,
// fingerprints for status, and the proofs a rotation must pass before it
// publishes anything. It makes no API calls.
package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
)

// ParseCertificates parses PEM data that holds only CERTIFICATE blocks, at
// least one. Anything else (another block type, trailing bytes that are not
// white space) is an error: Sentry would not accept it either.
func ParseCertificates(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := data
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("unexpected PEM block %q where certificates are expected", block.Type)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parsing certificate %d: %w", len(certs)+1, err)
		}
		certs = append(certs, cert)
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return nil, errors.New("data after the last PEM certificate is not PEM")
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM certificate found")
	}
	return certs, nil
}

// ParsePrivateKey parses one PEM private key: SEC1 EC, PKCS#1 RSA or PKCS#8
// (EC, RSA, Ed25519), as openssl and step produce them. An EC PARAMETERS block
// (what 'openssl ecparam -genkey' writes before the key) is skipped.
func ParsePrivateKey(data []byte) (crypto.Signer, error) {
	var keyBlock *pem.Block
	rest := data
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type == "EC PARAMETERS" {
			continue
		}
		if keyBlock != nil {
			return nil, errors.New("more than one PEM block where one private key is expected")
		}
		keyBlock = block
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return nil, errors.New("data after the PEM private key is not PEM")
	}
	if keyBlock == nil {
		return nil, errors.New("no PEM private key found")
	}
	var (
		key any
		err error
	)
	switch keyBlock.Type {
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(keyBlock.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(keyBlock.Bytes)
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(keyBlock.Bytes)
	default:
		return nil, fmt.Errorf("unsupported PEM block %q for a private key", keyBlock.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("parsing %s: %w", strings.ToLower(keyBlock.Type), err)
	}
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		return k, nil
	case *rsa.PrivateKey:
		return k, nil
	case ed25519.PrivateKey:
		return k, nil
	default:
		return nil, fmt.Errorf("unsupported private key type %T", key)
	}
}

// KeyAlgorithm names a key's algorithm and size as the API does: "ECDSA" with
// the curve size, "RSA" with the modulus size, or "Ed25519" with 0.
func KeyAlgorithm(key crypto.Signer) (string, int) {
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		return "ECDSA", k.Curve.Params().BitSize
	case *rsa.PrivateKey:
		return "RSA", k.N.BitLen()
	case ed25519.PrivateKey:
		return "Ed25519", 0
	}
	return fmt.Sprintf("%T", key), 0
}

// EncodePrivateKey encodes a key as PKCS#8 PEM.
func EncodePrivateKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encoding private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// EncodeCertificates encodes certificates as PEM, in order.
func EncodeCertificates(certs ...*x509.Certificate) []byte {
	var b bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return b.Bytes()
}

// Fingerprint is the SHA-256 of a certificate's DER, upper-case hex with colons.
func Fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return colonHex(sum[:])
}

// PublicKeyFingerprint is the SHA-256 of a certificate's SubjectPublicKeyInfo;
// it does not change when a certificate is renewed with the same key.
func PublicKeyFingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return colonHex(sum[:])
}

func colonHex(b []byte) string {
	h := strings.ToUpper(hex.EncodeToString(b))
	var out strings.Builder
	for i := 0; i < len(h); i += 2 {
		if i > 0 {
			out.WriteByte(':')
		}
		out.WriteString(h[i : i+2])
	}
	return out.String()
}

// publicKeyEqual compares public keys of any supported type.
func publicKeyEqual(a, b crypto.PublicKey) bool {
	eq, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && eq.Equal(b)
}

// SamePublicKey reports whether two certificates carry the same public key.
func SamePublicKey(a, b *x509.Certificate) bool {
	return publicKeyEqual(a.PublicKey, b.PublicKey)
}

// KeyMatches reports whether key is the private key of cert.
func KeyMatches(key crypto.Signer, cert *x509.Certificate) bool {
	return publicKeyEqual(cert.PublicKey, key.Public())
}

// Package pkitest makes certificates for tests: roots, issuers and workload
// certificates shaped like the ones cert-manager and Dapr Sentry produce. Key
// material is generated at run time; none is stored in the repository.
package pkitest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/url"
	"testing"
	"time"
)

// CA is a certificate with its key.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// CertPEM is the certificate as PEM.
func (c *CA) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Cert.Raw})
}

// KeyPEM is the key as PKCS#8 PEM.
func (c *CA) KeyPEM(t testing.TB) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(c.Key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// Options shape a certificate.
type Options struct {
	CommonName  string
	Key         crypto.Signer // nil: a new ECDSA P-256 key
	NotBefore   time.Time     // zero: an hour ago
	Validity    time.Duration // zero: a year
	ExtKeyUsage []x509.ExtKeyUsage
	NotCA       bool
}

// ECDSAKey makes an ECDSA P-256 key.
func ECDSAKey(t testing.TB) crypto.Signer {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// RSAKey makes an RSA key of the given size.
func RSAKey(t testing.TB, bits int) crypto.Signer {
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// Ed25519Key makes an Ed25519 key.
func Ed25519Key(t testing.TB) crypto.Signer {
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// NewRoot makes a self-signed root CA, as cert-manager's SelfSigned issuer does.
func NewRoot(t testing.TB, o Options) *CA {
	t.Helper()
	return sign(t, o, nil, "cluster.local")
}

// RenewRoot re-issues a root with the same key and subject and a new serial and
// validity, as a same-key renewal does.
func RenewRoot(t testing.TB, root *CA, o Options) *CA {
	t.Helper()
	o.Key = root.Key
	if o.CommonName == "" {
		o.CommonName = root.Cert.Subject.CommonName
	}
	return sign(t, o, nil, o.CommonName)
}

// NewIssuer makes an intermediate CA signed by parent, as Dapr's issuer.
func NewIssuer(t testing.TB, parent *CA, o Options) *CA {
	t.Helper()
	return sign(t, o, parent, "cluster.local")
}

// NewWorkload makes a leaf certificate signed by issuer, shaped like the SPIFFE
// certificates Sentry gives sidecars (server and client auth).
func NewWorkload(t testing.TB, issuer *CA, spiffeID string, validity time.Duration) *CA {
	t.Helper()
	id, err := url.Parse(spiffeID)
	if err != nil {
		t.Fatal(err)
	}
	key := ECDSAKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: serial(t),
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{id},
	}
	return create(t, tmpl, issuer, key)
}

func sign(t testing.TB, o Options, parent *CA, defaultCN string) *CA {
	t.Helper()
	key := o.Key
	if key == nil {
		key = ECDSAKey(t)
	}
	cn := o.CommonName
	if cn == "" {
		cn = defaultCN
	}
	notBefore := o.NotBefore
	if notBefore.IsZero() {
		notBefore = time.Now().Add(-time.Hour)
	}
	validity := o.Validity
	if validity == 0 {
		validity = 365 * 24 * time.Hour
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"mtls-rotator tests"}},
		NotBefore:             notBefore,
		NotAfter:              notBefore.Add(validity),
		IsCA:                  !o.NotCA,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
		ExtKeyUsage:           o.ExtKeyUsage,
	}
	if o.NotCA {
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	}
	return create(t, tmpl, parent, key)
}

func create(t testing.TB, tmpl *x509.Certificate, parent *CA, key crypto.Signer) *CA {
	t.Helper()
	parentCert, parentKey := tmpl, key
	if parent != nil {
		parentCert, parentKey = parent.Cert, parent.Key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parentCert, key.Public(), parentKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &CA{Cert: cert, Key: key}
}

func serial(t testing.TB) *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

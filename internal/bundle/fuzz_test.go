package bundle

import (
	"bytes"
	"testing"
	"time"

	"github.com/mtls-rotator/mtls-rotator/internal/pki"
	"github.com/mtls-rotator/mtls-rotator/internal/pki/pkitest"
)

// FuzzInstalledBundle reads arbitrary bytes in each key of the Secret and the
// ConfigMap as the operator reads an installed bundle: nothing panics, a key
// the operator does not manage survives a write, and a bundle accepted as
// installed is one Sentry can run on (anchors, an issuer chain, the issuer's
// own key).
func FuzzInstalledBundle(f *testing.F) {
	root := pkitest.NewRoot(f, pkitest.Options{})
	issuer := pkitest.NewIssuer(f, root, pkitest.Options{})
	other := pkitest.NewIssuer(f, root, pkitest.Options{})
	f.Add(root.CertPEM(), issuer.CertPEM(), issuer.KeyPEM(f), string(root.CertPEM()), []byte("jwt"))
	f.Add(root.CertPEM(), issuer.CertPEM(), other.KeyPEM(f), "", []byte(nil))
	f.Add(append(root.CertPEM(), issuer.CertPEM()...), append(issuer.CertPEM(), root.CertPEM()...), issuer.KeyPEM(f), "x", []byte{})
	f.Add([]byte{}, []byte{}, []byte{}, "", []byte(nil))
	f.Fuzz(func(t *testing.T, ca, issuerCert, issuerKey []byte, configMapCA string, unmanaged []byte) {
		secret := map[string][]byte{keys.CA: ca, keys.IssuerCert: issuerCert, keys.IssuerKey: issuerKey, "jwt.key": unmanaged}
		b := FromSecret(secret, keys)
		_ = Consistent(secret, map[string]string{keys.CA: configMapCA}, keys)
		_ = Describe(b, pki.Bundle{TrustAnchors: []byte(configMapCA)}, keys)
		_ = Hash(b)
		if data, _ := SecretData(secret, pki.Bundle{}, keys); !bytes.Equal(data["jwt.key"], unmanaged) {
			t.Fatal("a write changed a key the operator does not manage")
		}
		parsed, err := pki.ValidateInstalled(b, time.Now())
		if err != nil {
			return
		}
		if len(parsed.Anchors) == 0 || len(parsed.Chain) == 0 || parsed.Key == nil {
			t.Fatalf("accepted without anchors, chain or key: %d anchors, %d in the chain", len(parsed.Anchors), len(parsed.Chain))
		}
		if !pki.KeyMatches(parsed.Key, parsed.Issuer()) {
			t.Fatal("accepted with a key that is not the issuer's")
		}
	})
}

package cli

import (
	"crypto"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/pki"
)

// generate writes a root and an issuer for Sentry's --issuer-credentials
// directory, optionally from an existing root key (a same-key renewal, done
// offline), and prints the environment a self-hosted daprd needs.
func generate(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("certs generate", stderr)
	out := fs.String("out", "", "directory to write ca.crt, issuer.crt and issuer.key (and ca.key for a new root) into (required)")
	trustDomain := fs.String("trust-domain", rotatorv1.DefaultTrustDomain, "SPIFFE trust domain: the certificates' common name")
	rootKeyFile := fs.String("root-key", "", "PEM file of an existing root private key (SEC1 EC, PKCS#1 RSA or PKCS#8) to renew the root with; a new key otherwise")
	rootDuration := fs.Duration("root-duration", rotatorv1.DefaultCertificateDuration, "validity of the root")
	issuerDuration := fs.Duration("issuer-duration", rotatorv1.DefaultCertificateDuration, "validity of the issuer")
	algorithm := fs.String("key-algorithm", string(rotatorv1.ECDSA), "algorithm of new keys: ECDSA, RSA or Ed25519")
	size := fs.Int("key-size", 0, "size of new keys: 256, 384 or 521 for ECDSA (default 256), 2048 or more for RSA (default 2048)")
	namespace := fs.String("namespace", "default", "NAMESPACE printed for daprd")
	force := fs.Bool("force", false, "overwrite files that exist")
	if err := parse(fs, args); err != nil {
		return err
	}
	switch {
	case *out == "":
		return fmt.Errorf("%w: certs generate: --out is required", errUsage)
	case *rootDuration < time.Hour || *issuerDuration < time.Hour:
		return fmt.Errorf("%w: certs generate: durations must be at least 1h", errUsage)
	case *issuerDuration > *rootDuration:
		return fmt.Errorf("%w: certs generate: --issuer-duration must not exceed --root-duration", errUsage)
	}
	if *size == 0 {
		*size = map[string]int{"ECDSA": rotatorv1.DefaultECDSAKeySize, "RSA": rotatorv1.DefaultRSAKeySize}[*algorithm]
	}

	var rootKey crypto.Signer
	files := []outputFile{}
	if *rootKeyFile != "" {
		data, err := os.ReadFile(*rootKeyFile)
		if err != nil {
			return fmt.Errorf("reading the root key: %w", err)
		}
		if rootKey, err = pki.ParsePrivateKey(data); err != nil {
			return fmt.Errorf("%s holds no usable private key: %w", *rootKeyFile, err)
		}
	} else {
		var err error
		if rootKey, err = pki.GenerateKey(*algorithm, *size); err != nil {
			return fmt.Errorf("%w: certs generate: %v", errUsage, err)
		}
		keyPEM, err := pki.EncodePrivateKey(rootKey)
		if err != nil {
			return err
		}
		files = append(files, outputFile{name: "ca.key", data: keyPEM, mode: 0o600})
	}
	issuerKey, err := pki.GenerateKey(*algorithm, *size)
	if err != nil {
		return fmt.Errorf("%w: certs generate: %v", errUsage, err)
	}
	root, err := pki.NewRoot(pki.CASpec{CommonName: *trustDomain, Validity: *rootDuration}, rootKey)
	if err != nil {
		return err
	}
	issuer, err := pki.NewIntermediate(pki.CASpec{CommonName: *trustDomain, Validity: *issuerDuration}, issuerKey, root)
	if err != nil {
		return err
	}
	issuerKeyPEM, err := pki.EncodePrivateKey(issuerKey)
	if err != nil {
		return err
	}
	b := pki.Bundle{TrustAnchors: pki.EncodeCertificates(root.Cert), IssuerChain: pki.EncodeCertificates(issuer.Cert), IssuerKey: issuerKeyPEM}
	if _, err := b.Validate(time.Now()); err != nil {
		return fmt.Errorf("the generated bundle would be refused by Dapr Sentry: %w", err)
	}
	files = append(files,
		outputFile{name: "ca.crt", data: b.TrustAnchors, mode: 0o644},
		outputFile{name: "issuer.crt", data: b.IssuerChain, mode: 0o644},
		outputFile{name: "issuer.key", data: b.IssuerKey, mode: 0o600})
	if err := writeFiles(*out, files, *force); err != nil {
		return err
	}

	dir, err := filepath.Abs(*out)
	if err != nil {
		dir = *out
	}
	fmt.Fprintf(stdout, "root    %s  public key %s  expires %s\n", pki.Fingerprint(root.Cert)[:23], pki.PublicKeyFingerprint(root.Cert)[:23], root.Cert.NotAfter.Format(time.RFC3339))
	fmt.Fprintf(stdout, "issuer  %s  expires %s\n", pki.Fingerprint(issuer.Cert)[:23], issuer.Cert.NotAfter.Format(time.RFC3339))
	if *rootKeyFile == "" {
		fmt.Fprintf(stdout, "the root key is in %s: keep it offline; the next same-key renewal needs it (--root-key)\n",
			filepath.Join(dir, "ca.key"))
	}
	fmt.Fprintf(stdout, "\n# Dapr Sentry:\n#   sentry --issuer-credentials %s --trust-domain %s\n# daprd:\n", dir, *trustDomain)
	for _, env := range []struct{ name, file string }{
		{"DAPR_TRUST_ANCHORS", "ca.crt"}, {"DAPR_CERT_CHAIN", "issuer.crt"}, {"DAPR_CERT_KEY", "issuer.key"},
	} {
		fmt.Fprintf(stdout, "export %s=\"$(cat %s)\"\n", env.name, filepath.Join(dir, env.file))
	}
	fmt.Fprintf(stdout, "export NAMESPACE=%s\n", *namespace)
	return nil
}

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

// generateOptions are the flags of certs generate.
type generateOptions struct {
	out, trustDomain, rootKeyFile, algorithm, namespace string
	rootDuration, issuerDuration                        time.Duration
	size                                                int
	force                                               bool
}

// parseGenerate reads and checks the flags of certs generate.
func parseGenerate(args []string, stderr io.Writer) (generateOptions, error) {
	var o generateOptions
	fs := newFlags("certs generate", stderr)
	fs.StringVar(&o.out, "out", "", "directory to write ca.crt, issuer.crt and issuer.key (and ca.key for a new root) into (required)")
	fs.StringVar(&o.trustDomain, "trust-domain", rotatorv1.DefaultTrustDomain, "SPIFFE trust domain: the certificates' common name")
	fs.StringVar(&o.rootKeyFile, "root-key", "", "PEM file of an existing root private key (SEC1 EC, PKCS#1 RSA or PKCS#8) to renew the root with; a new key otherwise")
	fs.DurationVar(&o.rootDuration, "root-duration", rotatorv1.DefaultCertificateDuration, "validity of the root")
	fs.DurationVar(&o.issuerDuration, "issuer-duration", rotatorv1.DefaultCertificateDuration, "validity of the issuer")
	fs.StringVar(&o.algorithm, "key-algorithm", string(rotatorv1.ECDSA), "algorithm of new keys: ECDSA, RSA or Ed25519")
	fs.IntVar(&o.size, "key-size", 0, "size of new keys: 256, 384 or 521 for ECDSA (default 256), 2048 or more for RSA (default 2048)")
	fs.StringVar(&o.namespace, "namespace", "default", "NAMESPACE printed for daprd")
	fs.BoolVar(&o.force, "force", false, "overwrite files that exist")
	if err := parse(fs, args); err != nil {
		return o, err
	}
	switch {
	case o.out == "":
		return o, fmt.Errorf("%w: certs generate: --out is required", errUsage)
	case o.rootDuration < time.Hour || o.issuerDuration < time.Hour:
		return o, fmt.Errorf("%w: certs generate: durations must be at least 1h", errUsage)
	case o.issuerDuration > o.rootDuration:
		return o, fmt.Errorf("%w: certs generate: --issuer-duration must not exceed --root-duration", errUsage)
	}
	if o.size == 0 {
		o.size = map[string]int{"ECDSA": rotatorv1.DefaultECDSAKeySize, "RSA": rotatorv1.DefaultRSAKeySize}[o.algorithm]
	}
	return o, nil
}

// generate writes a root and an issuer for Sentry's --issuer-credentials
// directory, optionally from an existing root key (a same-key renewal, done
// offline), and prints the environment a self-hosted daprd needs.
func generate(args []string, stdout, stderr io.Writer) error {
	o, err := parseGenerate(args, stderr)
	if err != nil {
		return err
	}
	rootKey, files, err := rootKeyFor(o)
	if err != nil {
		return err
	}
	root, issuer, b, err := issueBundle(o, rootKey)
	if err != nil {
		return err
	}
	files = append(files,
		outputFile{name: "ca.crt", data: b.TrustAnchors, mode: 0o644},
		outputFile{name: "issuer.crt", data: b.IssuerChain, mode: 0o644},
		outputFile{name: "issuer.key", data: b.IssuerKey, mode: 0o600})
	if err := writeFiles(o.out, files, o.force); err != nil {
		return err
	}
	printGenerated(stdout, o, root, issuer)
	return nil
}

// rootKeyFor reads the brought root key, or makes a new one to be written
// as ca.key.
func rootKeyFor(o generateOptions) (crypto.Signer, []outputFile, error) {
	if o.rootKeyFile != "" {
		data, err := os.ReadFile(o.rootKeyFile)
		if err != nil {
			return nil, nil, fmt.Errorf("reading the root key: %w", err)
		}
		key, err := pki.ParsePrivateKey(data)
		if err != nil {
			return nil, nil, fmt.Errorf("%s holds no usable private key: %w", o.rootKeyFile, err)
		}
		return key, nil, nil
	}
	key, err := pki.GenerateKey(o.algorithm, o.size)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: certs generate: %v", errUsage, err)
	}
	keyPEM, err := pki.EncodePrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return key, []outputFile{{name: "ca.key", data: keyPEM, mode: 0o600}}, nil
}

// issueBundle signs the root with rootKey and an issuer under it, and checks
// the bundle as Sentry would.
func issueBundle(o generateOptions, rootKey crypto.Signer) (root, issuer *pki.CA, b pki.Bundle, err error) {
	issuerKey, err := pki.GenerateKey(o.algorithm, o.size)
	if err != nil {
		return nil, nil, b, fmt.Errorf("%w: certs generate: %v", errUsage, err)
	}
	if root, err = pki.NewRoot(pki.CASpec{CommonName: o.trustDomain, Validity: o.rootDuration}, rootKey); err != nil {
		return nil, nil, b, err
	}
	if issuer, err = pki.NewIntermediate(pki.CASpec{CommonName: o.trustDomain, Validity: o.issuerDuration}, issuerKey, root); err != nil {
		return nil, nil, b, err
	}
	issuerKeyPEM, err := pki.EncodePrivateKey(issuerKey)
	if err != nil {
		return nil, nil, b, err
	}
	b = pki.Bundle{TrustAnchors: pki.EncodeCertificates(root.Cert), IssuerChain: pki.EncodeCertificates(issuer.Cert), IssuerKey: issuerKeyPEM}
	if _, err := b.Validate(time.Now()); err != nil {
		return nil, nil, b, fmt.Errorf("the generated bundle would be refused by Dapr Sentry: %w", err)
	}
	return root, issuer, b, nil
}

// printGenerated says what was written and how Sentry and daprd use it.
func printGenerated(stdout io.Writer, o generateOptions, root, issuer *pki.CA) {
	dir, err := filepath.Abs(o.out)
	if err != nil {
		dir = o.out
	}
	fmt.Fprintf(stdout, "root    %s  public key %s  expires %s\n", pki.Fingerprint(root.Cert)[:23], pki.PublicKeyFingerprint(root.Cert)[:23], root.Cert.NotAfter.Format(time.RFC3339))
	fmt.Fprintf(stdout, "issuer  %s  expires %s\n", pki.Fingerprint(issuer.Cert)[:23], issuer.Cert.NotAfter.Format(time.RFC3339))
	if o.rootKeyFile == "" {
		fmt.Fprintf(stdout, "the root key is in %s: keep it offline; the next same-key renewal needs it (--root-key)\n",
			filepath.Join(dir, "ca.key"))
	}
	fmt.Fprintf(stdout, "\n# Dapr Sentry:\n#   sentry --issuer-credentials %s --trust-domain %s\n# daprd:\n", dir, o.trustDomain)
	for _, env := range []struct{ name, file string }{
		{"DAPR_TRUST_ANCHORS", "ca.crt"}, {"DAPR_CERT_CHAIN", "issuer.crt"}, {"DAPR_CERT_KEY", "issuer.key"},
	} {
		fmt.Fprintf(stdout, "export %s=\"$(cat %s)\"\n", env.name, filepath.Join(dir, env.file))
	}
	fmt.Fprintf(stdout, "export NAMESPACE=%s\n", o.namespace)
}

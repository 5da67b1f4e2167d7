package cli

import (
	"crypto"
	"crypto/x509"
	"errors"
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
	out, trustDomain, rootKeyFile, rootCertFile string
	algorithm, namespace                        string
	rootDuration, issuerDuration                time.Duration
	size                                        int
	force                                       bool
}

// parseGenerate reads and checks the flags of certs generate.
func parseGenerate(args []string, stderr io.Writer) (generateOptions, error) {
	var o generateOptions
	fs := newFlags("certs generate", stderr)
	fs.StringVar(&o.out, "out", "", "directory to write ca.crt, issuer.crt and issuer.key (and ca.key for a new root) into (required)")
	fs.StringVar(&o.trustDomain, "trust-domain", rotatorv1.DefaultTrustDomain, "SPIFFE trust domain: the certificates' common name")
	fs.StringVar(&o.rootKeyFile, "root-key", "", "PEM file of an existing root private key (SEC1 EC, PKCS#1 RSA or PKCS#8) to renew the root with; a new key otherwise")
	fs.StringVar(&o.rootCertFile, "root-cert", "", "with --root-key: PEM file of the trust anchors in use (the ca.crt that key made; default: ca.crt in --out); the renewed root keeps the subject of the one the key made, and is proven against them")
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
	case o.rootCertFile != "" && o.rootKeyFile == "":
		return o, fmt.Errorf("%w: certs generate: --root-cert goes with --root-key", errUsage)
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
	var inUse []*x509.Certificate
	var subject []byte
	if o.rootKeyFile != "" {
		var made *x509.Certificate
		if inUse, made, err = anchorsInUse(o, rootKey); err != nil {
			return err
		}
		subject = made.RawSubject
	}
	root, issuer, b, err := issueBundle(o, rootKey, subject)
	if err != nil {
		return err
	}
	if inUse != nil {
		if err := proveAgainst(inUse, b); err != nil {
			return err
		}
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

// anchorsInUse reads the trust anchors a brought root key made (--root-cert,
// or ca.crt in --out) and returns them with the one that carries the key:
// the renewed root takes its subject, or the sidecars that hold it would
// reject every certificate of the new issuer.
func anchorsInUse(o generateOptions, key crypto.Signer) (anchors []*x509.Certificate, made *x509.Certificate, err error) {
	file := o.rootCertFile
	if file == "" {
		file = filepath.Join(o.out, "ca.crt")
	}
	data, err := os.ReadFile(file)
	if o.rootCertFile == "" && errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("%w: certs generate: --root-key needs --root-cert, the ca.crt in use (--out holds none): the renewed root must keep its subject, or the sidecars reject the new issuer", errUsage)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("reading the trust anchors in use: %w", err)
	}
	if anchors, err = pki.ParseCertificates(data); err != nil {
		return nil, nil, fmt.Errorf("the trust anchors in use (%s): %w", file, err)
	}
	for _, a := range anchors {
		if pki.KeyMatches(key, a) {
			return anchors, a, nil
		}
	}
	return nil, nil, fmt.Errorf("no trust anchor in %s was made with the root key in %s: a same-key renewal cannot keep the sidecars that hold them working; generate a new root without --root-key and move onto it with an overlap",
		file, o.rootKeyFile)
}

// proveAgainst proves that sidecars holding the anchors in use accept the
// certificates the new issuer signs, as the operator proves a same-key
// publish.
func proveAgainst(inUse []*x509.Certificate, b pki.Bundle) error {
	now := time.Now()
	parsed, err := b.Validate(now)
	if err == nil {
		err = pki.ProveTransition(pki.Mesh{TrustSets: [][]*x509.Certificate{inUse}}, parsed, now)
	}
	if err != nil {
		return fmt.Errorf("the renewed bundle would break handshakes with the anchors in use: %w", err)
	}
	return nil
}

// issueBundle signs the root with rootKey (under subject, the DER subject of
// the root it renews, when set) and an issuer under it, and checks the bundle
// as Sentry would.
func issueBundle(o generateOptions, rootKey crypto.Signer, subject []byte) (root, issuer *pki.CA, b pki.Bundle, err error) {
	issuerKey, err := pki.GenerateKey(o.algorithm, o.size)
	if err != nil {
		return nil, nil, b, fmt.Errorf("%w: certs generate: %v", errUsage, err)
	}
	if root, err = pki.NewRoot(pki.CASpec{CommonName: o.trustDomain, RawSubject: subject, Validity: o.rootDuration}, rootKey); err != nil {
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

package cli

import (
	"bytes"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/mtls-rotator/mtls-rotator/internal/pki"
)

func runCLI(args ...string) (int, string, string) {
	var stdout, stderr bytes.Buffer
	code := Run(args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// readBundle reads what certs generate wrote and checks it as the operator
// checks what it publishes.
func readBundle(g Gomega, dir string) *pki.ParsedBundle {
	read := func(name string) []byte {
		data, err := os.ReadFile(filepath.Join(dir, name))
		g.Expect(err).NotTo(HaveOccurred())
		return data
	}
	parsed, err := pki.Bundle{TrustAnchors: read("ca.crt"), IssuerChain: read("issuer.crt"), IssuerKey: read("issuer.key")}.Validate(time.Now())
	g.Expect(err).NotTo(HaveOccurred())
	return parsed
}

func TestGenerateWritesWhatSentryAccepts(t *testing.T) {
	g := NewWithT(t)
	dir := filepath.Join(t.TempDir(), "certs")
	code, out, errOut := runCLI("certs", "generate", "--out", dir, "--trust-domain", "prod.example.org", "--namespace", "orders")
	g.Expect(code).To(Equal(0), errOut)
	parsed := readBundle(g, dir)
	g.Expect(parsed.Anchors[0].Subject.CommonName).To(Equal("prod.example.org"))
	for name, mode := range map[string]os.FileMode{"ca.crt": 0o644, "issuer.crt": 0o644, "issuer.key": 0o600, "ca.key": 0o600} {
		info, err := os.Stat(filepath.Join(dir, name))
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(info.Mode().Perm()).To(Equal(mode), name)
	}
	for _, line := range []string{
		`export DAPR_TRUST_ANCHORS="$(cat ` + filepath.Join(dir, "ca.crt") + `)"`,
		`export DAPR_CERT_CHAIN="$(cat ` + filepath.Join(dir, "issuer.crt") + `)"`,
		`export DAPR_CERT_KEY="$(cat ` + filepath.Join(dir, "issuer.key") + `)"`,
		"export NAMESPACE=orders",
		"sentry --issuer-credentials " + dir + " --trust-domain prod.example.org",
	} {
		g.Expect(out).To(ContainSubstring(line))
	}
	entries, err := os.ReadDir(dir)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(entries).To(HaveLen(4), "no temporary file is left behind")
	g.Expect(out).NotTo(ContainSubstring("PRIVATE KEY"), "no key material on the terminal")
	g.Expect(out).NotTo(ContainSubstring("BEGIN CERTIFICATE"))

	// Same-key renewal offline: the root key given, a new root with its public key.
	renewed := filepath.Join(t.TempDir(), "renewed")
	code, out, errOut = runCLI("certs", "generate", "--out", renewed, "--root-key", filepath.Join(dir, "ca.key"), "--root-cert", filepath.Join(dir, "ca.crt"))
	g.Expect(code).To(Equal(0), errOut)
	again := readBundle(g, renewed)
	g.Expect(pki.SamePublicKey(again.Anchors[0], parsed.Anchors[0])).To(BeTrue())
	g.Expect(again.Anchors[0].SerialNumber).NotTo(Equal(parsed.Anchors[0].SerialNumber))
	g.Expect(pki.VerifyChain(parsed.Chain, again.Anchors, time.Now())).To(Succeed(), "the old issuer verifies under the renewed root")
	g.Expect(filepath.Join(renewed, "ca.key")).NotTo(BeAnExistingFile(), "a brought key is not copied")
	g.Expect(out).NotTo(ContainSubstring("keep it offline"))

	// In place (ca.crt in --out is the root in use), under another trust
	// domain: the root keeps its subject, so the anchors in use accept the
	// new issuer.
	code, _, errOut = runCLI("certs", "generate", "--out", dir, "--force", "--root-key", filepath.Join(dir, "ca.key"), "--trust-domain", "other.example.org")
	g.Expect(code).To(Equal(0), errOut)
	inPlace := readBundle(g, dir)
	g.Expect(inPlace.Anchors[0].RawSubject).To(Equal(parsed.Anchors[0].RawSubject))
	g.Expect(pki.VerifyChain(inPlace.Chain, parsed.Anchors, time.Now())).To(Succeed(), "the new issuer verifies under the anchors in use")

	rsa := filepath.Join(t.TempDir(), "rsa")
	code, _, errOut = runCLI("certs", "generate", "--out", rsa, "--key-algorithm", "RSA", "--root-duration", "2h", "--issuer-duration", "1h")
	g.Expect(code).To(Equal(0), errOut)
	g.Expect(readBundle(g, rsa).Issuer().PublicKeyAlgorithm.String()).To(Equal("RSA"))
}

// TestRenewalKeepsASubjectOfMoreThanACommonName: a root made elsewhere, whose
// subject carries an organization too, is renewed under the same subject,
// byte for byte.
func TestRenewalKeepsASubjectOfMoreThanACommonName(t *testing.T) {
	g := NewWithT(t)
	dir := t.TempDir()
	key, err := pki.GenerateKey("ECDSA", 256)
	g.Expect(err).NotTo(HaveOccurred())
	subject, err := asn1.Marshal(pkix.Name{CommonName: "cluster.local", Organization: []string{"Example Corp"}}.ToRDNSequence())
	g.Expect(err).NotTo(HaveOccurred())
	root, err := pki.NewRoot(pki.CASpec{RawSubject: subject, Validity: 24 * time.Hour}, key)
	g.Expect(err).NotTo(HaveOccurred())
	keyPEM, err := pki.EncodePrivateKey(key)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(os.WriteFile(filepath.Join(dir, "root.key"), keyPEM, 0o600)).To(Succeed())
	g.Expect(os.WriteFile(filepath.Join(dir, "root.crt"), pki.EncodeCertificates(root.Cert), 0o644)).To(Succeed())

	out := filepath.Join(dir, "out")
	code, _, errOut := runCLI("certs", "generate", "--out", out, "--root-key", filepath.Join(dir, "root.key"), "--root-cert", filepath.Join(dir, "root.crt"))
	g.Expect(code).To(Equal(0), errOut)
	renewed := readBundle(g, out)
	g.Expect(renewed.Anchors[0].Subject.Organization).To(Equal([]string{"Example Corp"}))
	g.Expect(renewed.Anchors[0].RawSubject).To(Equal(root.Cert.RawSubject))
	g.Expect(pki.VerifyChain(renewed.Chain, []*x509.Certificate{root.Cert}, time.Now())).To(Succeed())
}

func TestGenerateNeverOverwritesWithoutForce(t *testing.T) {
	g := NewWithT(t)
	dir := t.TempDir()
	g.Expect(os.WriteFile(filepath.Join(dir, "issuer.key"), []byte("precious"), 0o600)).To(Succeed())
	code, _, errOut := runCLI("certs", "generate", "--out", dir)
	g.Expect(code).To(Equal(1))
	g.Expect(errOut).To(ContainSubstring("already holds issuer.key: not overwritten (use --force to replace)"))
	g.Expect(os.ReadFile(filepath.Join(dir, "issuer.key"))).To(Equal([]byte("precious")))
	g.Expect(filepath.Join(dir, "ca.crt")).NotTo(BeAnExistingFile(), "all or nothing")

	code, _, errOut = runCLI("certs", "generate", "--out", dir, "--force")
	g.Expect(code).To(Equal(0), errOut)
	readBundle(g, dir)
}

func TestBadInvocationsAreUsageErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.key")
	if err := os.WriteFile(bad, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A root key, and the anchor of another key.
	made := t.TempDir()
	if code, _, errOut := runCLI("certs", "generate", "--out", made); code != 0 {
		t.Fatal(errOut)
	}
	good := filepath.Join(made, "ca.key")
	others := t.TempDir()
	if code, _, errOut := runCLI("certs", "generate", "--out", others); code != 0 {
		t.Fatal(errOut)
	}
	other := filepath.Join(others, "ca.crt")
	tests := []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"certs"}, 2, `unknown subcommand "certs"`},
		{[]string{"certs", "renew"}, 2, `unknown subcommand "certs renew"`},
		{[]string{"certs", "generate"}, 2, "--out is required"},
		{[]string{"certs", "generate", "--out", dir, "--bogus"}, 2, "flag provided but not defined: -bogus"},
		{[]string{"certs", "generate", "--out", dir, "extra"}, 2, `unexpected argument "extra"`},
		{[]string{"certs", "generate", "--out", dir, "--issuer-duration", "9000h"}, 2, "--issuer-duration must not exceed --root-duration"},
		{[]string{"certs", "generate", "--out", dir, "--root-duration", "30m"}, 2, "durations must be at least 1h"},
		{[]string{"certs", "generate", "--out", dir, "--key-algorithm", "DSA"}, 2, "unknown key algorithm"},
		{[]string{"certs", "generate", "--out", dir, "--key-algorithm", "ECDSA", "--key-size", "1024"}, 2, "256, 384 or 521"},
		{[]string{"certs", "generate", "--out", dir, "--root-key", bad}, 1, "holds no usable private key"},
		{[]string{"certs", "generate", "--out", dir, "--root-key", good}, 2, "--root-key needs --root-cert, the ca.crt in use"},
		{[]string{"certs", "generate", "--out", dir, "--root-cert", other}, 2, "--root-cert goes with --root-key"},
		{[]string{"certs", "generate", "--out", dir, "--root-key", good, "--root-cert", other}, 1, "no trust anchor in " + other + " was made with the root key in " + good},
		{[]string{"certs", "export"}, 2, "--out is required"},
		{[]string{"status", "--all"}, 2, "flag provided but not defined: -all"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			g := NewWithT(t)
			code, _, errOut := runCLI(tt.args...)
			g.Expect(code).To(Equal(tt.code), errOut)
			g.Expect(errOut).To(ContainSubstring(tt.msg))
		})
	}
	g := NewWithT(t)
	entries, err := os.ReadDir(dir)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(entries).To(HaveLen(1), "no failed invocation wrote anything")

	code, out, _ := runCLI("help")
	g.Expect(code).To(Equal(0))
	g.Expect(out).To(ContainSubstring("mtls-rotator certs generate"))
	g.Expect(IsSubcommand([]string{"--leader-elect"})).To(BeFalse(), "operator flags run the operator")
	g.Expect(IsSubcommand([]string{"status"})).To(BeTrue())
}

// TestAFileCreatedSinceTheCheckIsNotOverwritten: without --force, a name
// that appears between the check and the write is left as it is, and the
// files already put in place are taken back: all or none.
func TestAFileCreatedSinceTheCheckIsNotOverwritten(t *testing.T) {
	g := NewWithT(t)
	dir := t.TempDir()
	files := []outputFile{{name: "ca.crt", data: []byte("new ca"), mode: 0o644}, {name: "issuer.key", data: []byte("new key"), mode: 0o600}}
	var tmps []string
	for _, f := range files {
		tmp := filepath.Join(dir, "."+f.name+".tmp")
		g.Expect(os.WriteFile(tmp, f.data, f.mode)).To(Succeed())
		tmps = append(tmps, tmp)
	}
	// Someone else's key appears after the check.
	g.Expect(os.WriteFile(filepath.Join(dir, "issuer.key"), []byte("theirs"), 0o600)).To(Succeed())

	err := placeFiles(dir, tmps, files, false)
	g.Expect(err).To(MatchError(ContainSubstring("already holds issuer.key: not overwritten")))
	g.Expect(os.ReadFile(filepath.Join(dir, "issuer.key"))).To(Equal([]byte("theirs")))
	g.Expect(filepath.Join(dir, "ca.crt")).NotTo(BeAnExistingFile(), "all or none")
}

package bundle

import (
	"strings"
	"testing"

	. "github.com/onsi/gomega"

	"github.com/mtls-rotator/mtls-rotator/internal/pki"
)

var keys = Keys{CA: "ca.crt", IssuerCert: "issuer.crt", IssuerKey: "issuer.key"}

func TestSecretDataPreservesForeignKeysAndSkipsNoOps(t *testing.T) {
	g := NewWithT(t)
	b := pki.Bundle{TrustAnchors: []byte("ca"), IssuerChain: []byte("chain"), IssuerKey: []byte("key")}
	existing := map[string][]byte{"jwt.key": []byte("jwt"), "jwks.json": []byte("{}"), "ca.crt": []byte("old")}

	data, changed := SecretData(existing, b, keys)
	g.Expect(changed).To(BeTrue())
	g.Expect(data).To(Equal(map[string][]byte{
		"jwt.key": []byte("jwt"), "jwks.json": []byte("{}"),
		"ca.crt": []byte("ca"), "issuer.crt": []byte("chain"), "issuer.key": []byte("key"),
	}))
	g.Expect(existing["ca.crt"]).To(Equal([]byte("old")), "the input is not modified")

	_, changed = SecretData(data, b, keys)
	g.Expect(changed).To(BeFalse(), "writing the same bundle again is a no-op")

	data, changed = SecretData(nil, b, keys)
	g.Expect(changed).To(BeTrue())
	g.Expect(data).To(HaveLen(3))
}

func TestSecretDataDetectsAnEmptyKeyBeingAdded(t *testing.T) {
	// Helm creates the Secret without data; an empty value must still be written.
	_, changed := SecretData(map[string][]byte{"ca.crt": nil, "issuer.crt": nil}, pki.Bundle{}, keys)
	NewWithT(t).Expect(changed).To(BeTrue())
}

func TestConfigMapData(t *testing.T) {
	g := NewWithT(t)
	b := pki.Bundle{TrustAnchors: []byte("ca")}
	data, changed := ConfigMapData(map[string]string{"other": "x"}, b, keys)
	g.Expect(changed).To(BeTrue())
	g.Expect(data).To(Equal(map[string]string{"other": "x", "ca.crt": "ca"}))
	_, changed = ConfigMapData(data, b, keys)
	g.Expect(changed).To(BeFalse())
}

func TestConsistent(t *testing.T) {
	g := NewWithT(t)
	g.Expect(Consistent(map[string][]byte{"ca.crt": []byte("x")}, map[string]string{"ca.crt": "x"}, keys)).To(BeTrue())
	g.Expect(Consistent(map[string][]byte{"ca.crt": []byte("x")}, map[string]string{"ca.crt": "x\n"}, keys)).To(BeFalse())
	g.Expect(Consistent(nil, nil, keys)).To(BeTrue(), "both empty, as Helm creates them")
}

func TestHashAndDescribe(t *testing.T) {
	g := NewWithT(t)
	a := pki.Bundle{TrustAnchors: []byte("ab"), IssuerChain: []byte("c"), IssuerKey: []byte("secret-key")}
	b := pki.Bundle{TrustAnchors: []byte("a"), IssuerChain: []byte("bc"), IssuerKey: []byte("secret-key")}
	g.Expect(Hash(a)).NotTo(Equal(Hash(b)), "field boundaries count")
	g.Expect(Hash(a)).To(Equal(Hash(a)))
	g.Expect(Hash(a)).To(HavePrefix("sha256:"))
	g.Expect(strings.Contains(Hash(a), "secret")).To(BeFalse())
	g.Expect(Describe(a, b, keys)).To(Equal("[ca.crt issuer.crt] differ"))
	g.Expect(Describe(a, a, keys)).To(Equal("no difference"))
}

func TestReplacedRoundTripsByteForByte(t *testing.T) {
	g := NewWithT(t)
	k := Keys{CA: "root.pem", IssuerCert: "issuer.pem", IssuerKey: "issuer-key.pem"}
	original := map[string][]byte{"ca.crt": []byte("original anchors"), "issuer.crt": []byte("chain"), "issuer.key": []byte("key")}
	r := Replaced{
		Bundle:      pki.Bundle{TrustAnchors: []byte("A\r\n"), IssuerChain: []byte("B"), IssuerKey: []byte("C")},
		ConfigMapCA: []byte("A differently\n"), HasConfigMapCA: true,
	}
	data := ReplacedData(original, r, k)
	g.Expect(ReplacedFrom(data, k)).To(Equal(r))
	for key, v := range original {
		g.Expect(data).To(HaveKeyWithValue(key, v), "the backup's own bundle is kept")
	}
	g.Expect(original).To(HaveLen(3), "the input is not modified")

	none := Replaced{Bundle: pki.Bundle{TrustAnchors: []byte("X"), IssuerChain: []byte("Y"), IssuerKey: []byte("Z")}}
	g.Expect(ReplacedFrom(ReplacedData(data, none, k), k)).To(Equal(none), "a ConfigMap without anchors is recorded as such")
	g.Expect(ReplacedFrom(original, k).Bundle.IsEmpty()).To(BeTrue(), "nothing recorded reads as empty")
}

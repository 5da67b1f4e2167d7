package controllers

import (
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/pki"
	"github.com/mtls-rotator/mtls-rotator/internal/pki/pkitest"
)

func TestRootKeyGenerations(t *testing.T) {
	tests := []struct {
		name    string
		secrets []string
		want    []int32
	}{
		{"none", nil, nil},
		{"only other objects' and the issuer's", []string{"other-root", "dapr-issuer", "dapr-backup", "dapr-root-ca"}, nil},
		{"the first generation", []string{"dapr-root", "dapr-issuer"}, []int32{1}},
		{"after a Rotate", []string{"dapr-root-g3", "dapr-issuer"}, []int32{3}},
		{"newest first", []string{"dapr-root", "dapr-root-g10", "dapr-root-g2"}, []int32{10, 2, 1}},
		{"not generation names", []string{"dapr-root-g", "dapr-root-g1", "dapr-root-g02", "dapr-root-gx", "dapr-root-g-4", "dapr-rootx"}, nil},
		{"another object whose name extends ours", []string{"dapr-root-g2", "dapr-root-g3x"}, []int32{2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			NewWithT(t).Expect(rootKeyGenerations("dapr", tt.secrets)).To(Equal(tt.want))
		})
	}
}

// keySecret is a Secret holding a PEM key under key.
func keySecret(t *testing.T, name, key string, pem []byte) *corev1.Secret {
	return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{OwnerLabel: "mesh"}},
		Data: map[string][]byte{key: pem}}
}

// TestImportRootKey: a brought key is imported into the root Secret before
// cert-manager issues with it; anything that would not be the brought key
// stalls, and a root Secret is never overwritten.
func TestImportRootKey(t *testing.T) {
	mine := pkitest.NewRoot(t, pkitest.Options{})
	other := pkitest.NewRoot(t, pkitest.Options{})
	rsaKey, err := pki.EncodePrivateKey(pkitest.RSAKey(t, 2048))
	if err != nil {
		t.Fatal(err)
	}
	brought := func(obj *rotatorv1.MTLSRootRotation) {
		obj.Spec.Root.PrivateKeySecretRef = &rotatorv1.KeySecretRef{Name: "my-key"}
	}
	tests := []struct {
		name       string
		objs       []client.Object
		want       string
		wantWrites []string
		message    string
	}{
		{"imported into a new root Secret", []client.Object{keySecret(t, "my-key", "ca.key", mine.KeyPEM(t))}, "",
			[]string{"create Secret/mesh-root"}, ""},
		{"already imported: nothing to do", []client.Object{keySecret(t, "my-key", "ca.key", mine.KeyPEM(t)), keySecret(t, "mesh-root", "tls.key", mine.KeyPEM(t))}, "",
			nil, ""},
		{"the Secret does not exist", nil, "stall:" + rotatorv1.InvalidPrivateKeyReason, nil, "does not exist"},
		{"no usable key in it", []client.Object{keySecret(t, "my-key", "ca.key", []byte("not a key"))}, "stall:" + rotatorv1.InvalidPrivateKeyReason, nil,
			"holds no usable private key"},
		{"the key is under another data key", []client.Object{keySecret(t, "my-key", "tls.key", mine.KeyPEM(t))}, "stall:" + rotatorv1.InvalidPrivateKeyReason, nil,
			`key "ca.key"`},
		{"another algorithm than the spec asks for", []client.Object{keySecret(t, "my-key", "ca.key", rsaKey)}, "stall:" + rotatorv1.InvalidPrivateKeyReason, nil,
			"is RSA 2048, but spec.root.privateKey asks for ECDSA 256"},
		{"a root Secret holding another key is never overwritten", []client.Object{keySecret(t, "my-key", "ca.key", mine.KeyPEM(t)), keySecret(t, "mesh-root", "tls.key", other.KeyPEM(t))},
			"stall:" + rotatorv1.InvalidPrivateKeyReason, nil, "it is never overwritten"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			h := newHarness(t, append(append(trustBundle(pki.Bundle{}), tt.objs...), rotationObj(brought))...)
			p := h.pass("mesh")
			err := p.importRootKey(t.Context())
			g.Expect(kindOf(err)).To(Equal(tt.want), "%v", err)
			g.Expect(h.writes).To(Equal(tt.wantWrites))
			if tt.message != "" {
				g.Expect(err.Error()).To(ContainSubstring(tt.message))
			}
			if tt.wantWrites != nil {
				root := h.get(&corev1.Secret{}, "mesh-root").(*corev1.Secret)
				key, err := pki.ParsePrivateKey(root.Data[corev1.TLSPrivateKeyKey])
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(pki.KeyMatches(key, mine.Cert)).To(BeTrue())
			}
		})
	}
}

// TestAdoptRootKeyGeneration: a new object takes up the newest root key
// Secret an earlier object of its name left whose key made an installed
// anchor, or else the newest.
func TestAdoptRootKeyGeneration(t *testing.T) {
	a := pkitest.NewRoot(t, pkitest.Options{NotBefore: t0.Add(-48 * time.Hour)})
	b := pkitest.NewRoot(t, pkitest.Options{NotBefore: t0.Add(-48 * time.Hour)})
	c := pkitest.NewRoot(t, pkitest.Options{NotBefore: t0.Add(-48 * time.Hour)})
	issuerOf := func(root *pkitest.CA) pki.Bundle {
		return bundleFrom(t, pkitest.NewIssuer(t, root, pkitest.Options{NotBefore: t0.Add(-time.Hour)}), root)
	}
	left := []client.Object{keySecret(t, "mesh-root", "tls.key", a.KeyPEM(t)), keySecret(t, "mesh-root-g3", "tls.key", b.KeyPEM(t))}
	tests := []struct {
		name      string
		installed pki.Bundle
		objs      []client.Object
		obj       *rotatorv1.MTLSRootRotation
		want      int32
	}{
		{"the generation whose key made the installed anchors", issuerOf(a), left, rotationObj(), 1},
		{"the newest when it made them", issuerOf(b), left, rotationObj(), 3},
		{"the newest when none made them", issuerOf(c), left, rotationObj(), 3},
		{"none left: none taken", issuerOf(a), nil, rotationObj(), 0},
		{"an object that has rotated keeps its own", issuerOf(a), left, rotationObj(atStep(rotatorv1.StepIssuing, rotatorv1.KeyPolicyReuse, "")), 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			h := newHarness(t, append(append(trustBundle(tt.installed), tt.objs...), tt.obj)...)
			p := h.pass("mesh") // reconcileTarget adopts
			g.Expect(p.obj.Status.RootKeyGeneration).To(Equal(tt.want))
			g.Expect(h.writes).To(BeEmpty())
		})
	}
}

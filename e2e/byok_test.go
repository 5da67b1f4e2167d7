package e2e

import (
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"testing"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/pki"
	"github.com/mtls-rotator/mtls-rotator/internal/pki/pkitest"
)

// keySecret stores a PEM key the way the openssl recipe leaves it (ca.key).
func keySecret(t *testing.T, name string, keyPEM []byte) *corev1.Secret {
	t.Helper()
	return createInDaprNamespace(t, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name}, Data: map[string][]byte{"ca.key": keyPEM}})
}

func TestBringYourOwnRootKey(t *testing.T) {
	g := NewWithT(t)
	freshBundle(t)
	// 'openssl ecparam -name prime256v1 -genkey' output: EC PARAMETERS, then a SEC1 key.
	key := pkitest.ECDSAKey(t).(*ecdsa.PrivateKey)
	sec1, err := x509.MarshalECPrivateKey(key)
	g.Expect(err).NotTo(HaveOccurred())
	keyPEM := append(pem.EncodeToMemory(&pem.Block{Type: "EC PARAMETERS", Bytes: []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1})...)
	src := keySecret(t, "my-root-key", keyPEM)

	startOperator(t)
	rotKey := newRotation(t, "byok", rotatorv1.MTLSRootRotationSpec{
		Trigger: "a", Root: rotatorv1.RootSpec{PrivateKeySecretRef: &rotatorv1.KeySecretRef{Name: src.Name}},
	})
	waitRotationCompleted(t, rotKey, "a")
	secret, _ := readBundle(t)
	anchors, err := pki.ParseCertificates(secret.Data["ca.crt"])
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(anchors[0].PublicKey).To(Equal(key.Public()), "the root carries the brought key")

	after := &corev1.Secret{}
	g.Expect(k8sClient.Get(t.Context(), types.NamespacedName{Namespace: src.Namespace, Name: src.Name}, after)).To(Succeed())
	g.Expect(after.ResourceVersion).To(Equal(src.ResourceVersion), "the brought key's Secret is never modified")
	g.Expect(after.Data).To(Equal(src.Data))
}

func TestBroughtKeysThatCannotBeUsedAreRefused(t *testing.T) {
	for _, tt := range []struct {
		name, message string
		keyPEM        func(t *testing.T) []byte
	}{
		{"no parseable key", "holds no usable private key", func(*testing.T) []byte { return []byte("not a key") }},
		{"wrong algorithm", "is RSA 2048, but spec.root.privateKey asks for ECDSA 256", func(t *testing.T) []byte {
			return pkitest.NewRoot(t, pkitest.Options{Key: pkitest.RSAKey(t, 2048)}).KeyPEM(t)
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			freshBundle(t)
			src := keySecret(t, "bad-root-key", tt.keyPEM(t))
			startOperator(t)
			before, beforeCM := readBundle(t)
			key := newRotation(t, "bad-key", rotatorv1.MTLSRootRotationSpec{
				Trigger: "a", Root: rotatorv1.RootSpec{PrivateKeySecretRef: &rotatorv1.KeySecretRef{Name: src.Name}},
			})
			obj := waitStalled(t, key, rotatorv1.InvalidPrivateKeyReason)
			g.Expect(conditions.GetMessage(obj, meta.StalledCondition)).To(ContainSubstring(tt.message))
			bundleUnchanged(t, before, beforeCM)
			g.Expect(k8sClient.Get(t.Context(), types.NamespacedName{Namespace: key.Namespace, Name: "bad-key-root"}, &corev1.Secret{})).
				NotTo(Succeed(), "nothing is imported")
		})
	}
}

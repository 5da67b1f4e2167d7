// Package bundle maps Dapr's trust bundle onto the Secret and ConfigMap Sentry
// reads: which keys hold what, how a write preserves the keys we do not manage
// (Sentry's JWT signing key and JWKS), whether a write would change anything,
// and a content hash for the owned-object annotation.
package bundle

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"maps"

	"github.com/mtls-rotator/mtls-rotator/internal/pki"
)

// Keys are the data keys of the bundle (Dapr's global.issuerFilenames).
type Keys struct {
	CA         string
	IssuerCert string
	IssuerKey  string
}

// FromSecret reads a bundle from Secret data.
func FromSecret(data map[string][]byte, k Keys) pki.Bundle {
	return pki.Bundle{TrustAnchors: data[k.CA], IssuerChain: data[k.IssuerCert], IssuerKey: data[k.IssuerKey]}
}

// Consistent reports whether the ConfigMap's anchors are byte-identical to the
// Secret's; Sentry regenerates its CA when they are not.
func Consistent(secretData map[string][]byte, configMapData map[string]string, k Keys) bool {
	return bytes.Equal(secretData[k.CA], []byte(configMapData[k.CA]))
}

// SecretData returns the Secret data that publishes b: a copy of existing
// with the three managed keys set and every other key kept. changed is false
// when existing already holds exactly that.
func SecretData(existing map[string][]byte, b pki.Bundle, k Keys) (data map[string][]byte, changed bool) {
	data = maps.Clone(existing)
	if data == nil {
		data = map[string][]byte{}
	}
	for key, value := range map[string][]byte{k.CA: b.TrustAnchors, k.IssuerCert: b.IssuerChain, k.IssuerKey: b.IssuerKey} {
		if old, ok := data[key]; !ok || !bytes.Equal(old, value) {
			changed = true
		}
		data[key] = bytes.Clone(value)
	}
	return data, changed
}

// ConfigMapData returns the ConfigMap data that publishes the anchors of b,
// every other key kept; changed is false when nothing would change.
func ConfigMapData(existing map[string]string, b pki.Bundle, k Keys) (data map[string]string, changed bool) {
	data = maps.Clone(existing)
	if data == nil {
		data = map[string]string{}
	}
	old, ok := data[k.CA]
	changed = !ok || old != string(b.TrustAnchors)
	data[k.CA] = string(b.TrustAnchors)
	return data, changed
}

// Hash is a content hash of the bundle for the owned-object annotation; it
// reveals nothing of the key.
func Hash(b pki.Bundle) string {
	h := sha256.New()
	for _, part := range [][]byte{b.TrustAnchors, b.IssuerChain, b.IssuerKey} {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(part)))
		h.Write(n[:])
		h.Write(part)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))[:32]
}

// Describe names which parts of two bundles differ, for events and
// conditions; it never includes the content.
func Describe(a, b pki.Bundle, k Keys) string {
	var diff []string
	if !bytes.Equal(a.TrustAnchors, b.TrustAnchors) {
		diff = append(diff, k.CA)
	}
	if !bytes.Equal(a.IssuerChain, b.IssuerChain) {
		diff = append(diff, k.IssuerCert)
	}
	if !bytes.Equal(a.IssuerKey, b.IssuerKey) {
		diff = append(diff, k.IssuerKey)
	}
	if len(diff) == 0 {
		return "no difference"
	}
	return fmt.Sprintf("%v differ", diff)
}

// Replaced is what a publish overwrote: the managed keys of the Secret and the
// ConfigMap's anchors, byte for byte, so that a rollback restores exactly them.
type Replaced struct {
	Bundle         pki.Bundle
	ConfigMapCA    []byte
	HasConfigMapCA bool
}

const (
	replacedPrefix          = "replaced."
	replacedConfigMapPrefix = "replaced.configmap."
)

// ReplacedData returns backup Secret data recording r: backup, with the
// replaced entries set under their own prefix and every other key kept.
func ReplacedData(backup map[string][]byte, r Replaced, k Keys) map[string][]byte {
	data := maps.Clone(backup)
	if data == nil {
		data = map[string][]byte{}
	}
	for key, value := range map[string][]byte{k.CA: r.Bundle.TrustAnchors, k.IssuerCert: r.Bundle.IssuerChain, k.IssuerKey: r.Bundle.IssuerKey} {
		data[replacedPrefix+key] = bytes.Clone(value)
	}
	delete(data, replacedConfigMapPrefix+k.CA)
	if r.HasConfigMapCA {
		data[replacedConfigMapPrefix+k.CA] = bytes.Clone(r.ConfigMapCA)
	}
	return data
}

// KeyMaterial are the backup data keys that hold private keys: the issuer
// key of the bundle installed before the rotation, and of what the last
// publish replaced.
func KeyMaterial(k Keys) []string { return []string{k.IssuerKey, replacedPrefix + k.IssuerKey} }

// ReplacedFrom reads what ReplacedData recorded.
func ReplacedFrom(backup map[string][]byte, k Keys) Replaced {
	cm, ok := backup[replacedConfigMapPrefix+k.CA]
	return Replaced{
		Bundle: pki.Bundle{
			TrustAnchors: backup[replacedPrefix+k.CA], IssuerChain: backup[replacedPrefix+k.IssuerCert], IssuerKey: backup[replacedPrefix+k.IssuerKey],
		},
		ConfigMapCA: cm, HasConfigMapCA: ok,
	}
}

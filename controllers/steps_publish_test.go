package controllers

import (
	"slices"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/bundle"
	"github.com/mtls-rotator/mtls-rotator/internal/pki"
	"github.com/mtls-rotator/mtls-rotator/internal/pki/pkitest"
)

// TestStepVerifying: each strategy proves what was issued before anything
// is written, and a proof that fails stalls with a reason.
func TestStepVerifying(t *testing.T) {
	k := newPKI(t)
	other := pkitest.NewRoot(t, pkitest.Options{NotBefore: t0.Add(-48 * time.Hour)})
	otherIssuer := pkitest.NewIssuer(t, other, pkitest.Options{NotBefore: t0.Add(-time.Hour)})
	sameKeyIssued := []client.Object{issued(t, "mesh-root", k.renewed, k.renewed), issued(t, "mesh-issuer", k.renewIssuer, k.renewed)}
	tests := []struct {
		name      string
		obj       *rotatorv1.MTLSRootRotation
		installed pki.Bundle
		issued    []client.Object
		want      string
	}{
		{"same key: a renewed root over the installed one is proven", rotationObj(atStep(rotatorv1.StepVerifying, rotatorv1.KeyPolicyReuse, "")),
			bundleFrom(t, k.oldIssuer, k.old), sameKeyIssued, ""},
		{"same key: a first issuance onto an empty bundle is proven", rotationObj(atStep(rotatorv1.StepVerifying, rotatorv1.KeyPolicyReuse, "")),
			pki.Bundle{}, sameKeyIssued, ""},
		{"same key: anchors of another key stall for good (RootKeyUnknown)", rotationObj(atStep(rotatorv1.StepVerifying, rotatorv1.KeyPolicyReuse, "")),
			bundleFrom(t, otherIssuer, other), sameKeyIssued, "stall!:" + rotatorv1.RootKeyUnknownReason},
		{"same key: an invalid installed bundle stalls for good", rotationObj(atStep(rotatorv1.StepVerifying, rotatorv1.KeyPolicyReuse, "")),
			pki.Bundle{TrustAnchors: []byte("x"), IssuerChain: k.oldIssuer.CertPEM(), IssuerKey: k.oldIssuer.KeyPEM(t)}, sameKeyIssued, "stall!:" + rotatorv1.RootKeyUnknownReason},
		{"same key: an issued bundle Sentry would refuse stalls and looks again", rotationObj(atStep(rotatorv1.StepVerifying, rotatorv1.KeyPolicyReuse, "")),
			bundleFrom(t, k.oldIssuer, k.old), []client.Object{issued(t, "mesh-root", k.renewed, k.renewed), issued(t, "mesh-issuer", k.freshIssuer, k.fresh)},
			"stall:" + rotatorv1.InvalidBundleReason},
		{"new key: the new root and issuer are checked on their own", rotationObj(atStep(rotatorv1.StepVerifying, rotatorv1.KeyPolicyRotate, rotatorv1.PhaseOverlap)),
			bundleFrom(t, otherIssuer, other), []client.Object{issued(t, "mesh-root-g2", k.fresh, k.fresh), issued(t, "mesh-issuer", k.freshIssuer, k.fresh)}, ""},
		{"new key: an issuer of another root stalls and looks again", rotationObj(atStep(rotatorv1.StepVerifying, rotatorv1.KeyPolicyRotate, rotatorv1.PhaseOverlap)),
			bundleFrom(t, otherIssuer, other), []client.Object{issued(t, "mesh-root-g2", k.fresh, k.fresh), issued(t, "mesh-issuer", k.oldIssuer, k.old)},
			"stall:" + rotatorv1.InvalidBundleReason},
		{"issued Secrets not there yet are an error, retried", rotationObj(atStep(rotatorv1.StepVerifying, rotatorv1.KeyPolicyReuse, "")),
			bundleFrom(t, k.oldIssuer, k.old), nil, "error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			h := newHarness(t, append(trustBundle(tt.installed), append(tt.issued, tt.obj)...)...)
			p := h.pass("mesh")
			err := p.strategy().verify(t.Context())
			g.Expect(kindOf(err)).To(Equal(tt.want), "%v", err)
			g.Expect(h.writes).To(BeEmpty(), "verifying writes nothing")
		})
	}
}

// TestStepPublishing: the bundle each strategy composes is written to the
// Secret and the ConfigMap, byte-identical anchors in both, after the
// installed one is kept; a failed write records nothing.
func TestStepPublishing(t *testing.T) {
	k := newPKI(t)
	expiredIssuer := pkitest.NewIssuer(t, k.old, pkitest.Options{NotBefore: t0.Add(-3 * time.Hour), Validity: time.Hour})
	newKeyIssued := []client.Object{issued(t, "mesh-root-g2", k.fresh, k.fresh), issued(t, "mesh-issuer", k.freshIssuer, k.fresh)}
	tests := []struct {
		name           string
		obj            *rotatorv1.MTLSRootRotation
		installed      pki.Bundle
		issued         []client.Object
		fail           func(string, string) error
		want           string
		wantAnchors    int32
		wantIssuer     *pkitest.CA
		wantIssuerRoot *pkitest.CA // when not the newest anchor
		wantPhase      rotatorv1.RotationPhase
		wantEvents     []string
	}{{
		name:        "same key: the issued bundle replaces the installed one",
		obj:         rotationObj(atStep(rotatorv1.StepPublishing, rotatorv1.KeyPolicyReuse, "")),
		installed:   bundleFrom(t, k.oldIssuer, k.old),
		issued:      []client.Object{issued(t, "mesh-root", k.renewed, k.renewed), issued(t, "mesh-issuer", k.renewIssuer, k.renewed)},
		wantAnchors: 1, wantIssuer: k.renewIssuer, wantEvents: []string{"TrustBundlePublished"},
	}, {
		name:      "new key, overlap: installed anchors and the new root, with the installed issuer",
		obj:       rotationObj(atStep(rotatorv1.StepPublishing, rotatorv1.KeyPolicyRotate, rotatorv1.PhaseOverlap)),
		installed: bundleFrom(t, k.oldIssuer, k.old), issued: newKeyIssued,
		wantAnchors: 2, wantIssuer: k.oldIssuer, wantIssuerRoot: k.old, wantPhase: rotatorv1.PhaseOverlap, wantEvents: []string{"TrustBundlePublished"},
	}, {
		name:      "new key over nothing installed: straight to prune",
		obj:       rotationObj(atStep(rotatorv1.StepPublishing, rotatorv1.KeyPolicyRotate, rotatorv1.PhaseOverlap)),
		installed: pki.Bundle{}, issued: newKeyIssued,
		wantAnchors: 1, wantIssuer: k.freshIssuer, wantPhase: rotatorv1.PhasePrune, wantEvents: []string{"TrustBundlePublished"},
	}, {
		name:      "new key over an expired installed issuer: straight to prune, with a Warning",
		obj:       rotationObj(atStep(rotatorv1.StepPublishing, rotatorv1.KeyPolicyRotate, rotatorv1.PhaseOverlap)),
		installed: bundleFrom(t, expiredIssuer, k.old), issued: newKeyIssued,
		wantAnchors: 1, wantIssuer: k.freshIssuer, wantPhase: rotatorv1.PhasePrune, wantEvents: []string{"InstalledIssuerExpired", "TrustBundlePublished"},
	}, {
		name:      "an API error writing the ConfigMap records nothing in status",
		obj:       rotationObj(atStep(rotatorv1.StepPublishing, rotatorv1.KeyPolicyReuse, "")),
		installed: bundleFrom(t, k.oldIssuer, k.old),
		issued:    []client.Object{issued(t, "mesh-root", k.renewed, k.renewed), issued(t, "mesh-issuer", k.renewIssuer, k.renewed)},
		fail:      failing("apply", "ConfigMap/"), want: "error",
	}, {
		name:      "an API error writing the backup writes no bundle",
		obj:       rotationObj(atStep(rotatorv1.StepPublishing, rotatorv1.KeyPolicyReuse, "")),
		installed: bundleFrom(t, k.oldIssuer, k.old),
		issued:    []client.Object{issued(t, "mesh-root", k.renewed, k.renewed), issued(t, "mesh-issuer", k.renewIssuer, k.renewed)},
		fail:      failing("create", "Secret/mesh-backup"), want: "error",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			h := newHarness(t, append(trustBundle(tt.installed), append(tt.issued, tt.obj)...)...)
			p := h.pass("mesh")
			h.fail = tt.fail
			err := p.stepPublishing(t.Context())
			g.Expect(kindOf(err)).To(Equal(tt.want), "%v", err)
			s := h.get(&corev1.Secret{}, "dapr-trust-bundle").(*corev1.Secret)
			cm := h.get(&corev1.ConfigMap{}, "dapr-trust-bundle").(*corev1.ConfigMap)
			if tt.want != "" {
				g.Expect(p.obj.Status.PublishedBundleHash).To(BeEmpty())
				if tt.fail != nil && tt.name == "an API error writing the backup writes no bundle" {
					g.Expect(bundle.FromSecret(s.Data, keysOf(p.obj))).To(Equal(tt.installed))
				}
				return
			}
			published := bundle.FromSecret(s.Data, keysOf(p.obj))
			g.Expect(cm.Data["ca.crt"]).To(Equal(string(published.TrustAnchors)), "Sentry's Secret and ConfigMap hold the same anchors")
			g.Expect(p.obj.Status.PublishedBundleHash).To(Equal(bundle.Hash(published)))
			g.Expect(s.Annotations[BundleHashAnnotation]).To(Equal(bundle.Hash(published)))
			g.Expect(p.obj.Status.TrustAnchors).To(Equal(tt.wantAnchors))
			g.Expect(p.obj.Status.Issuer.SHA256Fingerprint).To(Equal(pki.Fingerprint(tt.wantIssuer.Cert)))
			if tt.wantIssuerRoot == nil {
				g.Expect(p.obj.Status.IssuerRoot).To(BeNil())
			} else {
				g.Expect(p.obj.Status.IssuerRoot.SHA256Fingerprint).To(Equal(pki.Fingerprint(tt.wantIssuerRoot.Cert)), "the old root, which the issuer chains to")
			}
			g.Expect(p.rot().Phase).To(Equal(tt.wantPhase))
			g.Expect(h.eventReasons()).To(Equal(tt.wantEvents))
			backup := h.get(&corev1.Secret{}, "mesh-backup").(*corev1.Secret)
			g.Expect(bundle.FromSecret(backup.Data, keysOf(p.obj))).To(Equal(tt.installed), "the bundle installed before the rotation is kept")
			g.Expect(bundle.ReplacedFrom(backup.Data, keysOf(p.obj)).Bundle).To(Equal(tt.installed), "so is what this publish replaced")
			g.Expect(backup.OwnerReferences).To(BeEmpty(), "owned by nothing while the rotation runs")

			if tt.wantPhase == "" {
				g.Expect(slices.DeleteFunc(slices.Clone(h.writes), func(w string) bool { return !strings.HasSuffix(w, " Secret/mesh-backup") })).
					To(HaveLen(1), "the installed and the replaced bundle are kept in one write")
			}
			// A replay publishes the same bundle and writes neither again.
			h.writes = nil
			g.Expect(p.stepPublishing(t.Context())).To(Succeed())
			g.Expect(h.writes).To(BeEmpty())
		})
	}
}

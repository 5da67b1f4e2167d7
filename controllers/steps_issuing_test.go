package controllers

import (
	"testing"
	"time"

	cmapiutil "github.com/cert-manager/cert-manager/pkg/api/util"
	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/expiry"
)

// TestStepIssuing covers the Issuing step of each strategy: what it records
// before it triggers cert-manager, when it waits, and when it is done.
func TestStepIssuing(t *testing.T) {
	k := newPKI(t)
	reuse := atStep(rotatorv1.StepIssuing, rotatorv1.KeyPolicyReuse, "")
	rotate := atStep(rotatorv1.StepIssuing, rotatorv1.KeyPolicyRotate, rotatorv1.PhaseOverlap)
	external := func(obj *rotatorv1.MTLSRootRotation) {
		atStep(rotatorv1.StepIssuing, rotatorv1.KeyPolicyReuse, "")(obj)
		obj.Spec.Issuer.IssuerRef = &rotatorv1.IssuerReference{Name: "org-ca", Kind: "ClusterIssuer"}
		obj.Status.Rotation.IssuerRef = obj.Spec.Issuer.IssuerRef
	}
	rootSecret := issued(t, "mesh-root", k.renewed, k.renewed)
	issuerSecret := issued(t, "mesh-issuer", k.renewIssuer, k.renewed)
	staleIssuer := issued(t, "mesh-issuer", k.oldIssuer, k.old)
	tests := []struct {
		name         string
		obj          *rotatorv1.MTLSRootRotation
		objs         []client.Object
		fail         func(string, string) error
		want         string
		wantRevision int32 // status.rotation.rootRevision after the step
		wantWrites   []string
		wantEvents   []string
	}{{
		name:         "same key: records the next root revision, then triggers its renewal",
		obj:          rotationObj(reuse),
		objs:         []client.Object{certificate("mesh-root", 1), certificate("mesh-issuer", 1), rootSecret, staleIssuer},
		want:         "wait",
		wantRevision: 2,
		wantWrites:   []string{"status-patch MTLSRootRotation/mesh", "status-update Certificate/mesh-root"},
	}, {
		name:         "same key: a recorded revision is not triggered twice while cert-manager issues it",
		obj:          rotationObj(reuse, withRotation(func(r *rotatorv1.RotationStatus) { r.RootRevision = 2 })),
		objs:         []client.Object{certificate("mesh-root", 1, issuing), certificate("mesh-issuer", 1), rootSecret, staleIssuer},
		want:         "wait",
		wantRevision: 2,
	}, {
		name: "same key: a failed issuance waits on cert-manager's back-off without asking again",
		obj:  rotationObj(reuse, withRotation(func(r *rotatorv1.RotationStatus) { r.RootRevision = 2 })),
		objs: []client.Object{certificate("mesh-root", 1, failedAt(t0.Add(-time.Second))), certificate("mesh-issuer", 1), rootSecret, staleIssuer},
		want: "wait", wantRevision: 2,
	}, {
		name: "same key: an issuer still signed by the old root waits for cert-manager to see the new one",
		obj:  rotationObj(reuse, withRotation(func(r *rotatorv1.RotationStatus) { r.RootRevision = 2 })),
		objs: []client.Object{certificate("mesh-root", 2, notBefore(t0.Add(-time.Second))), certificate("mesh-issuer", 1), rootSecret, staleIssuer},
		want: "wait", wantRevision: 2,
	}, {
		name: "same key: then re-issues the issuer from the new root",
		obj:  rotationObj(reuse, withRotation(func(r *rotatorv1.RotationStatus) { r.RootRevision = 2 })),
		objs: []client.Object{certificate("mesh-root", 2), certificate("mesh-issuer", 1), rootSecret, staleIssuer},
		want: "wait", wantRevision: 2,
		wantWrites: []string{"status-update Certificate/mesh-issuer"},
	}, {
		name: "same key: done once the issuer was signed by the current root",
		obj:  rotationObj(reuse, withRotation(func(r *rotatorv1.RotationStatus) { r.RootRevision = 2 })),
		objs: []client.Object{certificate("mesh-root", 2), certificate("mesh-issuer", 2), rootSecret, issuerSecret},
		want: "", wantRevision: 2, wantEvents: []string{"CertificatesIssued"},
	}, {
		name: "issuer renewal: keeps the root revision and renews the issuer once",
		obj: rotationObj(reuse, withRotation(func(r *rotatorv1.RotationStatus) {
			r.Cause, r.Renews = rotatorv1.CauseRenewal, string(expiry.Issuer)
		})),
		objs:         []client.Object{certificate("mesh-root", 2), certificate("mesh-issuer", 2), rootSecret, issuerSecret},
		want:         "wait",
		wantRevision: 2,
		wantWrites:   []string{"status-patch MTLSRootRotation/mesh", "status-patch MTLSRootRotation/mesh", "status-update Certificate/mesh-issuer"},
	}, {
		name: "a Certificate not created yet is waited for",
		obj:  rotationObj(reuse),
		want: "wait", wantRevision: 1,
	}, {
		name: "an API error on the renewal is retried",
		obj:  rotationObj(reuse, withRotation(func(r *rotatorv1.RotationStatus) { r.RootRevision = 2 })),
		objs: []client.Object{certificate("mesh-root", 1), certificate("mesh-issuer", 1), rootSecret, staleIssuer},
		fail: failing("status-update", "Certificate/mesh-root"),
		want: "error", wantRevision: 2,
	}, {
		name: "an API error recording the revision triggers nothing",
		obj:  rotationObj(reuse),
		objs: []client.Object{certificate("mesh-root", 1), certificate("mesh-issuer", 1), rootSecret, staleIssuer},
		fail: failing("status-patch", "MTLSRootRotation"),
		want: "error", wantRevision: 2,
	}, {
		name: "new key: waits for the new root key Secret",
		obj:  rotationObj(rotate),
		objs: []client.Object{certificate("mesh-root", 1), certificate("mesh-issuer", 1), rootSecret, staleIssuer},
		want: "wait", wantRevision: 2,
		wantWrites: []string{"status-patch MTLSRootRotation/mesh"},
	}, {
		name: "new key: waits for the CA Issuer to use the new root",
		obj:  rotationObj(rotate, withRotation(func(r *rotatorv1.RotationStatus) { r.RootRevision = 2 })),
		objs: []client.Object{certificate("mesh-root", 2), certificate("mesh-issuer", 1), issued(t, "mesh-root-g2", k.fresh, k.fresh), staleIssuer},
		want: "wait", wantRevision: 2,
	}, {
		name: "external: a CA that is not a self-signed root stalls for good",
		obj:  rotationObj(external, withRotation(func(r *rotatorv1.RotationStatus) { r.IssuerRevision = 2 })),
		objs: []client.Object{certificate("mesh-issuer", 2), issued(t, "mesh-issuer", k.freshIssuer, k.freshIssuer)},
		want: "stall!:" + rotatorv1.IssuerCANotSelfSignedReason,
	}, {
		name: "external: done once the issuer is issued by a root CA",
		obj:  rotationObj(external, withRotation(func(r *rotatorv1.RotationStatus) { r.IssuerRevision = 2 })),
		objs: []client.Object{certificate("mesh-issuer", 2), issued(t, "mesh-issuer", k.freshIssuer, k.fresh)},
		want: "", wantEvents: []string{"CertificatesIssued"},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			h := newHarness(t, append(trustBundle(bundleFrom(t, k.oldIssuer, k.old)), append(tt.objs, tt.obj)...)...)
			p := h.pass("mesh")
			h.fail = tt.fail
			err := p.strategy().issue(t.Context())
			g.Expect(kindOf(err)).To(Equal(tt.want), "%v", err)
			g.Expect(p.rot().RootRevision).To(Equal(tt.wantRevision))
			if tt.wantWrites != nil {
				g.Expect(h.writes).To(Equal(tt.wantWrites))
			}
			if tt.want == "wait" && tt.wantWrites == nil {
				g.Expect(h.writes).To(BeEmpty(), "waiting writes nothing")
			}
			g.Expect(h.eventReasons()).To(Equal(tt.wantEvents))
		})
	}
}

func issuing(c *cmapi.Certificate) {
	cmapiutil.SetCertificateCondition(c, c.Generation, cmapi.CertificateConditionIssuing, cmmeta.ConditionTrue, "Renew", "")
}

func notBefore(at time.Time) func(*cmapi.Certificate) {
	return func(c *cmapi.Certificate) { c.Status.NotBefore = &metav1.Time{Time: at} }
}

// TestRenewalTriggerIsWhatCmctlRenewDoes: the Certificate gets Issuing=True
// with reason ManuallyTriggered through the status subresource.
func TestRenewalTriggerIsWhatCmctlRenewDoes(t *testing.T) {
	g := NewWithT(t)
	h := newHarness(t, append(trustBundle(bundleFrom(t, newPKI(t).oldIssuer, newPKI(t).old)), certificate("mesh-root", 1), rotationObj())...)
	p := h.pass("mesh")
	crt := h.get(&cmapi.Certificate{}, "mesh-root").(*cmapi.Certificate)
	g.Expect(p.renew(t.Context(), crt)).To(Succeed())
	crt = h.get(&cmapi.Certificate{}, "mesh-root").(*cmapi.Certificate)
	c := cmapiutil.GetCertificateCondition(crt, cmapi.CertificateConditionIssuing)
	g.Expect(c).NotTo(BeNil())
	g.Expect(c.Status).To(Equal(cmmeta.ConditionTrue))
	g.Expect(c.Reason).To(Equal("ManuallyTriggered"))
}

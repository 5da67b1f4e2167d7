package controllers

import (
	"testing"
	"time"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/pki"
	"github.com/mtls-rotator/mtls-rotator/internal/pki/pkitest"
)

// lazily sets spec.applications.lazy with restartBefore.
func lazily(restartBefore time.Duration) objSetter {
	return withSpec(func(s *rotatorv1.MTLSRootRotationSpec) {
		s.Applications.Lazy = &rotatorv1.LazyRestartSpec{RestartBefore: &metav1.Duration{Duration: restartBefore}}
	})
}

// publishedRoot records root as the root the rotation published.
func publishedRoot(root *pkitest.CA) objSetter {
	return func(obj *rotatorv1.MTLSRootRotation) { obj.Status.Root = certificateStatus(root.Cert) }
}

// deferredUntil records the deadline of a lazy wait that already started.
func deferredUntil(at time.Time) objSetter {
	return withRotation(func(r *rotatorv1.RotationStatus) {
		r.DeferredUntil = &metav1.Time{Time: at}
		r.WaitingFor, r.WaitingSince = lazyWait, &metav1.Time{Time: t0.Add(-time.Minute)}
	})
}

// TestLazyRotationDefersRestarts: a lazy same-key rotation restarts no
// application before restartBefore ahead of the previous root certificate's
// expiry, unless a newer rotation is asked for; it completes with no restart
// when the owners redeployed everything, and then restarts only stragglers.
// It applies only to rotations that keep the root key.
func TestLazyRotationDefersRestarts(t *testing.T) {
	k := newPKI(t)
	renewed := bundleFrom(t, k.renewIssuer, k.renewed)
	week := 7 * 24 * time.Hour
	deadline := k.old.Cert.NotAfter.Add(-week)
	apps := []client.Object{daprApp("team", "a", ""), daprApp("team", "b", ""), daprApp("team", "c", "")}
	onRenewed := sidecarPod("team", "a-5d4f9-x", "a-5d4f9", ns, k.renewed.CertPEM())
	onPrevious := sidecarPod("team", "b-7c8d1-x", "b-7c8d1", ns, k.old.CertPEM())
	bRedeployed := sidecarPod("team", "b-7c8d1-y", "b-7c8d1", ns, k.renewed.CertPEM())
	sameKey := []objSetter{atStep(rotatorv1.StepRestartingApplications, rotatorv1.KeyPolicyReuse, ""), publishedRoot(k.renewed)}
	// opened: the phase's canary went first and showed the published anchors.
	opened := canaryVerified("Deployment team/z")
	tests := []struct {
		name         string
		obj          *rotatorv1.MTLSRootRotation
		installed    *pki.Bundle
		apps         []client.Object
		objs         []client.Object
		want         string
		wantWrites   []string
		wantProgress string
		wantEvents   []string
		wantUntil    time.Time
	}{{
		name: "the canary goes first, before the wait starts",
		obj:  rotationObj(append(sameKey, lazily(week))...),
		objs: []client.Object{onRenewed, onPrevious, backupOf(t, bundleFrom(t, k.oldIssuer, k.old))},
		want: "wait", wantProgress: "2/3", wantWrites: []string{"patch Deployment/b"},
	}, {
		name: "the wait starts once it showed the published anchors: deadline recorded, nothing more restarted, announced once",
		obj:  rotationObj(append(sameKey, lazily(week), opened)...),
		objs: []client.Object{onRenewed, onPrevious, backupOf(t, bundleFrom(t, k.oldIssuer, k.old))},
		want: "deferred", wantProgress: "2/3", wantEvents: []string{rotatorv1.RestartsDeferredReason}, wantUntil: deadline,
	}, {
		name: "a later pass of the wait announces nothing",
		obj:  rotationObj(append(sameKey, lazily(week), opened, deferredUntil(deadline))...),
		objs: []client.Object{onRenewed, onPrevious, backupOf(t, bundleFrom(t, k.oldIssuer, k.old))},
		want: "deferred", wantProgress: "2/3", wantUntil: deadline,
	}, {
		name: "owners redeployed every application: complete, no restart",
		obj:  rotationObj(append(sameKey, lazily(week), opened, deferredUntil(deadline))...),
		objs: []client.Object{onRenewed, bRedeployed, backupOf(t, bundleFrom(t, k.oldIssuer, k.old))},
		want: "", wantProgress: "3/3", wantEvents: []string{"ApplicationsRestarted"}, wantUntil: deadline,
	}, {
		name: "the deadline came: only the stragglers are restarted",
		obj:  rotationObj(append(sameKey, lazily(week), opened, deferredUntil(t0.Add(-time.Second)))...),
		objs: []client.Object{onRenewed, onPrevious, backupOf(t, bundleFrom(t, k.oldIssuer, k.old))},
		want: "wait", wantProgress: "2/3", wantWrites: []string{"patch Deployment/b"}, wantUntil: t0.Add(-time.Second),
	}, {
		name: "less left of the previous certificate than restartBefore: restarted at once",
		obj:  rotationObj(append(sameKey, lazily(400*24*time.Hour), opened)...),
		objs: []client.Object{onRenewed, onPrevious, backupOf(t, bundleFrom(t, k.oldIssuer, k.old))},
		want: "wait", wantProgress: "2/3", wantWrites: []string{"patch Deployment/b"}, wantUntil: k.old.Cert.NotAfter.Add(-400 * 24 * time.Hour),
	}, {
		name: "a newer trigger ends the wait: the stragglers are restarted now, and it says so",
		obj: rotationObj(append(sameKey, lazily(week), opened, deferredUntil(deadline),
			withSpec(func(s *rotatorv1.MTLSRootRotationSpec) { s.Trigger = "b" }))...),
		objs: []client.Object{onRenewed, onPrevious, backupOf(t, bundleFrom(t, k.oldIssuer, k.old))},
		want: "wait", wantProgress: "2/3", wantWrites: []string{"patch Deployment/b"},
		wantEvents: []string{rotatorv1.RestartsDeferredReason}, wantUntil: deadline,
	}, {
		name: "no certificate of the root key was installed before (a first issuance): restarted at once",
		obj:  rotationObj(append(sameKey, lazily(week), opened)...),
		objs: []client.Object{onRenewed, onPrevious, backupOf(t, bundleFrom(t, k.freshIssuer, k.fresh))},
		want: "wait", wantProgress: "2/3", wantWrites: []string{"patch Deployment/b"},
	}, {
		name: "a stale injector stalls before the wait starts, which is not recorded",
		obj: rotationObj(append(sameKey, lazily(week), withRotation(func(r *rotatorv1.RotationStatus) {
			r.Canary = &rotatorv1.CanaryStatus{RestartID: "r-1", Workload: "Deployment team/b"}
		}))...),
		apps: []client.Object{daprApp("team", "a", ""), restartedAgo(daprApp("team", "b", "r-1"), time.Minute), daprApp("team", "c", "")},
		objs: []client.Object{onRenewed, started(sidecarPod("team", "b-1a2b3-x", "b-1a2b3", ns, k.old.CertPEM()), t0), backupOf(t, bundleFrom(t, k.oldIssuer, k.old))},
		want: "stall:" + rotatorv1.InjectorStaleReason, wantProgress: "3/3",
	}, {
		name: "a rotation of a new root key is never lazy",
		obj: rotationObj(atStep(rotatorv1.StepRestartingApplications, rotatorv1.KeyPolicyRotate, rotatorv1.PhasePrune),
			afterPhases(t0.Add(-time.Hour), rotatorv1.PhaseOverlap, rotatorv1.PhaseSwitch), publishedRoot(k.fresh), lazily(week), opened),
		installed: ptr.To(bundleFrom(t, k.freshIssuer, k.fresh)),
		objs:      []client.Object{sidecarPod("team", "a-5d4f9-x", "a-5d4f9", ns, k.fresh.CertPEM()), backupOf(t, bundleFrom(t, k.oldIssuer, k.old))},
		want:      "wait", wantProgress: "1/3", wantWrites: []string{"patch Deployment/b", "patch Deployment/c"},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			installed := renewed
			if tt.installed != nil {
				installed = *tt.installed
			}
			apps := apps
			if tt.apps != nil {
				apps = tt.apps
			}
			h := newHarness(t, append(append(append(trustBundle(installed), apps...), tt.objs...), tt.obj)...)
			p := h.pass("mesh")
			err := p.stepApplications(t.Context())
			g.Expect(kindOf(err)).To(Equal(tt.want), "%v", err)
			g.Expect(h.writes).To(Equal(tt.wantWrites))
			g.Expect(p.obj.Status.Applications.Progress).To(Equal(tt.wantProgress))
			g.Expect(h.eventReasons()).To(Equal(tt.wantEvents))
			if tt.wantUntil.IsZero() {
				g.Expect(p.obj.Status.Rotation.DeferredUntil == nil || !p.obj.Status.Rotation.DeferredUntil.After(t0)).To(BeTrue(),
					"no wait ahead: %v", p.obj.Status.Rotation.DeferredUntil)
				return
			}
			g.Expect(p.obj.Status.Rotation.DeferredUntil.Time).To(BeTemporally("~", tt.wantUntil, time.Second))
		})
	}
}

// TestDryRunPlansLazyRestarts: the plan of a lazy rotation says from when it
// would restart the applications their owners have not redeployed: from
// restartBefore ahead of the installed root certificate's expiry, or now
// when less than that is left.
func TestDryRunPlansLazyRestarts(t *testing.T) {
	k := newPKI(t)
	week := 7 * 24 * time.Hour
	for _, tt := range []struct {
		name          string
		restartBefore time.Duration
		want          time.Time
	}{
		{"a week ahead of the expiry", week, k.old.Cert.NotAfter.Add(-week)},
		{"now, when less is left", 400 * 24 * time.Hour, t0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			obj := rotationObj(publishedRoot(k.old), lazily(tt.restartBefore), withSpec(func(s *rotatorv1.MTLSRootRotationSpec) { s.DryRun = true }))
			h := newHarness(t, append(trustBundle(bundleFrom(t, k.oldIssuer, k.old)), deployment("dapr-sentry", ""), deployment("dapr-sidecar-injector", ""), daprApp("team", "a", ""), obj)...)
			got, _, err := h.reconcileOnce()
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got.Status.Plan.Applications).To(Equal(int32(1)))
			g.Expect(got.Status.Plan.RestartsDeferredUntil).NotTo(BeNil())
			g.Expect(got.Status.Plan.RestartsDeferredUntil.Time).To(BeTemporally("~", tt.want, time.Second))
			g.Expect(h.writes).To(HaveEach("status-patch MTLSRootRotation/mesh"), "a dry run writes only status")
		})
	}
}

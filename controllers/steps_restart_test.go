package controllers

import (
	"context"
	"reflect"
	"slices"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/bundle"
	"github.com/mtls-rotator/mtls-rotator/internal/expiry"
	"github.com/mtls-rotator/mtls-rotator/internal/pki"
	"github.com/mtls-rotator/mtls-rotator/internal/pki/pkitest"
	"github.com/mtls-rotator/mtls-rotator/internal/restart"
)

// backupOf is the backup Secret of rotation r-1 whose publish replaced before.
func backupOf(t *testing.T, before pki.Bundle) *corev1.Secret {
	keys := keysOf(rotationObj())
	data, _ := bundle.SecretData(nil, before, keys)
	data = bundle.ReplacedData(data, bundle.Replaced{Bundle: before, ConfigMapCA: before.TrustAnchors, HasConfigMapCA: true}, keys)
	return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "mesh-backup", Namespace: ns,
		Annotations: map[string]string{RotationAnnotation: "r-1", ReplacedByAnnotation: "r-1"}}, Data: data}
}

// waitingSince says the step has waited on what since at.
func waitingSince(what string, at time.Time) objSetter {
	return withRotation(func(r *rotatorv1.RotationStatus) { r.WaitingFor, r.WaitingSince = what, &metav1.Time{Time: at} })
}

// TestStepControlPlane: one workload at a time, in order, each awaited; a
// rollout that does not finish in time rolls the rotation back when there is
// a bundle to go back to, and stalls when there is not.
func TestStepControlPlane(t *testing.T) {
	k := newPKI(t)
	before, after := bundleFrom(t, k.oldIssuer, k.old), bundleFrom(t, k.renewIssuer, k.renewed)
	cp := atStep(rotatorv1.StepRestartingControlPlane, rotatorv1.KeyPolicyReuse, "")
	late := waitingSince("Deployment dapr-system/dapr-sentry", t0.Add(-11*time.Minute))
	tests := []struct {
		name       string
		obj        *rotatorv1.MTLSRootRotation
		objs       []client.Object
		want       string
		wantStep   rotatorv1.RotationStep
		wantWrites []string
		wantEvents []string
		restored   bool
	}{{
		name: "restarts the first workload and waits for it",
		obj:  rotationObj(cp),
		objs: []client.Object{deployment("dapr-sentry", ""), deployment("dapr-sidecar-injector", "")},
		want: "wait", wantStep: rotatorv1.StepRestartingControlPlane,
		wantWrites: []string{"patch Deployment/dapr-sentry"},
	}, {
		name: "waits for a restarted workload to roll out, restarting nothing else",
		obj:  rotationObj(cp),
		objs: []client.Object{deployment("dapr-sentry", "r-1", stuck), deployment("dapr-sidecar-injector", "")},
		want: "wait", wantStep: rotatorv1.StepRestartingControlPlane,
	}, {
		name: "restarts the next once the previous rolled out",
		obj:  rotationObj(cp),
		objs: []client.Object{deployment("dapr-sentry", "r-1"), deployment("dapr-sidecar-injector", "")},
		want: "wait", wantStep: rotatorv1.StepRestartingControlPlane,
		wantWrites: []string{"patch Deployment/dapr-sidecar-injector"},
	}, {
		name: "done when every workload rolled out",
		obj:  rotationObj(cp),
		objs: []client.Object{deployment("dapr-sentry", "r-1"), deployment("dapr-sidecar-injector", "r-1")},
		want: "", wantStep: rotatorv1.StepRestartingControlPlane, wantEvents: []string{"ControlPlaneRestarted"},
	}, {
		name: "a required workload that does not exist stalls before any restart",
		obj:  rotationObj(cp),
		objs: []client.Object{deployment("dapr-sidecar-injector", "")},
		want: "stall:" + rotatorv1.WorkloadNotFoundReason, wantStep: rotatorv1.StepRestartingControlPlane,
	}, {
		name: "a rollout past its timeout rolls back: the replaced bundle is restored and the workload restarted on it",
		obj:  rotationObj(cp, late),
		objs: []client.Object{deployment("dapr-sentry", "r-1", stuck), deployment("dapr-sidecar-injector", ""), backupOf(t, before)},
		want: "stall:" + rotatorv1.RolledBackReason, wantStep: rotatorv1.StepRolledBack,
		wantWrites: []string{"status-patch MTLSRootRotation/mesh", "apply Secret/dapr-trust-bundle", "apply ConfigMap/dapr-trust-bundle", "patch Deployment/dapr-sentry"},
		restored:   true,
	}, {
		name: "a pass that read the status from before a rollback done in the world finishes it quietly",
		obj:  rotationObj(cp),
		objs: []client.Object{deployment("dapr-sentry", "r-1-rollback"), deployment("dapr-sidecar-injector", ""), backupOf(t, before)},
		want: "stall:" + rotatorv1.RolledBackReason, wantStep: rotatorv1.StepRolledBack,
		// The workload is not restarted a second time.
		wantWrites: []string{"status-patch MTLSRootRotation/mesh", "apply Secret/dapr-trust-bundle", "apply ConfigMap/dapr-trust-bundle"},
		restored:   true,
	}, {
		name: "a rollout past its timeout over a first issuance has nothing to roll back to: it stalls",
		obj:  rotationObj(cp, late),
		objs: []client.Object{deployment("dapr-sentry", "r-1", stuck), deployment("dapr-sidecar-injector", ""), backupOf(t, pki.Bundle{})},
		want: "stall:" + rotatorv1.RolloutTimeoutReason, wantStep: rotatorv1.StepRestartingControlPlane,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			h := newHarness(t, append(trustBundle(after), append(tt.objs, tt.obj)...)...)
			p := h.pass("mesh")
			err := p.stepControlPlane(t.Context())
			g.Expect(kindOf(err)).To(Equal(tt.want), "%v", err)
			g.Expect(p.rot().Step).To(Equal(tt.wantStep))
			if tt.wantWrites != nil || tt.want == "wait" {
				g.Expect(h.writes).To(Equal(tt.wantWrites))
			}
			g.Expect(h.eventReasons()).To(Equal(tt.wantEvents), "a stall's Warning is raised by the finalize, not the step")
			s := h.get(&corev1.Secret{}, "dapr-trust-bundle").(*corev1.Secret)
			cm := h.get(&corev1.ConfigMap{}, "dapr-trust-bundle").(*corev1.ConfigMap)
			if !tt.restored {
				g.Expect(bundle.FromSecret(s.Data, keysOf(p.obj))).To(Equal(after))
				return
			}
			g.Expect(bundle.FromSecret(s.Data, keysOf(p.obj))).To(Equal(before), "restored byte for byte")
			g.Expect(cm.Data["ca.crt"]).To(Equal(string(before.TrustAnchors)))
			g.Expect(p.rot().RollingBack).To(Equal("Deployment dapr-system/dapr-sentry"), "recorded before the restore")
			sentry := h.get(&appsv1.Deployment{}, "dapr-sentry").(*appsv1.Deployment)
			g.Expect(restart.RestartedFor(sentry.Spec.Template.Annotations, "r-1-rollback")).To(BeTrue())
			var s2 *stallError
			g.Expect(err).To(BeAssignableToTypeOf(s2))
			g.Expect(err.(*stallError).Quiet).To(Equal(tt.name == "a pass that read the status from before a rollback done in the world finishes it quietly"))
		})
	}
}

// TestRollingBackResumesAfterACrash: a rotation recorded at RollingBack
// (the operator stopped after the record, before the restore) finishes it.
func TestRollingBackResumesAfterACrash(t *testing.T) {
	g := NewWithT(t)
	k := newPKI(t)
	before, after := bundleFrom(t, k.oldIssuer, k.old), bundleFrom(t, k.renewIssuer, k.renewed)
	obj := rotationObj(atStep(rotatorv1.StepRollingBack, rotatorv1.KeyPolicyReuse, ""),
		withRotation(func(r *rotatorv1.RotationStatus) { r.RollingBack = "Deployment dapr-system/dapr-sentry" }))
	h := newHarness(t, append(trustBundle(after), deployment("dapr-sentry", "r-1", stuck), backupOf(t, before), obj)...)
	p := h.pass("mesh")
	g.Expect(kindOf(p.reconcileSteps(t.Context()))).To(Equal("stall:" + rotatorv1.RolledBackReason))
	g.Expect(p.rot().Step).To(Equal(rotatorv1.StepRolledBack))
	s := h.get(&corev1.Secret{}, "dapr-trust-bundle").(*corev1.Secret)
	g.Expect(bundle.FromSecret(s.Data, keysOf(p.obj))).To(Equal(before))
}

// TestARolledBackWorkloadIsRestartedOnce: the pass that rolled back lost
// its last status patch (RolledBack never recorded; the operator crashed or
// the API refused it), so the next pass replays the rollback from the
// RollingBack record: it restarts the stuck workload no second time.
func TestARolledBackWorkloadIsRestartedOnce(t *testing.T) {
	g := NewWithT(t)
	k := newPKI(t)
	before, after := bundleFrom(t, k.oldIssuer, k.old), bundleFrom(t, k.renewIssuer, k.renewed)
	obj := rotationObj(atStep(rotatorv1.StepRestartingControlPlane, rotatorv1.KeyPolicyReuse, ""),
		waitingSince("Deployment dapr-system/dapr-sentry", t0.Add(-11*time.Minute)))
	h := newHarness(t, append(trustBundle(after), deployment("dapr-sentry", "r-1", stuck), deployment("dapr-sidecar-injector", ""), backupOf(t, before), obj)...)
	g.Expect(kindOf(h.pass("mesh").stepControlPlane(t.Context()))).To(Equal("stall:" + rotatorv1.RolledBackReason))
	g.Expect(h.writes).To(ContainElement("patch Deployment/dapr-sentry"))
	restarted := h.get(&appsv1.Deployment{}, "dapr-sentry").(*appsv1.Deployment).Spec.Template.Annotations

	replay := h.pass("mesh") // the status as stored: the rollback recorded, not its end
	g.Expect(replay.rot().Step).To(Equal(rotatorv1.StepRollingBack))
	h.writes = nil
	g.Expect(kindOf(replay.reconcileSteps(t.Context()))).To(Equal("stall:" + rotatorv1.RolledBackReason))
	g.Expect(h.writes).NotTo(ContainElement("patch Deployment/dapr-sentry"), "the stuck workload is not rolled out twice")
	g.Expect(h.get(&appsv1.Deployment{}, "dapr-sentry").(*appsv1.Deployment).Spec.Template.Annotations).To(Equal(restarted))
	g.Expect(replay.rot().Step).To(Equal(rotatorv1.StepRolledBack))
}

// TestRollbackOfAnOverlapReturnsToThePreviousKey: the new root reached no
// restored anchor, so later rotations go on with the previous key.
func TestRollbackOfAnOverlapReturnsToThePreviousKey(t *testing.T) {
	g := NewWithT(t)
	k := newPKI(t)
	before, overlap := bundleFrom(t, k.oldIssuer, k.old), bundleFrom(t, k.oldIssuer, k.old, k.fresh)
	backup := backupOf(t, before)
	backup.Annotations[ReplacedByAnnotation] = "r-1-overlap"
	obj := rotationObj(atStep(rotatorv1.StepRestartingControlPlane, rotatorv1.KeyPolicyRotate, rotatorv1.PhaseOverlap),
		waitingSince("Deployment dapr-system/dapr-sentry", t0.Add(-11*time.Minute)))
	h := newHarness(t, append(trustBundle(overlap), deployment("dapr-sentry", "r-1-overlap", stuck), backup, obj)...)
	p := h.pass("mesh")
	g.Expect(kindOf(p.stepControlPlane(t.Context()))).To(Equal("stall:" + rotatorv1.RolledBackReason))
	g.Expect(p.obj.Status.RootKeyGeneration).To(Equal(int32(1)))
	g.Expect(p.obj.Status.TrustAnchors).To(Equal(int32(1)))
}

// TestStepApplications: Dapr applications in a sliding window of at most
// maxConcurrent, each awaited, once the phase's canary opened it; an
// issuer-only renewal that left the anchors as they were restarts none.
func TestStepApplications(t *testing.T) {
	k := newPKI(t)
	installed := bundleFrom(t, k.renewIssuer, k.renewed)
	apps := func(restarted ...string) []client.Object {
		out := []client.Object{}
		for _, name := range []string{"a", "b", "c"} {
			id := ""
			if slices.Contains(restarted, name) {
				id = "r-1"
			}
			out = append(out, daprApp("team", name, id))
		}
		plain := deployment("not-dapr", "")
		plain.Namespace = "team"
		return append(out, plain)
	}
	waves := func(obj *rotatorv1.MTLSRootRotation) { obj.Spec.Applications.MaxConcurrent = 2 }
	opened := canaryVerified("Deployment team/a")
	tests := []struct {
		name         string
		obj          *rotatorv1.MTLSRootRotation
		objs         []client.Object
		want         string
		wantWrites   []string
		wantProgress string
		wantEvents   []string
	}{{
		name: "restarts the next applications, no more than maxConcurrent in flight",
		obj:  rotationObj(atStep(rotatorv1.StepRestartingApplications, rotatorv1.KeyPolicyReuse, ""), waves, opened),
		objs: apps("a"), want: "wait", wantProgress: "1/3",
		wantWrites: []string{"patch Deployment/b", "patch Deployment/c"},
	}, {
		name: "done when every Dapr application rolled out; others are never touched",
		obj:  rotationObj(atStep(rotatorv1.StepRestartingApplications, rotatorv1.KeyPolicyReuse, ""), waves, opened),
		objs: apps("a", "b", "c"), want: "", wantProgress: "3/3", wantEvents: []string{"ApplicationsRestarted"},
	}, {
		name: "restart: false restarts none",
		obj: rotationObj(atStep(rotatorv1.StepRestartingApplications, rotatorv1.KeyPolicyReuse, ""),
			withSpec(func(s *rotatorv1.MTLSRootRotationSpec) { s.Applications.Restart = ptr.To(false) })),
		objs: apps(), want: "", wantEvents: []string{"ApplicationsRestarted"},
	}, {
		name: "an issuer renewal that left the anchors as they were restarts none",
		obj: rotationObj(atStep(rotatorv1.StepRestartingApplications, rotatorv1.KeyPolicyReuse, ""),
			withRotation(func(r *rotatorv1.RotationStatus) { r.Cause, r.Renews = rotatorv1.CauseRenewal, string(expiry.Issuer) })),
		objs: append(apps(), backupOf(t, bundleFrom(t, k.oldIssuer, k.renewed))), want: "", wantEvents: []string{"ApplicationsRestarted"},
	}, {
		name: "an issuer renewal over anchors cert-manager renewed restarts the applications, the canary first",
		obj: rotationObj(atStep(rotatorv1.StepRestartingApplications, rotatorv1.KeyPolicyReuse, ""), waves,
			withRotation(func(r *rotatorv1.RotationStatus) { r.Cause, r.Renews = rotatorv1.CauseRenewal, string(expiry.Issuer) })),
		objs: append(apps(), backupOf(t, bundleFrom(t, k.oldIssuer, k.old))), want: "wait", wantProgress: "0/3",
		wantWrites: []string{"patch Deployment/a"},
	}, {
		name: "an application whose pods another control plane injected is that control plane's to restart",
		obj:  rotationObj(atStep(rotatorv1.StepRestartingApplications, rotatorv1.KeyPolicyReuse, ""), waves, opened),
		objs: append(apps("a"), sidecarPod("team", "b-5d4f9-x", "b-5d4f9", "tenant-system", nil),
			sidecarPod("team", "c-5d4f9-x", "c-5d4f9", "tenant-system", nil), sidecarPod("team", "c-5d4f9-y", "c-5d4f9", ns, nil)),
		want: "wait", wantProgress: "1/2",
		wantWrites: []string{"patch Deployment/c"}, // c runs a pod of this control plane too
	}, {
		name: "a slot freed while another application still rolls out is used at once",
		obj:  rotationObj(atStep(rotatorv1.StepRestartingApplications, rotatorv1.KeyPolicyReuse, ""), waves, opened),
		objs: []client.Object{daprApp("team", "a", "r-1"), restartedAgo(stuckApp("team", "b", "r-1"), time.Minute), daprApp("team", "c", "")},
		want: "wait", wantProgress: "1/3", wantWrites: []string{"patch Deployment/c"},
	}, {
		name: "a restart overdue stops the window, though it has room",
		obj:  rotationObj(atStep(rotatorv1.StepRestartingApplications, rotatorv1.KeyPolicyReuse, ""), waves, opened),
		objs: []client.Object{daprApp("team", "a", "r-1"), restartedAgo(stuckApp("team", "b", "r-1"), 11*time.Minute), daprApp("team", "c", "")},
		want: "stall:" + rotatorv1.RolloutTimeoutReason, wantProgress: "1/3",
	}, {
		name: "a restart that does not say when it was asked for is timed from the wait's start",
		obj: rotationObj(atStep(rotatorv1.StepRestartingApplications, rotatorv1.KeyPolicyReuse, ""), waves, opened,
			waitingSince("applications wave", t0.Add(-time.Hour))),
		objs: []client.Object{daprApp("team", "a", "r-1"), stuckApp("team", "b", "r-1"), daprApp("team", "c", "")},
		want: "stall:" + rotatorv1.RolloutTimeoutReason, wantProgress: "1/3",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			h := newHarness(t, append(trustBundle(installed), append(tt.objs, tt.obj)...)...)
			p := h.pass("mesh")
			err := p.stepApplications(t.Context())
			g.Expect(kindOf(err)).To(Equal(tt.want), "%v", err)
			g.Expect(h.writes).To(Equal(tt.wantWrites))
			if tt.wantProgress != "" {
				g.Expect(p.obj.Status.Applications.Progress).To(Equal(tt.wantProgress))
			}
			g.Expect(h.eventReasons()).To(Equal(tt.wantEvents))
		})
	}
}

// restartedAgo says the application's restart was asked for d before t0.
func restartedAgo(d *appsv1.Deployment, ago time.Duration) *appsv1.Deployment {
	d.Spec.Template.Annotations[restart.AtAnnotation] = t0.Add(-ago).UTC().Format(time.RFC3339)
	return d
}

func stuckApp(namespace, name, restartID string) *appsv1.Deployment {
	d := daprApp(namespace, name, restartID)
	stuck(d)
	return d
}

// TestRestartsGoOnlyOntoThePublishedBundle: before a control-plane workload
// or the first application restarts, the Secret and the ConfigMap are read
// again: a Secret changed since the publish stalls the rotation with nothing
// restarted; a ConfigMap that differs from it is written again first.
func TestRestartsGoOnlyOntoThePublishedBundle(t *testing.T) {
	k := newPKI(t)
	before, after := bundleFrom(t, k.oldIssuer, k.old), bundleFrom(t, k.renewIssuer, k.renewed)
	published := func(obj *rotatorv1.MTLSRootRotation) { obj.Status.PublishedBundleHash = bundle.Hash(after) }
	// installed is the Secret holding secret and the ConfigMap holding anchors.
	installed := func(secret pki.Bundle, anchors []byte) []client.Object {
		objs := trustBundle(secret)
		objs[1].(*corev1.ConfigMap).Data["ca.crt"] = string(anchors)
		return objs
	}
	tests := []struct {
		name       string
		step       rotatorv1.RotationStep
		installed  []client.Object
		want       string
		wantWrites []string
		wantEvents []string
	}{
		{name: "a Secret changed since the publish: Sentry is not restarted", step: rotatorv1.StepRestartingControlPlane,
			installed: installed(before, before.TrustAnchors), want: "stall:" + rotatorv1.TrustBundleDriftReason},
		{name: "a ConfigMap left behind is written again before Sentry restarts", step: rotatorv1.StepRestartingControlPlane,
			installed: installed(after, before.TrustAnchors), want: "wait",
			wantWrites: []string{"apply ConfigMap/dapr-trust-bundle", "patch Deployment/dapr-sentry"}, wantEvents: []string{"ConfigMapRepaired"}},
		{name: "a Secret changed since the publish: no application is restarted", step: rotatorv1.StepRestartingApplications,
			installed: installed(before, before.TrustAnchors), want: "stall:" + rotatorv1.TrustBundleDriftReason},
		{name: "the published bundle as it was: the restarts go on", step: rotatorv1.StepRestartingControlPlane,
			installed: installed(after, after.TrustAnchors), want: "wait", wantWrites: []string{"patch Deployment/dapr-sentry"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			obj := rotationObj(atStep(tt.step, rotatorv1.KeyPolicyReuse, ""), published)
			h := newHarness(t, append(tt.installed, deployment("dapr-sentry", ""), deployment("dapr-sidecar-injector", ""), daprApp("team", "a", ""), obj)...)
			p := h.pass("mesh")
			var err error
			if tt.step == rotatorv1.StepRestartingControlPlane {
				err = p.stepControlPlane(t.Context())
			} else {
				err = p.stepApplications(t.Context())
			}
			g.Expect(kindOf(err)).To(Equal(tt.want), "%v", err)
			g.Expect(h.writes).To(Equal(tt.wantWrites))
			g.Expect(h.eventReasons()).To(Equal(tt.wantEvents))
			if tt.wantEvents != nil {
				cm := h.get(&corev1.ConfigMap{}, "dapr-trust-bundle").(*corev1.ConfigMap)
				g.Expect(cm.Data["ca.crt"]).To(Equal(string(after.TrustAnchors)))
			}
		})
	}
}

// TestRollbackRefusesWhatWouldNotHelp: a bundle that cannot be restored is
// not; the rotation stalls at the control plane, saying why, and keeps the
// new bundle.
func TestRollbackRefusesWhatWouldNotHelp(t *testing.T) {
	k := newPKI(t)
	after := bundleFrom(t, k.renewIssuer, k.renewed)
	expired := pkitest.NewIssuer(t, k.old, pkitest.Options{NotBefore: t0.Add(-3 * time.Hour), Validity: time.Hour})
	expiredRoot := pkitest.NewRoot(t, pkitest.Options{NotBefore: t0.Add(-3 * time.Hour), Validity: time.Hour})
	outliving := pkitest.NewIssuer(t, expiredRoot, pkitest.Options{NotBefore: t0.Add(-150 * time.Minute)})
	// The rotation started an hour ago (atStep): another attempt needs as long.
	soon := pkitest.NewIssuer(t, k.old, pkitest.Options{NotBefore: t0.Add(-2 * time.Hour), Validity: 3*time.Hour + 59*time.Minute})
	unrecorded := backupOf(t, bundleFrom(t, k.oldIssuer, k.old))
	unrecorded.Annotations[ReplacedByAnnotation] = "r-0"
	tests := []struct {
		name    string
		backup  *corev1.Secret
		message string
	}{
		{"no record of the publish", unrecorded, "there is no record of the bundle rotation r-1 replaced"},
		{"an empty bundle before a first issuance", backupOf(t, pki.Bundle{}), "there is nothing to roll back to"},
		{"a replaced issuer that has expired", backupOf(t, bundleFrom(t, expired, k.old)), "holds an issuer that expired at"},
		{"a replaced root that has expired before its issuer", backupOf(t, bundleFrom(t, outliving, expiredRoot)), "holds a root that expired at " + expiredRoot.Cert.NotAfter.UTC().Format(time.RFC3339)},
		{"a replaced issuer that would expire before another attempt could end", backupOf(t, bundleFrom(t, soon, k.old)),
			"sooner than another attempt as long as this one (started at " + t0.Add(-time.Hour).UTC().Format(time.RFC3339) + ") could end"},
		{"a replaced bundle Sentry would refuse", backupOf(t, pki.Bundle{TrustAnchors: []byte("x"), IssuerChain: k.oldIssuer.CertPEM(), IssuerKey: k.oldIssuer.KeyPEM(t)}),
			"would not pass Dapr Sentry's checks"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			obj := rotationObj(atStep(rotatorv1.StepRestartingControlPlane, rotatorv1.KeyPolicyReuse, ""),
				waitingSince("Deployment dapr-system/dapr-sentry", t0.Add(-11*time.Minute)))
			h := newHarness(t, append(trustBundle(after), deployment("dapr-sentry", "r-1", stuck), deployment("dapr-sidecar-injector", ""), tt.backup, obj)...)
			p := h.pass("mesh")
			err := p.stepControlPlane(t.Context())
			g.Expect(kindOf(err)).To(Equal("stall:" + rotatorv1.RolloutTimeoutReason))
			g.Expect(err.Error()).To(ContainSubstring(tt.message))
			g.Expect(err.Error()).To(ContainSubstring("no application was restarted"))
			g.Expect(p.rot().Step).To(Equal(rotatorv1.StepRestartingControlPlane))
			g.Expect(h.writes).To(BeEmpty(), "nothing restored, nothing restarted")
		})
	}
}

// staleTarget is a cache that has not seen the last publish: it holds the
// Secret and ConfigMap Sentry reads as they were before it.
type staleTarget struct {
	client.Client
	before []client.Object
}

func (c staleTarget) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	for _, o := range c.before {
		if key.Name == o.GetName() && reflect.TypeOf(o) == reflect.TypeOf(obj) {
			reflect.ValueOf(obj).Elem().Set(reflect.ValueOf(o.DeepCopyObject()).Elem())
			return nil
		}
	}
	return c.Client.Get(ctx, key, obj, opts...)
}

// TestApplicationsAreJudgedOnTheBundleReadLive: which applications still
// need a restart is judged against the anchors published, read live: a
// cache that has not seen the publish would take pods holding the anchors
// before it for converged, and skip them.
func TestApplicationsAreJudgedOnTheBundleReadLive(t *testing.T) {
	g := NewWithT(t)
	k := newPKI(t)
	before, published := bundleFrom(t, k.oldIssuer, k.old), bundleFrom(t, k.renewIssuer, k.renewed)
	obj := rotationObj(atStep(rotatorv1.StepRestartingApplications, rotatorv1.KeyPolicyReuse, ""), canaryVerified("Deployment team/z"))
	h := newHarness(t, append(trustBundle(published), daprApp("team", "a", ""), sidecarPod("team", "a-5d4f9-x", "a-5d4f9", ns, before.TrustAnchors), obj)...)
	h.r.Client, h.r.APIReader = staleTarget{Client: h.client, before: trustBundle(before)}, h.client
	p := h.pass("mesh")
	g.Expect(kindOf(p.stepApplications(t.Context()))).To(Equal("wait"))
	g.Expect(h.writes).To(Equal([]string{"patch Deployment/a"}), "its pod holds the anchors from before the publish")
}

// onDeleteStatefulSet is a Dapr application StatefulSet, rolled out, whose
// updateStrategy is OnDelete.
func onDeleteStatefulSet(namespace, name string) *appsv1.StatefulSet {
	s := &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, Generation: 1},
		Spec: appsv1.StatefulSetSpec{Replicas: ptr.To[int32](1), UpdateStrategy: appsv1.StatefulSetUpdateStrategy{Type: appsv1.OnDeleteStatefulSetStrategyType}},
		Status: appsv1.StatefulSetStatus{ObservedGeneration: 1, Replicas: 1, ReadyReplicas: 1, AvailableReplicas: 1, UpdatedReplicas: 1,
			CurrentRevision: "r1", UpdateRevision: "r1"}}
	s.Spec.Template.Annotations = map[string]string{rotatorv1.DaprEnabledAnnotation: rotatorv1.DaprEnabledAnnotationValue}
	return s
}

// TestUpdateStrategiesThatNeverRollOutStall: a workload whose update
// strategy never replaces its pods on a restart (OnDelete, a partition)
// stalls the rotation with UpdateStrategyUnsupported before anything is
// restarted, naming the strategy, rather than timing out after a restart;
// one whose pods hold the published anchors already needs no restart.
func TestUpdateStrategiesThatNeverRollOutStall(t *testing.T) {
	k := newPKI(t)
	published := bundleFrom(t, k.renewIssuer, k.renewed)
	t.Run("an application", func(t *testing.T) {
		g := NewWithT(t)
		obj := rotationObj(atStep(rotatorv1.StepRestartingApplications, rotatorv1.KeyPolicyReuse, ""), canaryVerified("Deployment team/z"))
		h := newHarness(t, append(trustBundle(published), daprApp("team", "a", ""), onDeleteStatefulSet("team", "db"), obj)...)
		err := h.pass("mesh").stepApplications(t.Context())
		g.Expect(kindOf(err)).To(Equal("stall:" + rotatorv1.UpdateStrategyUnsupportedReason))
		g.Expect(err.Error()).To(ContainSubstring("StatefulSet team/db has updateStrategy OnDelete"))
		g.Expect(h.writes).To(BeEmpty(), "nothing restarted")
	})
	t.Run("an application whose pods hold the published anchors", func(t *testing.T) {
		g := NewWithT(t)
		obj := rotationObj(atStep(rotatorv1.StepRestartingApplications, rotatorv1.KeyPolicyReuse, ""), canaryVerified("Deployment team/z"))
		pod := sidecarPod("team", "db-0", "", ns, published.TrustAnchors)
		pod.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "StatefulSet", Name: "db", UID: "sts", Controller: ptr.To(true)}}
		h := newHarness(t, append(trustBundle(published), onDeleteStatefulSet("team", "db"), pod, obj)...)
		g.Expect(kindOf(h.pass("mesh").stepApplications(t.Context()))).To(BeEmpty())
	})
	t.Run("a control-plane workload", func(t *testing.T) {
		g := NewWithT(t)
		placement := onDeleteStatefulSet(ns, "dapr-placement-server")
		placement.Spec.Template.Annotations = nil
		obj := rotationObj(atStep(rotatorv1.StepRestartingControlPlane, rotatorv1.KeyPolicyReuse, ""), withSpec(func(s *rotatorv1.MTLSRootRotationSpec) {
			s.ControlPlane.Workloads = append(s.ControlPlane.Workloads, rotatorv1.ControlPlaneWorkload{Kind: rotatorv1.StatefulSet, Name: "dapr-placement-server"})
		}))
		h := newHarness(t, append(trustBundle(published), deployment("dapr-sentry", "r-1"), deployment("dapr-sidecar-injector", "r-1"), placement, obj)...)
		err := h.pass("mesh").stepControlPlane(t.Context())
		g.Expect(kindOf(err)).To(Equal("stall:" + rotatorv1.UpdateStrategyUnsupportedReason))
		g.Expect(err.Error()).To(ContainSubstring("StatefulSet dapr-system/dapr-placement-server has updateStrategy OnDelete"))
		g.Expect(h.writes).To(BeEmpty())
	})
}

// TestSwitchRestartsApplicationsFromTheNextSecond: start times are kept to
// the second, and only a pod started in a later second than Sentry's
// Switch restart counts as started after it; a Switch phase's applications
// are restarted from the second after it, not within it.
func TestSwitchRestartsApplicationsFromTheNextSecond(t *testing.T) {
	k := newPKI(t)
	published := bundleFrom(t, k.freshIssuer, k.old, k.fresh)
	for _, tt := range []struct {
		name       string
		signed     time.Time
		want       string
		wantWrites []string
	}{
		{"in the second Sentry's restart finished: waits", t0, "wait", nil},
		{"from the next second: the canary restarts", t0.Add(-time.Second), "wait", []string{"patch Deployment/a"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			obj := rotationObj(atStep(rotatorv1.StepRestartingApplications, rotatorv1.KeyPolicyRotate, rotatorv1.PhaseSwitch),
				afterPhases(tt.signed, rotatorv1.PhaseSwitch))
			h := newHarness(t, append(trustBundle(published), daprApp("team", "a", ""), obj)...)
			g.Expect(kindOf(h.pass("mesh").stepApplications(t.Context()))).To(Equal(tt.want))
			g.Expect(h.writes).To(Equal(tt.wantWrites))
		})
	}
}

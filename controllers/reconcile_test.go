package controllers

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/bundle"
	"github.com/mtls-rotator/mtls-rotator/internal/pki"
	"github.com/mtls-rotator/mtls-rotator/internal/pki/pkitest"
)

// reconcileOnce runs one Reconcile of the object mesh and returns it as the
// fake cluster holds it afterwards.
func (h *harness) reconcileOnce() (*rotatorv1.MTLSRootRotation, ctrl.Result, error) {
	h.t.Helper()
	res, err := h.r.Reconcile(ctrl.LoggerInto(h.t.Context(), ctrl.Log), reconcile.Request{NamespacedName: client.ObjectKey{Namespace: ns, Name: "mesh"}})
	return h.get(&rotatorv1.MTLSRootRotation{}, "mesh").(*rotatorv1.MTLSRootRotation), res, err
}

func settled(trigger string) objSetter {
	return func(obj *rotatorv1.MTLSRootRotation) {
		obj.Status.LastCompletedRotation = &rotatorv1.CompletedRotation{ID: "r-0", Trigger: trigger, Cause: rotatorv1.CauseTrigger, FinishedAt: metav1.NewTime(t0.Add(-time.Hour))}
	}
}

// TestReconcile covers the sub-reconcilers before the steps, and how the
// finalize summarises a pass: stalls are marked once with one Warning, waits
// say what they wait for, and observedGeneration follows.
func TestReconcile(t *testing.T) {
	k := newPKI(t)
	installed := bundleFrom(t, k.renewIssuer, k.renewed)
	tests := []struct {
		name    string
		objs    []client.Object
		obj     *rotatorv1.MTLSRootRotation
		wantErr bool
		// wantTerminal: the pass ends with a terminal error (a stall only a
		// spec change ends).
		wantTerminal bool
		wantReady    metav1.ConditionStatus
		wantReason   string
		wantEvents   []string
		check        func(g Gomega, obj *rotatorv1.MTLSRootRotation, h *harness)
	}{{
		name: "a suspended object is left as it is",
		objs: trustBundle(installed),
		obj:  rotationObj(withSpec(func(s *rotatorv1.MTLSRootRotationSpec) { s.Suspend = true })),
		check: func(g Gomega, obj *rotatorv1.MTLSRootRotation, h *harness) {
			g.Expect(obj.Status.Rotation).To(BeNil())
			g.Expect(obj.Status.ObservedGeneration).To(Equal(int64(-1)))
		},
	}, {
		name: "an older object on the same Secret makes this one touch nothing",
		objs: append(trustBundle(installed), &rotatorv1.MTLSRootRotation{ObjectMeta: metav1.ObjectMeta{Name: "owner", Namespace: ns, UID: "uid-0",
			CreationTimestamp: metav1.NewTime(t0.Add(-72 * time.Hour))}}),
		obj:       rotationObj(),
		wantReady: metav1.ConditionFalse, wantReason: rotatorv1.ConflictReason,
		wantEvents: []string{rotatorv1.ConflictReason},
		check: func(g Gomega, obj *rotatorv1.MTLSRootRotation, h *harness) {
			g.Expect(obj.Status.Rotation).To(BeNil())
			g.Expect(conditions.GetMessage(obj, meta.StalledCondition)).To(ContainSubstring("dapr-system/owner already manages"))
		},
	}, {
		name: "a selector stored before the CRD refused it, which the operator cannot parse, stalls before anything is done",
		objs: trustBundle(installed),
		obj: rotationObj(withSpec(func(s *rotatorv1.MTLSRootRotationSpec) {
			s.Applications.Selector = &rotatorv1.LabelSelector{MatchExpressions: []rotatorv1.LabelSelectorRequirement{{Key: "app", Operator: "Sometimes"}}}
		})),
		wantTerminal: true, wantReady: metav1.ConditionFalse, wantReason: rotatorv1.InvalidSpecReason,
		wantEvents: []string{rotatorv1.InvalidSpecReason},
		check: func(g Gomega, obj *rotatorv1.MTLSRootRotation, h *harness) {
			g.Expect(obj.Status.Rotation).To(BeNil())
			g.Expect(conditions.GetMessage(obj, meta.StalledCondition)).To(ContainSubstring("spec.applications.selector is not a valid label selector"))
			g.Expect(h.writes).To(HaveEach("status-patch MTLSRootRotation/mesh"))
		},
	}, {
		name: "dryRun set under a rotation in flight holds it, not Ready",
		objs: append(trustBundle(installed), daprApp("team", "a", "")),
		obj: rotationObj(atStep(rotatorv1.StepRestartingApplications, rotatorv1.KeyPolicyReuse, ""),
			withSpec(func(s *rotatorv1.MTLSRootRotationSpec) { s.DryRun = true })),
		wantReady: metav1.ConditionFalse, wantReason: rotatorv1.DryRunMidRotationReason,
		wantEvents: []string{rotatorv1.DryRunMidRotationReason},
		check: func(g Gomega, obj *rotatorv1.MTLSRootRotation, h *harness) {
			g.Expect(obj.Status.Rotation.Step).To(Equal(rotatorv1.StepRestartingApplications))
			g.Expect(conditions.GetMessage(obj, meta.StalledCondition)).To(ContainSubstring("goes on once dryRun is false"))
			g.Expect(h.writes).To(HaveEach("status-patch MTLSRootRotation/mesh"), "nothing restarted")
		},
	}, {
		name:      "a missing target stalls until it appears",
		obj:       rotationObj(),
		wantReady: metav1.ConditionFalse, wantReason: rotatorv1.TargetNotFoundReason,
		wantEvents: []string{rotatorv1.TargetNotFoundReason},
	}, {
		name:      "a new object starts its first rotation and records the start before issuing",
		objs:      trustBundle(installed),
		obj:       rotationObj(),
		wantReady: metav1.ConditionUnknown, wantReason: meta.ProgressingReason,
		wantEvents: []string{"RotationStarted"},
		check: func(g Gomega, obj *rotatorv1.MTLSRootRotation, h *harness) {
			g.Expect(obj.Status.Rotation.Step).To(Equal(rotatorv1.StepIssuing))
			g.Expect(obj.Status.Rotation.Message).To(ContainSubstring("started"),
				"the wait for the Certificate that follows at once is progress, held (progressWriteInterval)")
			g.Expect(obj.Status.ObservedGeneration).To(Equal(obj.Generation), "written with the start")
			g.Expect(h.writes[0]).To(Equal("status-patch MTLSRootRotation/mesh"), "the start is recorded before the cert-manager objects are made")
			g.Expect(h.writes).To(ContainElements("create Issuer/mesh-selfsigned", "create Certificate/mesh-root", "create Issuer/mesh-root-ca", "create Certificate/mesh-issuer"))
		},
	}, {
		name:      "a new Rotate rotation starts a new key generation",
		objs:      trustBundle(installed),
		obj:       rotationObj(withSpec(func(s *rotatorv1.MTLSRootRotationSpec) { s.Root.KeyPolicy = rotatorv1.KeyPolicyRotate })),
		wantReady: metav1.ConditionUnknown, wantReason: meta.ProgressingReason,
		wantEvents: []string{"RotationStarted"},
		check: func(g Gomega, obj *rotatorv1.MTLSRootRotation, h *harness) {
			g.Expect(obj.Status.RootKeyGeneration).To(Equal(int32(2)))
			g.Expect(obj.Status.Rotation.Phase).To(Equal(rotatorv1.PhaseOverlap))
		},
	}, {
		name: "an unpublished rotation is replaced by a new trigger, with one event",
		objs: trustBundle(installed),
		obj: rotationObj(atStep(rotatorv1.StepVerifying, rotatorv1.KeyPolicyReuse, ""),
			withSpec(func(s *rotatorv1.MTLSRootRotationSpec) { s.Trigger = "b" })),
		wantReady: metav1.ConditionUnknown, wantReason: meta.ProgressingReason,
		wantEvents: []string{"RotationReplaced", "RotationStarted"},
		check: func(g Gomega, obj *rotatorv1.MTLSRootRotation, h *harness) {
			g.Expect(obj.Status.Rotation.ID).NotTo(Equal("r-1"))
			g.Expect(obj.Status.Rotation.Trigger).To(Equal("b"))
		},
	}, {
		name: "a rolled-back rotation holds, Stalled, while the trigger is unchanged",
		objs: trustBundle(installed),
		obj: rotationObj(atStep(rotatorv1.StepRolledBack, rotatorv1.KeyPolicyReuse, ""),
			withRotation(func(r *rotatorv1.RotationStatus) { r.Message = "sentry did not roll out" })),
		wantReady: metav1.ConditionFalse, wantReason: rotatorv1.RolledBackReason, wantEvents: []string{rotatorv1.RolledBackReason},
		check: func(g Gomega, obj *rotatorv1.MTLSRootRotation, h *harness) {
			g.Expect(obj.Status.Rotation.Step).To(Equal(rotatorv1.StepRolledBack))
			g.Expect(h.writes).To(HaveEach("status-patch MTLSRootRotation/mesh"), "holding writes only status")
		},
	}, {
		name: "a settled object whose Secret changed since the publish stalls on drift and overwrites nothing",
		objs: trustBundle(installed),
		obj: rotationObj(settled("a"), func(obj *rotatorv1.MTLSRootRotation) {
			obj.Status.PublishedBundleHash = bundle.Hash(bundleFrom(t, k.oldIssuer, k.old))
		}),
		wantReady: metav1.ConditionFalse, wantReason: rotatorv1.TrustBundleDriftReason, wantEvents: []string{rotatorv1.TrustBundleDriftReason},
		check: func(g Gomega, obj *rotatorv1.MTLSRootRotation, h *harness) {
			g.Expect(conditions.IsTrue(obj, rotatorv1.TrustBundleDriftCondition)).To(BeTrue())
			g.Expect(h.writes).To(HaveEach("status-patch MTLSRootRotation/mesh"))
		},
	}, {
		name: "a settled object with nothing due is Ready and keeps its cert-manager objects",
		objs: trustBundle(installed),
		obj: rotationObj(settled("a"), func(obj *rotatorv1.MTLSRootRotation) {
			obj.Status.PublishedBundleHash = bundle.Hash(installed)
		}),
		wantReady: metav1.ConditionTrue, wantReason: meta.SucceededReason,
		check: func(g Gomega, obj *rotatorv1.MTLSRootRotation, h *harness) {
			g.Expect(conditions.GetMessage(obj, meta.ReadyCondition)).To(Equal("rotation r-0 completed at " + t0.Add(-time.Hour).Format(time.RFC3339)))
			g.Expect(h.writes).To(ContainElement("create Certificate/mesh-root"))
		},
	}, {
		name: "a settled object labels its Secret again when the label was dropped, and rewrites nothing of the bundle",
		objs: unlabeled(trustBundle(installed)),
		obj: rotationObj(settled("a"), func(obj *rotatorv1.MTLSRootRotation) {
			obj.Status.PublishedBundleHash = bundle.Hash(installed)
		}),
		wantReady: metav1.ConditionTrue, wantReason: meta.SucceededReason,
		check: func(g Gomega, obj *rotatorv1.MTLSRootRotation, h *harness) {
			g.Expect(slices.DeleteFunc(slices.Clone(h.writes), func(w string) bool { return !strings.Contains(w, "dapr-trust-bundle") })).
				To(Equal([]string{"patch Secret/dapr-trust-bundle"}), "one label patch; nothing of the bundle rewritten")
			g.Expect(h.get(&corev1.Secret{}, "dapr-trust-bundle").GetLabels()).To(HaveKeyWithValue(OwnerLabel, "mesh"))
			g.Expect(bundle.FromSecret(h.get(&corev1.Secret{}, "dapr-trust-bundle").(*corev1.Secret).Data, keysOf(obj))).To(Equal(installed))
		},
	}, {
		name: "an install the operator has not published to is read, not labeled",
		objs: unlabeled(trustBundle(installed)),
		obj:  rotationObj(),
		check: func(g Gomega, obj *rotatorv1.MTLSRootRotation, h *harness) {
			g.Expect(obj.Status.Rotation).NotTo(BeNil(), "the rotation starts")
			g.Expect(h.writes).NotTo(ContainElement("patch Secret/dapr-trust-bundle"))
		},
		wantEvents: []string{"RotationStarted"},
	}, {
		name: "a brought key Secret that does not exist stalls before anything is issued",
		objs: trustBundle(installed),
		obj: rotationObj(withSpec(func(s *rotatorv1.MTLSRootRotationSpec) {
			s.Root.PrivateKeySecretRef = &rotatorv1.KeySecretRef{Name: "my-key"}
		})),
		wantReady: metav1.ConditionFalse, wantReason: rotatorv1.InvalidPrivateKeyReason,
		wantEvents: []string{"RotationStarted", rotatorv1.InvalidPrivateKeyReason},
		check: func(g Gomega, obj *rotatorv1.MTLSRootRotation, h *harness) {
			g.Expect(h.writes).NotTo(ContainElement(HavePrefix("create Certificate")))
		},
	}, {
		name: "a status patch that fails is an error, retried",
		objs: trustBundle(installed),
		obj:  rotationObj(),
		check: func(g Gomega, obj *rotatorv1.MTLSRootRotation, h *harness) {
			g.Expect(obj.Status.Rotation).To(BeNil(), "nothing recorded")
			g.Expect(h.writes).NotTo(ContainElement(HavePrefix("create Certificate")), "nothing issued before the start is recorded")
		},
		wantErr: true, wantEvents: []string{"RotationStarted"},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			h := newHarness(t, append(tt.objs, tt.obj)...)
			if tt.wantErr {
				h.fail = failing("status-patch", "MTLSRootRotation")
			}
			obj, res, err := h.reconcileOnce()
			g.Expect(err != nil).To(Equal(tt.wantErr || tt.wantTerminal), "%v", err)
			g.Expect(errors.Is(err, reconcile.TerminalError(nil))).To(Equal(tt.wantTerminal), "%v", err)
			_ = res
			g.Expect(h.eventReasons()).To(Equal(tt.wantEvents))
			if tt.wantReady != "" {
				ready := conditions.Get(obj, meta.ReadyCondition)
				g.Expect(ready).NotTo(BeNil())
				g.Expect(ready.Status).To(Equal(tt.wantReady))
				g.Expect(ready.Reason).To(Equal(tt.wantReason))
				g.Expect(obj.Status.ObservedGeneration).To(Equal(obj.Generation))
				g.Expect(conditions.IsStalled(obj)).To(Equal(tt.wantReady == metav1.ConditionFalse))
			}
			if tt.check != nil {
				tt.check(g, obj, h)
			}
		})
	}
}

// TestStallIsAnnouncedOnce: a stall repeated by later passes raises its
// Warning once, and a terminal one is not retried.
func TestStallIsAnnouncedOnce(t *testing.T) {
	g := NewWithT(t)
	k := newPKI(t)
	other := pkitest.NewRoot(t, pkitest.Options{NotBefore: t0.Add(-48 * time.Hour)})
	obj := rotationObj(atStep(rotatorv1.StepVerifying, rotatorv1.KeyPolicyReuse, ""))
	h := newHarness(t, append(trustBundle(bundleFrom(t, pkitest.NewIssuer(t, other, pkitest.Options{NotBefore: t0.Add(-time.Hour)}), other)),
		issued(t, "mesh-root", k.renewed, k.renewed), issued(t, "mesh-issuer", k.renewIssuer, k.renewed), obj)...)
	for range 3 {
		got, res, err := h.reconcileOnce()
		g.Expect(err).To(MatchError(reconcile.TerminalError(nil)))
		g.Expect(res.RequeueAfter).To(BeZero())
		g.Expect(conditions.GetReason(got, meta.StalledCondition)).To(Equal(rotatorv1.RootKeyUnknownReason))
	}
	g.Expect(h.eventReasons()).To(Equal([]string{rotatorv1.RootKeyUnknownReason}))
}

// TestDryRunPlansWhatTheStrategyWouldDo: the plan comes from the strategy
// the rotation would run with, so it shows the Prune-only path an expired
// installed issuer takes, and it touches nothing but status.
func TestDryRunPlansWhatTheStrategyWouldDo(t *testing.T) {
	k := newPKI(t)
	expiredIssuer := pkitest.NewIssuer(t, k.old, pkitest.Options{NotBefore: t0.Add(-3 * time.Hour), Validity: time.Hour})
	dryRun := func(policy rotatorv1.KeyPolicy) objSetter {
		return withSpec(func(s *rotatorv1.MTLSRootRotationSpec) { s.DryRun, s.Root.KeyPolicy = true, policy })
	}
	tests := []struct {
		name       string
		installed  []client.Object
		obj        *rotatorv1.MTLSRootRotation
		wantPhases []rotatorv1.RotationPhase
		wantCerts  []string
		blocked    bool
		pods       []client.Object
		blocker    string
	}{
		{name: "new key with a Dapr pod no phase restarts: it would hold the Switch", installed: trustBundle(bundleFrom(t, k.oldIssuer, k.old)),
			obj:        rotationObj(dryRun(rotatorv1.KeyPolicyRotate)),
			wantPhases: []rotatorv1.RotationPhase{rotatorv1.PhaseOverlap, rotatorv1.PhaseSwitch, rotatorv1.PhasePrune}, blocked: true,
			pods:    []client.Object{sidecarPod("team", "a-5d4f9-x", "a-5d4f9", ns, k.old.CertPEM()), sidecarPod("team", "bare", "", ns, k.old.CertPEM())},
			blocker: "1 Dapr pods no phase restarts would hold the Switch phase (PodsNotConverged) until they are deleted or recreated: team/bare (no owner)"},
		{name: "new key with restarts off: every Dapr pod would hold it", installed: trustBundle(bundleFrom(t, k.oldIssuer, k.old)),
			obj:        rotationObj(dryRun(rotatorv1.KeyPolicyRotate), withSpec(func(s *rotatorv1.MTLSRootRotationSpec) { s.Applications.Restart = ptr.To(false) })),
			wantPhases: []rotatorv1.RotationPhase{rotatorv1.PhaseOverlap, rotatorv1.PhaseSwitch, rotatorv1.PhasePrune}, blocked: true,
			pods:    []client.Object{sidecarPod("team", "a-5d4f9-x", "a-5d4f9", ns, k.old.CertPEM())},
			blocker: "1 Dapr pods no phase restarts would hold the Switch phase (PodsNotConverged) until they are deleted or recreated: team/a-5d4f9-x (ReplicaSet a-5d4f9)"},
		{"new key over a working bundle: three phases", trustBundle(bundleFrom(t, k.oldIssuer, k.old)), rotationObj(dryRun(rotatorv1.KeyPolicyRotate)),
			[]rotatorv1.RotationPhase{rotatorv1.PhaseOverlap, rotatorv1.PhaseSwitch, rotatorv1.PhasePrune},
			[]string{"issue root Certificate mesh-root with a new key into Secret mesh-root-g2", "issue issuer Certificate mesh-issuer signed by that root"}, false, nil, ""},
		{"new key over an expired installed issuer: Prune only", trustBundle(bundleFrom(t, expiredIssuer, k.old)), rotationObj(dryRun(rotatorv1.KeyPolicyRotate)),
			[]rotatorv1.RotationPhase{rotatorv1.PhasePrune}, nil, false, nil, ""},
		{"new key over nothing installed: Prune only", trustBundle(pki.Bundle{}), rotationObj(dryRun(rotatorv1.KeyPolicyRotate)),
			[]rotatorv1.RotationPhase{rotatorv1.PhasePrune}, nil, false, nil, ""},
		{"same key over anchors of an unknown key: blocked", trustBundle(bundleFrom(t, k.oldIssuer, k.old)), rotationObj(dryRun(rotatorv1.KeyPolicyReuse)),
			nil, []string{"issue root Certificate mesh-root with a new key into Secret mesh-root", "issue issuer Certificate mesh-issuer signed by that root"}, true, nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			h := newHarness(t, append(append(tt.installed, tt.pods...), deployment("dapr-sentry", ""), deployment("dapr-sidecar-injector", ""), daprApp("team", "a", ""), tt.obj)...)
			obj, _, err := h.reconcileOnce()
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(obj.Status.Plan).NotTo(BeNil())
			g.Expect(obj.Status.Plan.Phases).To(Equal(tt.wantPhases))
			if tt.wantCerts != nil {
				g.Expect(obj.Status.Plan.Certificates).To(Equal(tt.wantCerts))
			}
			if tt.blocker != "" {
				g.Expect(obj.Status.Plan.Blockers).To(ContainElement(tt.blocker))
			}
			if obj.Spec.Applications.RestartEnabled() {
				g.Expect(obj.Status.Plan.Applications).To(Equal(int32(1)))
			}
			g.Expect(len(obj.Status.Plan.Blockers) > 0).To(Equal(tt.blocked))
			g.Expect(obj.Status.Rotation).To(BeNil())
			g.Expect(h.writes).To(HaveEach("status-patch MTLSRootRotation/mesh"), "a dry run writes only status")
			g.Expect(h.eventReasons()).To(ContainElement("RotationPlanned"))
			g.Expect(h.eventReasons()).To(HaveEach(BeElementOf("RotationPlanned", rotatorv1.ExpiringSoonReason)))

			// A pass a minute later finds the same plan: it writes nothing and raises no event.
			events := len(h.eventReasons())
			h.r.Now = func() time.Time { return t0.Add(time.Minute) }
			h.writes = nil
			again, _, err := h.reconcileOnce()
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(h.writes).To(BeEmpty(), "the same plan is not written again")
			g.Expect(h.eventReasons()).To(HaveLen(events), "nor announced again")
			g.Expect(again.Status.Plan.ComputedAt).To(Equal(obj.Status.Plan.ComputedAt))
		})
	}
}

// TestSpecChangesARotationCannotTakeAreRefusedOnce: a key policy or issuer
// asked for while a published rotation runs is refused with one Warning
// each, however many passes follow, and recorded for the next rotation.
func TestSpecChangesARotationCannotTakeAreRefusedOnce(t *testing.T) {
	g := NewWithT(t)
	k := newPKI(t)
	obj := rotationObj(atStep(rotatorv1.StepRestartingApplications, rotatorv1.KeyPolicyReuse, ""), func(obj *rotatorv1.MTLSRootRotation) {
		obj.Spec.Root.KeyPolicy = rotatorv1.KeyPolicyRotate
		obj.Spec.Issuer.IssuerRef = &rotatorv1.IssuerReference{Name: "org-ca", Kind: "ClusterIssuer"}
	})
	h := newHarness(t, append(trustBundle(bundleFrom(t, k.renewIssuer, k.renewed)), stuckApp("team", "a", ""), obj)...)
	for range 3 {
		got, _, err := h.reconcileOnce()
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(got.Status.Rotation.DeferredKeyPolicy).To(Equal(rotatorv1.KeyPolicyRotate))
		g.Expect(got.Status.Rotation.IssuerRefChangeDeferred).To(BeTrue())
		g.Expect(got.Status.Rotation.KeyPolicy).To(Equal(rotatorv1.KeyPolicyReuse), "the rotation finishes as it started")
	}
	g.Expect(h.eventReasons()).To(Equal([]string{rotatorv1.KeyPolicyChangeDeferredReason, rotatorv1.IssuerRefChangeDeferredReason}))
}

// TestConvergenceIsObservedFromThePods: the pods that run, of this control
// plane, are counted against the newest root published, a terminating one
// too (its sidecar serves until it exits); the ones that do not trust it are
// named with their reason; an unchanged observation writes nothing.
func TestConvergenceIsObservedFromThePods(t *testing.T) {
	g := NewWithT(t)
	k := newPKI(t)
	published := bundleFrom(t, k.renewIssuer, k.renewed)
	terminating := sidecarPod("team", "leaving", "app-1", ns, k.old.CertPEM())
	terminating.DeletionTimestamp, terminating.Finalizers = &metav1.Time{Time: t0}, []string{"keep"}
	obj := rotationObj(settled("a")) // the root comes from the installed bundle
	h := newHarness(t, append(trustBundle(published),
		sidecarPod("team", "a-1", "app-1", ns, k.renewed.CertPEM()),
		sidecarPod("team", "a-2", "app-1", ns, append(k.old.CertPEM(), k.renewed.CertPEM()...)),
		sidecarPod("team", "bare", "", ns, k.old.CertPEM()),
		sidecarPod("jobs", "job-x", "", ns, nil),
		sidecarPod("team", "elsewhere", "", "other-dapr", k.old.CertPEM()),
		terminating, obj)...)
	got, _, err := h.reconcileOnce()
	g.Expect(err).NotTo(HaveOccurred())
	c := got.Status.Convergence
	g.Expect(c).NotTo(BeNil())
	g.Expect(c.Root).To(Equal(pki.Fingerprint(k.renewed.Cert)[:11]))
	g.Expect(c.Progress).To(Equal("2/5"))
	g.Expect(c.TrustSets).To(HaveLen(4))
	g.Expect(c.NotConverged).To(Equal([]rotatorv1.PodConvergence{
		{Namespace: "jobs", Name: "job-x", Reason: "its trust anchors cannot be read: its daprd container has no DAPR_TRUST_ANCHORS"},
		{Namespace: "team", Name: "bare", Roots: []string{pki.Fingerprint(k.old.Cert)[:11]}, Reason: "it does not trust root " + pki.Fingerprint(k.renewed.Cert)[:11]},
		{Namespace: "team", Name: "leaving", Owner: "ReplicaSet app-1", Roots: []string{pki.Fingerprint(k.old.Cert)[:11]},
			Reason: "it is terminating, and does not trust root " + pki.Fingerprint(k.renewed.Cert)[:11]},
	}))
	g.Expect(c.LastChangeTime.Time).To(BeTemporally("==", t0))
	// The pods holding only the root certificate the renewal replaced lose
	// every peer when it expires, before the published one does.
	g.Expect(c.CutOff).NotTo(BeNil())
	g.Expect(c.CutOff.At.Time).To(BeTemporally("==", k.old.Cert.NotAfter))
	g.Expect(c.CutOff.Pods).To(Equal(int32(2)))
	g.Expect(c.CutOff.First).To(Equal([]string{"team/bare", "team/leaving"}), "this control plane's only")

	h.writes = nil
	h.r.Now = func() time.Time { return t0.Add(time.Minute) }
	again, _, err := h.reconcileOnce()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(again.Status.Convergence.LastChangeTime.Time).To(BeTemporally("==", t0), "nothing changed")
	g.Expect(h.writes).NotTo(ContainElement("status-patch MTLSRootRotation/mesh"), "an unchanged observation writes nothing")
}

// TestPodsHoldingOnlyAPreviousRootAreWarnedOf: the expiry that cuts the
// mesh off is the one the running pods hold: a same-key renewal that left a
// bare pod on the root certificate it replaced is Ready, but ExpiringSoon
// names that certificate and the pod once it is within expiryWarning, and
// once the pod is gone the warning goes with it.
func TestPodsHoldingOnlyAPreviousRootAreWarnedOf(t *testing.T) {
	g := NewWithT(t)
	k := newPKI(t)
	published := bundleFrom(t, k.renewIssuer, k.renewed)
	// The old root expires 47 hours before the renewed one: this warning
	// covers it (and the 90-day issuer), not the published root.
	warn := rotationObj(settled("a"), withSpec(func(s *rotatorv1.MTLSRootRotationSpec) {
		s.ExpiryWarning = &metav1.Duration{Duration: (365*24 - 47) * time.Hour}
	}))
	bare := sidecarPod("team", "bare", "", ns, k.old.CertPEM())
	h := newHarness(t, append(trustBundle(published), sidecarPod("team", "a-1", "app-1", ns, k.renewed.CertPEM()), bare, warn)...)
	got, _, err := h.reconcileOnce()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(conditions.IsReady(got)).To(BeTrue())
	g.Expect(conditions.GetReason(got, rotatorv1.ExpiringSoonCondition)).To(Equal("RootAndIssuer" + rotatorv1.ExpiringSoonReason))
	msg := conditions.GetMessage(got, rotatorv1.ExpiringSoonCondition)
	g.Expect(msg).To(ContainSubstring("previous root certificate expires at " + k.old.Cert.NotAfter.UTC().Format(time.RFC3339)))
	g.Expect(msg).To(ContainSubstring("every peer of 1 Dapr pods that trust no newer root (team/bare)"))
	g.Expect(msg).NotTo(ContainSubstring("; root certificate"), "the published root is not within the warning")

	g.Expect(h.client.Delete(t.Context(), bare)).To(Succeed())
	got, _, err = h.reconcileOnce()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(got.Status.Convergence.CutOff).To(BeNil())
	g.Expect(conditions.GetMessage(got, rotatorv1.ExpiringSoonCondition)).NotTo(ContainSubstring("previous root"))
}

// TestConvergenceExplainsThePreviousCertificateOfTheSameKey: a pod on the
// root certificate the last same-key rotation replaced keeps working until
// it expires, and status says so.
func TestConvergenceExplainsThePreviousCertificateOfTheSameKey(t *testing.T) {
	g := NewWithT(t)
	k := newPKI(t)
	published := bundleFrom(t, k.renewIssuer, k.renewed)
	backup := backupOf(t, bundleFrom(t, k.oldIssuer, k.old))
	h := newHarness(t, append(trustBundle(published), backup,
		sidecarPod("team", "bare", "", ns, k.old.CertPEM()), sidecarPod("team", "other", "", ns, k.fresh.CertPEM()), rotationObj(settled("a")))...)
	got, _, err := h.reconcileOnce()
	g.Expect(err).NotTo(HaveOccurred())
	notConverged := got.Status.Convergence.NotConverged
	g.Expect(notConverged).To(HaveLen(2))
	g.Expect(notConverged[0].Name).To(Equal("bare"))
	g.Expect(notConverged[0].Reason).To(Equal(fmt.Sprintf(
		"it holds the previous certificate of the same root key (%s), which keeps verifying the new issuer's certificates until %s; it converges when its pod is recreated",
		pki.Fingerprint(k.old.Cert)[:11], k.old.Cert.NotAfter.UTC().Format(time.RFC3339))))
	g.Expect(notConverged[1].Reason).To(HavePrefix("it does not trust root"), "a root of another key is not explained away")
}

// laggingCache serves, on its next read of an MTLSRootRotation, the object
// as it was before the last pass wrote its status: a cache whose watch event
// has not arrived yet. Reads after that one are up to date.
type laggingCache struct {
	client.Client
	lagged *rotatorv1.MTLSRootRotation
}

func (c *laggingCache) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	if o, ok := obj.(*rotatorv1.MTLSRootRotation); ok && c.lagged != nil {
		c.lagged.DeepCopyInto(o)
		c.lagged = nil
		return nil
	}
	return c.Client.Get(ctx, key, obj, opts...)
}

// TestAPassNeverStartsFromAStatusOlderThanItsLastWrite: a watch event can
// start a pass before the cache has seen the previous pass's status; the
// pass then reads the object live, and announces nothing twice.
func TestAPassNeverStartsFromAStatusOlderThanItsLastWrite(t *testing.T) {
	g := NewWithT(t)
	k := newPKI(t)
	obj := rotationObj(atStep(rotatorv1.StepRestartingApplications, rotatorv1.KeyPolicyReuse, ""),
		withSpec(func(s *rotatorv1.MTLSRootRotationSpec) { s.Root.KeyPolicy = rotatorv1.KeyPolicyRotate }))
	h := newHarness(t, append(trustBundle(bundleFrom(t, k.renewIssuer, k.renewed)), stuckApp("team", "a", ""), obj)...)
	cache := &laggingCache{Client: h.client}
	h.r.Client, h.r.APIReader = cache, h.client
	for range 3 {
		before := h.get(&rotatorv1.MTLSRootRotation{}, "mesh").(*rotatorv1.MTLSRootRotation)
		_, _, err := h.reconcileOnce()
		g.Expect(err).NotTo(HaveOccurred())
		cache.lagged = before
	}
	g.Expect(h.eventReasons()).To(Equal([]string{rotatorv1.KeyPolicyChangeDeferredReason}), "announced once, though the cache lagged each time")

	// A cache that caught up is read alone: the status as stored hashes as
	// the status as written.
	live := &countingReader{Reader: h.client}
	h.r.APIReader = live
	for range 3 {
		_, _, err := h.reconcileOnce()
		g.Expect(err).NotTo(HaveOccurred())
	}
	g.Expect(live.rotations).To(BeZero(), "no live read while the cache is up to date")
}

// countingReader counts the MTLSRootRotations read through it.
type countingReader struct {
	client.Reader
	rotations int
}

func (r *countingReader) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	if _, ok := obj.(*rotatorv1.MTLSRootRotation); ok {
		r.rotations++
	}
	return r.Reader.Get(ctx, key, obj, opts...)
}

// TestAPassGoesOnFromTheStepItRecorded: a pass that verifies, records
// Publishing, publishes and restarts the first control-plane workload runs
// each of those steps once, in order, after its record is written (the
// write must not leave the pass holding a status it no longer writes).
func TestAPassGoesOnFromTheStepItRecorded(t *testing.T) {
	g := NewWithT(t)
	k := newPKI(t)
	obj := rotationObj(atStep(rotatorv1.StepVerifying, rotatorv1.KeyPolicyReuse, ""))
	h := newHarness(t, append(trustBundle(bundleFrom(t, k.oldIssuer, k.old)),
		issued(t, "mesh-root", k.renewed, k.renewed), issued(t, "mesh-issuer", k.renewIssuer, k.renewed),
		deployment("dapr-sentry", ""), deployment("dapr-sidecar-injector", ""), obj)...)
	h.writes = nil
	got, _, err := h.reconcileOnce()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(got.Status.Rotation.Step).To(Equal(rotatorv1.StepRestartingControlPlane))
	g.Expect(got.Status.Rotation.WaitingFor).To(Equal("Deployment dapr-system/dapr-sentry"))
	g.Expect(h.writes).To(ContainElements("status-patch MTLSRootRotation/mesh", "apply Secret/dapr-trust-bundle", "patch Deployment/dapr-sentry"))
	g.Expect(h.writes).NotTo(ContainElement("patch Deployment/dapr-sidecar-injector"))
}

// TestReplacedRotateRotationGivesItsKeyBack: a Rotate rotation reverted
// before it published leaves the object on the installed key generation:
// the root Certificate and the CA Issuer point at it again, and the key the
// rotation began (which no anchor carries) is deleted.
func TestReplacedRotateRotationGivesItsKeyBack(t *testing.T) {
	g := NewWithT(t)
	k := newPKI(t)
	installed := bundleFrom(t, k.renewIssuer, k.renewed)
	obj := rotationObj(settled("a"), withSpec(func(s *rotatorv1.MTLSRootRotationSpec) { s.Trigger = "b" }),
		atStep(rotatorv1.StepVerifying, rotatorv1.KeyPolicyRotate, rotatorv1.PhaseOverlap),
		withSpec(func(s *rotatorv1.MTLSRootRotationSpec) { s.Trigger, s.Root.KeyPolicy = "a", rotatorv1.KeyPolicyReuse }),
		func(obj *rotatorv1.MTLSRootRotation) { obj.Status.PublishedBundleHash = bundle.Hash(installed) })
	labelled := func(s *corev1.Secret) *corev1.Secret { s.Labels = map[string]string{OwnerLabel: "mesh"}; return s }
	h := newHarness(t, append(trustBundle(installed), labelled(issued(t, "mesh-root", k.renewed, k.renewed)),
		labelled(issued(t, "mesh-root-g2", k.fresh, k.fresh)), labelled(issued(t, "mesh-issuer", k.freshIssuer, k.fresh)), obj)...)

	got, _, err := h.reconcileOnce()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(conditions.IsReady(got)).To(BeTrue())
	g.Expect(h.eventReasons()).To(Equal([]string{"RotationReplaced"}))
	g.Expect(got.Status.RootKeyGeneration).To(Equal(int32(1)), "back on the installed generation")
	g.Expect(h.get(&cmapi.Certificate{}, "mesh-root").(*cmapi.Certificate).Spec.SecretName).To(Equal("mesh-root"))
	g.Expect(h.get(&cmapi.Issuer{}, "mesh-root-ca").(*cmapi.Issuer).Spec.CA.SecretName).To(Equal("mesh-root"))
	g.Expect(h.writes).To(ContainElement("delete Secret/mesh-root-g2"))
	g.Expect(apierrors.IsNotFound(h.client.Get(t.Context(), client.ObjectKey{Namespace: ns, Name: "mesh-root-g2"}, &corev1.Secret{}))).To(BeTrue())
	h.get(&corev1.Secret{}, "mesh-root") // the installed key stays

	// Settled again: nothing more is deleted.
	h.writes = nil
	_, _, err = h.reconcileOnce()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(h.writes).NotTo(ContainElement(HavePrefix("delete")))
}

// TestRolledBackRenewalIsTriedAgain: a rolled-back automatic renewal holds,
// Stalled, and is woken halfway to the expiry of the issuer it restored,
// without anyone changing spec.trigger.
func TestRolledBackRenewalIsTriedAgain(t *testing.T) {
	g := NewWithT(t)
	k := newPKI(t)
	installed := bundleFrom(t, k.renewIssuer, k.renewed)
	obj := rotationObj(settled("a"), atStep(rotatorv1.StepRolledBack, rotatorv1.KeyPolicyReuse, ""),
		withRotation(func(r *rotatorv1.RotationStatus) {
			r.Cause, r.Message = rotatorv1.CauseRenewal, "sentry did not roll out"
		}),
		withSpec(func(s *rotatorv1.MTLSRootRotationSpec) { s.RenewBefore = &metav1.Duration{Duration: 3 * time.Hour} }),
		func(obj *rotatorv1.MTLSRootRotation) {
			obj.Status.PublishedBundleHash = bundle.Hash(installed)
			obj.Status.Root = &rotatorv1.CertificateStatus{NotAfter: metav1.NewTime(t0.Add(365 * 24 * time.Hour))}
			obj.Status.Issuer = &rotatorv1.CertificateStatus{NotAfter: metav1.NewTime(t0.Add(2 * time.Hour))}
		})
	h := newHarness(t, append(trustBundle(installed), obj)...)

	got, res, err := h.reconcileOnce()
	g.Expect(err).NotTo(HaveOccurred())
	// Rolled back a minute before t0 (atStep): halfway to t0+2h is t0+59m30s.
	retryAt := t0.Add(59*time.Minute + 30*time.Second)
	g.Expect(conditions.GetReason(got, meta.StalledCondition)).To(Equal(rotatorv1.RolledBackReason))
	g.Expect(conditions.GetMessage(got, meta.StalledCondition)).To(Equal("sentry did not roll out; the renewal is tried again at " + retryAt.Format(time.RFC3339)))
	g.Expect(res.RequeueAfter).To(Equal(retryAt.Sub(t0)+time.Second), "woken to try again")
	g.Expect(got.Status.Rotation.Step).To(Equal(rotatorv1.StepRolledBack))

	// Another pass while held says the same, and raises no new event.
	events := len(h.eventReasons())
	again, _, err := h.reconcileOnce()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(conditions.GetMessage(again, meta.StalledCondition)).To(Equal(conditions.GetMessage(got, meta.StalledCondition)))
	g.Expect(h.eventReasons()).To(HaveLen(events))

	h.r.Now = func() time.Time { return retryAt }
	got, _, err = h.reconcileOnce()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(got.Status.Rotation.Cause).To(Equal(rotatorv1.CauseRenewal))
	g.Expect(got.Status.Rotation.Step).To(Equal(rotatorv1.StepIssuing), "a new renewal, at the time it was announced")
	g.Expect(got.Status.Rotation.ID).NotTo(Equal("r-1"))
	g.Expect(h.eventReasons()).To(ContainElement("RenewalDue"))
}

// TestBackupIsOwnedOnceSettled: the backup, written unowned during a
// rotation (so that deleting the object mid-rotation keeps it), is owned
// again by the settled object, in one patch.
func TestBackupIsOwnedOnceSettled(t *testing.T) {
	g := NewWithT(t)
	k := newPKI(t)
	installed := bundleFrom(t, k.renewIssuer, k.renewed)
	obj := rotationObj(settled("a"), func(obj *rotatorv1.MTLSRootRotation) { obj.Status.PublishedBundleHash = bundle.Hash(installed) })
	backup := backupOf(t, bundleFrom(t, k.oldIssuer, k.old))
	g.Expect(backup.OwnerReferences).To(BeEmpty())
	h := newHarness(t, append(trustBundle(installed), backup, obj)...)

	got, _, err := h.reconcileOnce()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(h.writes).To(ContainElement("patch Secret/mesh-backup"))
	owned := h.get(&corev1.Secret{}, "mesh-backup").(*corev1.Secret)
	g.Expect(metav1.IsControlledBy(owned, got)).To(BeTrue())
	g.Expect(owned.Data).NotTo(HaveKey("issuer.key"), "the retired issuer key does not outlive the rotation")
	g.Expect(owned.Data).NotTo(HaveKey("replaced.issuer.key"))
	g.Expect(owned.Data).To(HaveKey("ca.crt"), "the certificates stay")
	g.Expect(owned.Data).To(HaveKey("issuer.crt"))
	g.Expect(owned.Data).To(HaveKey("replaced.issuer.crt"))

	h.writes = nil
	_, _, err = h.reconcileOnce()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(h.writes).NotTo(ContainElement(ContainSubstring("mesh-backup")), "owned already: no write")
}

// unlabeled drops the labels of the Secrets among objs: an install Helm or
// Sentry wrote, or one whose label a Helm upgrade removed.
func unlabeled(objs []client.Object) []client.Object {
	for _, o := range objs {
		if s, ok := o.(*corev1.Secret); ok {
			s.Labels = nil
		}
	}
	return objs
}

// configurationsUnreadable is an API reader that may not list Dapr's
// Configurations (RBAC, a timeout).
type configurationsUnreadable struct{ client.Reader }

func (r configurationsUnreadable) List(ctx context.Context, list client.ObjectList, opts ...client.ListOption) error {
	if u, ok := list.(*unstructured.UnstructuredList); ok && u.GetKind() == daprConfigurationGVK.Kind+"List" {
		return apierrors.NewForbidden(schema.GroupResource{Group: daprConfigurationGVK.Group, Resource: "configurations"}, "", errors.New("RBAC"))
	}
	return r.Reader.List(ctx, list, opts...)
}

// TestNoRotationStartsOnAnUnknownDaprConfiguration: with retired roots on
// Auto, whether a rotation keeps the roots it retires depends on Dapr's
// Configurations; when they cannot be read, no rotation starts (Stalled
// DaprConfigurationUnknown, nothing written but status) until they can. A
// policy that does not depend on them starts at once.
func TestNoRotationStartsOnAnUnknownDaprConfiguration(t *testing.T) {
	k := newPKI(t)
	for _, tt := range []struct {
		policy    rotatorv1.RetiredRootsPolicy
		wantStall bool
	}{{rotatorv1.RetiredRootsAuto, true}, {rotatorv1.RetiredRootsDrop, false}, {rotatorv1.RetiredRootsKeep, false}} {
		t.Run(string(tt.policy), func(t *testing.T) {
			g := NewWithT(t)
			obj := rotationObj(withSpec(func(s *rotatorv1.MTLSRootRotationSpec) { s.Root.Retired.Policy = tt.policy }))
			h := newHarness(t, append(trustBundle(bundleFrom(t, k.oldIssuer, k.old)), obj)...)
			h.r.APIReader = configurationsUnreadable{Reader: h.client}
			got, _, err := h.reconcileOnce()
			g.Expect(err).NotTo(HaveOccurred())
			if !tt.wantStall {
				g.Expect(got.Status.Rotation).NotTo(BeNil(), "the rotation starts")
				return
			}
			g.Expect(got.Status.Rotation).To(BeNil(), "no rotation starts")
			g.Expect(conditions.GetReason(got, meta.StalledCondition)).To(Equal(rotatorv1.DaprConfigurationUnknownReason))
			g.Expect(conditions.GetMessage(got, meta.StalledCondition)).To(ContainSubstring("WorkflowHistorySigning is on decides whether the roots a rotation retires stay"))
			g.Expect(conditions.GetMessage(got, meta.StalledCondition)).To(ContainSubstring("forbidden"))
			g.Expect(h.writes).To(HaveEach("status-patch MTLSRootRotation/mesh"))

			h.r.APIReader = h.client // readable again
			got, _, err = h.reconcileOnce()
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got.Status.Rotation).NotTo(BeNil(), "the rotation starts once they can be read")
		})
	}
}

// TestACompletedRotationIsSettledAtOnce: the pass that completes a rotation
// asks for the next one at once: it settles the object (owns the backup and
// drops its keys), and no event may come to bring it.
func TestACompletedRotationIsSettledAtOnce(t *testing.T) {
	g := NewWithT(t)
	k := newPKI(t)
	installed := bundleFrom(t, k.renewIssuer, k.renewed)
	obj := rotationObj(atStep(rotatorv1.StepRestartingApplications, rotatorv1.KeyPolicyReuse, ""), canaryVerified("Deployment team/a"),
		func(obj *rotatorv1.MTLSRootRotation) { obj.Status.PublishedBundleHash = bundle.Hash(installed) })
	h := newHarness(t, append(trustBundle(installed), daprApp("team", "a", "r-1"), backupOf(t, bundleFrom(t, k.oldIssuer, k.old)), obj)...)
	got, res, err := h.reconcileOnce()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(got.Status.Rotation.Step).To(Equal(rotatorv1.StepCompleted))
	g.Expect(res.RequeueAfter).To(Equal(time.Second), "the settling pass comes at once")

	got, res, err = h.reconcileOnce()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(metav1.IsControlledBy(h.get(&corev1.Secret{}, "mesh-backup"), got)).To(BeTrue(), "settled")
	g.Expect(res.RequeueAfter).NotTo(Equal(time.Second), "once: a settled object does not poll")
}

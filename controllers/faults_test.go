package controllers

import (
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/pki"
)

// TestAnAPIErrorOnEachWriteIsRetried fails, for each step that writes, each
// of its writes in turn: the pass ends with an error that is retried (never a
// stall, never a success), and the retry ends as a pass without the fault does.
func TestAnAPIErrorOnEachWriteIsRetried(t *testing.T) {
	k := newPKI(t)
	before, after := bundleFrom(t, k.oldIssuer, k.old), bundleFrom(t, k.renewIssuer, k.renewed)
	sameKeyIssued := func() []client.Object {
		return []client.Object{issued(t, "mesh-root", k.renewed, k.renewed), issued(t, "mesh-issuer", k.renewIssuer, k.renewed)}
	}
	newKeyIssued := func() []client.Object {
		return []client.Object{issued(t, "mesh-root-g2", k.fresh, k.fresh), issued(t, "mesh-issuer", k.freshIssuer, k.fresh)}
	}
	runStep := func(f func(*pass) step) func(*harness) error {
		return func(h *harness) error { return f(h.pass("mesh"))(h.t.Context()) }
	}
	reconcileOnce := func(h *harness) error { _, _, err := h.reconcileOnce(); return err }
	scenarios := []struct {
		name string
		objs func() []client.Object
		run  func(*harness) error
	}{{
		name: "a first rotation starting",
		objs: func() []client.Object { return append(trustBundle(after), rotationObj()) },
		run:  reconcileOnce,
	}, {
		name: "same key: the renewal trigger",
		objs: func() []client.Object {
			return append(trustBundle(before), certificate("mesh-root", 1), certificate("mesh-issuer", 1),
				rotationObj(atStep(rotatorv1.StepIssuing, rotatorv1.KeyPolicyReuse, "")))
		},
		run: runStep(func(p *pass) step { return p.strategy().issue }),
	}, {
		name: "same key: publishing",
		objs: func() []client.Object {
			return append(append(trustBundle(before), sameKeyIssued()...), rotationObj(atStep(rotatorv1.StepPublishing, rotatorv1.KeyPolicyReuse, "")))
		},
		run: runStep(func(p *pass) step { return p.stepPublishing }),
	}, {
		name: "new key: publishing the overlap",
		objs: func() []client.Object {
			return append(append(trustBundle(before), newKeyIssued()...), rotationObj(atStep(rotatorv1.StepPublishing, rotatorv1.KeyPolicyRotate, rotatorv1.PhaseOverlap)))
		},
		run: runStep(func(p *pass) step { return p.stepPublishing }),
	}, {
		name: "a control-plane restart",
		objs: func() []client.Object {
			return append(trustBundle(after), deployment("dapr-sentry", ""), deployment("dapr-sidecar-injector", ""),
				rotationObj(atStep(rotatorv1.StepRestartingControlPlane, rotatorv1.KeyPolicyReuse, "")))
		},
		run: runStep(func(p *pass) step { return p.stepControlPlane }),
	}, {
		name: "a rollback",
		objs: func() []client.Object {
			return append(trustBundle(after), deployment("dapr-sentry", "r-1", stuck), deployment("dapr-sidecar-injector", ""), backupOf(t, before),
				rotationObj(atStep(rotatorv1.StepRestartingControlPlane, rotatorv1.KeyPolicyReuse, ""),
					waitingSince("Deployment dapr-system/dapr-sentry", t0.Add(-11*time.Minute))))
		},
		run: runStep(func(p *pass) step { return p.stepControlPlane }),
	}, {
		name: "a wave of applications",
		objs: func() []client.Object {
			return append(trustBundle(after), daprApp("team", "a", ""), daprApp("team", "b", ""),
				rotationObj(atStep(rotatorv1.StepRestartingApplications, rotatorv1.KeyPolicyReuse, "")))
		},
		run: runStep(func(p *pass) step { return p.stepApplications }),
	}, {
		name: "a completed new-key rotation dropping the previous key",
		objs: func() []client.Object {
			prev := issued(t, "mesh-root", k.old, k.old)
			obj := rotationObj(atStep(rotatorv1.StepCompleted, rotatorv1.KeyPolicyRotate, ""), settled("a"))
			obj.Status.LastCompletedRotation.ID = "r-1"
			return append(trustBundle(pki.Bundle{}), prev, obj)
		},
		run: reconcileOnce,
	}}
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			g := NewWithT(t)
			clean := newHarness(t, sc.objs()...)
			want := kindOf(sc.run(clean))
			g.Expect(want).NotTo(Equal("error"), "the pass without a fault succeeds or waits")
			writes := clean.writes
			g.Expect(writes).NotTo(BeEmpty())
			t.Logf("faulting each of %d writes: %v", len(writes), writes)
			for i, w := range writes {
				h := newHarness(t, sc.objs()...)
				h.fail = nthWrite(i)
				err := sc.run(h)
				g.Expect(kindOf(err)).To(Equal("error"), "write %d (%s) failed: %v", i+1, w, err)
				h.fail = nil
				g.Expect(kindOf(sc.run(h))).To(Equal(want), "the retry after write %d (%s) failed", i+1, w)
			}
		})
	}
}

// nthWrite fails the n-th write attempt (from 0), and only that one.
func nthWrite(n int) func(string, string) error {
	attempt := 0
	return func(string, string) error {
		defer func() { attempt++ }()
		if attempt == n {
			return errAPI
		}
		return nil
	}
}

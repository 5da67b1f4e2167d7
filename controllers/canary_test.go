package controllers

import (
	"testing"
	"time"

	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/restart"
)

// TestCanaryGate: the first application a phase restarts goes alone, and
// the anchors its new pods got from Dapr's injector decide whether any
// other restarts; the operator creates no pod of its own to ask.
func TestCanaryGate(t *testing.T) {
	k := newPKI(t)
	installed := bundleFrom(t, k.renewIssuer, k.renewed)
	restartedAt := t0.Add(-time.Minute)
	// app is a Dapr application; restarted for this phase a minute ago when
	// restarted, with replicas pods.
	app := func(name string, restarted bool, replicas int32, set ...func(*appsv1.Deployment)) *appsv1.Deployment {
		id := ""
		if restarted {
			id = "r-1"
		}
		d := daprApp("team", name, id)
		d.Spec.Replicas = ptr.To(replicas)
		if restarted {
			restartedAgo(d, time.Minute)
		}
		for _, f := range set {
			f(d)
		}
		return d
	}
	// pod of app, injected with anchors, started at.
	pod := func(app, name string, anchors []byte, at time.Time) *corev1.Pod {
		return started(sidecarPod("team", name, app+"-5d4f9", ns, anchors), at)
	}
	// bare is a pod of app made from its restarted template that Dapr's
	// injector did not patch: no label, no daprd.
	bare := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: "a-5d4f9-bare",
		Annotations: map[string]string{restart.Annotation: "r-1", rotatorv1.DaprEnabledAnnotation: "true"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app"}}}}
	chosen := withRotation(func(r *rotatorv1.RotationStatus) {
		r.Canary = &rotatorv1.CanaryStatus{RestartID: "r-1", Workload: "Deployment team/a"}
	})
	looking := withRotation(func(r *rotatorv1.RotationStatus) {
		r.WaitingFor, r.WaitingSince = canaryWait, &metav1.Time{Time: t0.Add(-time.Minute)}
	})
	wide := withSpec(func(s *rotatorv1.MTLSRootRotationSpec) { s.Applications.MaxConcurrent = 5 })
	tests := []struct {
		name       string
		set        []objSetter
		objs       []client.Object
		want       string
		wantWrites []string
		wantCanary string
		wantPod    string
		wantEvents []string
		wantIn     string
	}{{
		name: "the first restart of a phase is the canary, alone, whatever the window",
		set:  []objSetter{wide},
		objs: []client.Object{app("a", false, 2), app("b", false, 1), app("c", false, 1)},
		want: "wait", wantWrites: []string{"patch Deployment/a"}, wantCanary: "Deployment team/a",
	}, {
		name: "an application that runs no pod is not the canary: its restart shows nothing",
		set:  []objSetter{wide},
		objs: []client.Object{app("a", false, 0), app("b", false, 1), app("c", false, 1)},
		want: "wait", wantWrites: []string{"patch Deployment/b"}, wantCanary: "Deployment team/b",
	}, {
		name: "no application runs a pod: the window opens, there is nothing to learn from",
		set:  []objSetter{wide},
		objs: []client.Object{app("a", false, 0), app("b", false, 0)},
		want: "wait", wantWrites: []string{"patch Deployment/a", "patch Deployment/b"},
	}, {
		name: "nothing else restarts while the canary rolls out",
		set:  []objSetter{wide, chosen},
		objs: []client.Object{app("a", true, 1, stuck), app("b", false, 1)},
		want: "wait", wantCanary: "Deployment team/a",
	}, {
		name: "its new pod holds the published anchors: recorded, and the window opens in the same pass",
		set:  []objSetter{wide, chosen},
		objs: []client.Object{app("a", true, 1), app("b", false, 1), app("c", false, 1), pod("a", "a-5d4f9-new", k.renewed.CertPEM(), t0.Add(-30*time.Second))},
		want: "wait", wantWrites: []string{"patch Deployment/b", "patch Deployment/c"}, wantCanary: "Deployment team/a",
		wantPod: "team/a-5d4f9-new", wantEvents: []string{"InjectorVerified"},
	}, {
		name: "its new pod got other anchors: InjectorStale naming the pod, nothing else restarted",
		set:  []objSetter{wide, chosen},
		objs: []client.Object{app("a", true, 1), app("b", false, 1), pod("a", "a-5d4f9-new", k.old.CertPEM(), t0.Add(-30*time.Second))},
		want: "stall:" + rotatorv1.InjectorStaleReason, wantCanary: "Deployment team/a", wantIn: "pod team/a-5d4f9-new of Deployment team/a",
	}, {
		name: "the newest pod decides: one recreated after the injector was mended opens the window",
		set:  []objSetter{wide, chosen},
		objs: []client.Object{app("a", true, 1), app("b", false, 1), pod("a", "a-5d4f9-stale", k.old.CertPEM(), t0.Add(-50*time.Second)),
			pod("a", "a-5d4f9-mended", k.renewed.CertPEM(), t0.Add(-10*time.Second))},
		want: "wait", wantWrites: []string{"patch Deployment/b"}, wantCanary: "Deployment team/a", wantPod: "team/a-5d4f9-mended",
		wantEvents: []string{"InjectorVerified"},
	}, {
		name: "a pod started before the canary's restart is no evidence: it looks again",
		set:  []objSetter{wide, chosen},
		objs: []client.Object{app("a", true, 1), app("b", false, 1), pod("a", "a-5d4f9-old", k.renewed.CertPEM(), restartedAt.Add(-time.Hour))},
		want: "wait", wantCanary: "Deployment team/a",
	}, {
		name: "no injected pod once the cache had time: InjectorNotVerified naming the pod admitted bare",
		set:  []objSetter{wide, chosen, looking},
		objs: []client.Object{app("a", true, 1), app("b", false, 1), bare},
		want: "stall:" + rotatorv1.InjectorNotVerifiedReason, wantCanary: "Deployment team/a", wantIn: "its pod a-5d4f9-bare was created with no daprd container",
	}, {
		name: "a canary chosen and lost from status is found again by its restart",
		set:  []objSetter{wide},
		objs: []client.Object{app("a", false, 1), app("b", true, 1), pod("b", "b-5d4f9-new", k.renewed.CertPEM(), t0.Add(-30*time.Second))},
		want: "wait", wantWrites: []string{"patch Deployment/a"}, wantCanary: "Deployment team/b", wantPod: "team/b-5d4f9-new",
		wantEvents: []string{"InjectorVerified"},
	}, {
		name: "a canary verified for this phase is not judged again",
		set:  []objSetter{wide, canaryVerified("Deployment team/a")},
		objs: []client.Object{app("a", true, 1), app("b", true, 1, stuck), app("c", false, 1), pod("a", "a-5d4f9-new", k.old.CertPEM(), t0.Add(-30*time.Second))},
		want: "wait", wantWrites: []string{"patch Deployment/c"}, wantCanary: "Deployment team/a", wantPod: "team/canary-x",
	}, {
		name: "one verified for another phase is: a new phase has a canary of its own",
		set: []objSetter{wide, withRotation(func(r *rotatorv1.RotationStatus) {
			r.Canary = &rotatorv1.CanaryStatus{RestartID: "r-1-overlap", Workload: "Deployment team/c", VerifiedAt: &metav1.Time{Time: t0}}
		})},
		objs: []client.Object{app("a", false, 1), app("b", false, 1)},
		want: "wait", wantWrites: []string{"patch Deployment/a"}, wantCanary: "Deployment team/a",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			obj := rotationObj(append([]objSetter{atStep(rotatorv1.StepRestartingApplications, rotatorv1.KeyPolicyReuse, "")}, tt.set...)...)
			h := newHarness(t, append(trustBundle(installed), append(tt.objs, obj)...)...)
			p := h.pass("mesh")
			err := p.stepApplications(t.Context())
			g.Expect(kindOf(err)).To(Equal(tt.want), "%v", err)
			g.Expect(h.writes).To(Equal(tt.wantWrites))
			g.Expect(h.eventReasons()).To(Equal(tt.wantEvents))
			if tt.wantIn != "" {
				g.Expect(err.Error()).To(ContainSubstring(tt.wantIn))
			}
			c := p.obj.Status.Rotation.Canary
			if tt.wantCanary == "" {
				g.Expect(c).To(BeNil())
				return
			}
			g.Expect(c).NotTo(BeNil())
			g.Expect(c.Workload).To(Equal(tt.wantCanary))
			g.Expect(c.Pod).To(Equal(tt.wantPod))
			g.Expect(c.VerifiedAt != nil).To(Equal(tt.wantPod != ""))
		})
	}
}

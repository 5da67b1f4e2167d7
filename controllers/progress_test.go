package controllers

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
)

// restartingApplications is a harness with a rotation restarting apps, at
// most maxConcurrent at once, and a clock the test moves through *now.
func restartingApplications(t *testing.T, maxConcurrent int32, apps ...client.Object) (*harness, *time.Time) {
	k := newPKI(t)
	obj := rotationObj(atStep(rotatorv1.StepRestartingApplications, rotatorv1.KeyPolicyReuse, ""),
		withSpec(func(s *rotatorv1.MTLSRootRotationSpec) { s.Applications.MaxConcurrent = maxConcurrent }),
		canaryVerified("Deployment team/z")) // the window is open
	h := newHarness(t, append(append(trustBundle(bundleFrom(t, k.renewIssuer, k.renewed)), apps...), obj)...)
	now := t0
	h.r.Now = func() time.Time { return now }
	return h, &now
}

// rollOut marks the app name of namespace team rolled out.
func rollOut(t *testing.T, h *harness, name string) {
	t.Helper()
	g := NewWithT(t)
	d := &appsv1.Deployment{}
	g.Expect(h.client.Get(t.Context(), client.ObjectKey{Namespace: "team", Name: name}, d)).To(Succeed())
	d.Status.AvailableReplicas, d.Status.UnavailableReplicas = 1, 0
	g.Expect(h.client.Status().Update(t.Context(), d)).To(Succeed())
}

// TestProgressIsWrittenAtMostOncePerInterval: while applications roll out,
// each workload event wakes a pass whose progress differs; the status is
// written at most once per progressWriteInterval, the held progress lands
// when the interval is over, and a change of step is written at once.
func TestProgressIsWrittenAtMostOncePerInterval(t *testing.T) {
	g := NewWithT(t)
	h, now := restartingApplications(t, 3, daprApp("team", "a", "r-1"), restartedAgo(stuckApp("team", "b", "r-1"), 10*time.Second),
		restartedAgo(stuckApp("team", "c", "r-1"), 10*time.Second))
	statusWrites := func() int {
		return len(slices.DeleteFunc(slices.Clone(h.writes), func(w string) bool { return w != "status-patch MTLSRootRotation/mesh" }))
	}
	pass := func(at time.Duration) (*rotatorv1.MTLSRootRotation, time.Duration) {
		t.Helper()
		*now, h.writes = t0.Add(at), nil
		got, res, err := h.reconcileOnce()
		g.Expect(err).NotTo(HaveOccurred())
		return got, res.RequeueAfter
	}

	got, _ := pass(0)
	g.Expect(statusWrites()).To(Equal(1), "the first pass writes, in one patch, conditions included: %v", h.writes)
	g.Expect(got.Status.Applications.Progress).To(Equal("1/3"))

	rollOut(t, h, "b")
	got, after := pass(300 * time.Millisecond)
	g.Expect(statusWrites()).To(BeZero(), "progress 0.3s after the last write waits: %v", h.writes)
	got, _ = pass(progressWriteInterval - 100*time.Millisecond)
	g.Expect(statusWrites()).To(BeZero(), "and still just before the interval is over: %v", h.writes)
	g.Expect(got.Status.Applications.Progress).To(Equal("1/3"))
	g.Expect(after).To(And(BeNumerically(">", 0), BeNumerically("<=", progressWriteInterval-300*time.Millisecond)),
		"and is looked at again by the time the interval is over")

	got, _ = pass(progressWriteInterval + 100*time.Millisecond)
	g.Expect(statusWrites()).NotTo(BeZero(), "the held progress is written once the interval is over")
	g.Expect(got.Status.Applications.Progress).To(Equal("2/3"))

	rollOut(t, h, "c")
	got, _ = pass(progressWriteInterval + 200*time.Millisecond)
	g.Expect(statusWrites()).NotTo(BeZero(), "the end of the step is written at once")
	g.Expect(got.Status.Rotation.Step).NotTo(Equal(rotatorv1.StepRestartingApplications))
}

// TestProgressWaitsForTheNextTenthOfTheApplications: past the interval,
// progress within the same tenth of the applications waits up to
// progressWriteIntervalMax; the next tenth is written at once.
func TestProgressWaitsForTheNextTenthOfTheApplications(t *testing.T) {
	g := NewWithT(t)
	apps := []client.Object{daprApp("team", "done-0", "r-1"), daprApp("team", "done-1", "r-1")}
	for _, name := range []string{"s-0", "s-1", "s-2"} {
		apps = append(apps, restartedAgo(stuckApp("team", name, "r-1"), 10*time.Second))
	}
	for i := range 15 { // restarted in turn, never rolled out
		apps = append(apps, stuckApp("team", fmt.Sprintf("todo-%d", i), ""))
	}
	h, now := restartingApplications(t, 3, apps...)
	pass := func(at time.Duration) (progress string, written bool) {
		t.Helper()
		*now, h.writes = t0.Add(at), nil
		got, _, err := h.reconcileOnce()
		g.Expect(err).NotTo(HaveOccurred())
		return got.Status.Applications.Progress, slices.Contains(h.writes, "status-patch MTLSRootRotation/mesh")
	}

	progress, written := pass(0)
	g.Expect(written).To(BeTrue())
	g.Expect(progress).To(Equal("2/20"))

	rollOut(t, h, "s-0")
	_, written = pass(progressWriteInterval + 100*time.Millisecond)
	g.Expect(written).To(BeFalse(), "3/20 is in the same tenth as 2/20: %v", h.writes)
	_, written = pass(progressWriteIntervalMax - 100*time.Millisecond)
	g.Expect(written).To(BeFalse(), "and waits up to progressWriteIntervalMax")
	progress, written = pass(progressWriteIntervalMax + 100*time.Millisecond)
	g.Expect(written).To(BeTrue(), "then it is written")
	g.Expect(progress).To(Equal("3/20"))

	rollOut(t, h, "s-1")
	progress, written = pass(progressWriteIntervalMax + progressWriteInterval + 200*time.Millisecond)
	g.Expect(written).To(BeTrue(), "4/20 is the next tenth: written once the interval is over")
	g.Expect(progress).To(Equal("4/20"))
}

// TestProgressOnly names what may wait and what may not.
func TestProgressOnly(t *testing.T) {
	base := rotationObj(atStep(rotatorv1.StepRestartingApplications, rotatorv1.KeyPolicyReuse, ""))
	markProgress(base, "waiting for 2 applications")
	base.Status.Applications = &rotatorv1.ApplicationsStatus{Total: 3, Restarted: 1, Progress: "1/3"}
	for name, tt := range map[string]struct {
		change func(*rotatorv1.MTLSRootRotation)
		want   bool
	}{
		"nothing": {func(*rotatorv1.MTLSRootRotation) {}, true},
		"a message and count": {func(o *rotatorv1.MTLSRootRotation) {
			markProgress(o, "waiting for 1 application")
			o.Status.Applications.Restarted = 2
		}, true},
		"convergence":        {func(o *rotatorv1.MTLSRootRotation) { o.Status.Convergence = &rotatorv1.ConvergenceStatus{Pods: 3} }, true},
		"the step":           {func(o *rotatorv1.MTLSRootRotation) { o.Status.Rotation.Step = rotatorv1.StepCompleted }, false},
		"what it waits for":  {func(o *rotatorv1.MTLSRootRotation) { o.Status.Rotation.WaitingFor = "Deployment/x" }, false},
		"a condition reason": {func(o *rotatorv1.MTLSRootRotation) { setStalled(o, rotatorv1.RolloutTimeoutReason, "late") }, false},
		"observedGeneration": {func(o *rotatorv1.MTLSRootRotation) { o.Status.ObservedGeneration++ }, false},
	} {
		t.Run(name, func(t *testing.T) {
			after := base.DeepCopy()
			tt.change(after)
			NewWithT(t).Expect(progressOnly(&base.Status, &after.Status)).To(Equal(tt.want))
		})
	}
}

// TestARestartIsNotAskedForTwiceWhileTheCacheLags: a pass woken before the
// cache holds its own restart patches does not patch the same workloads
// again; a restart undone by someone else is asked for again once the memo
// expires.
func TestARestartIsNotAskedForTwiceWhileTheCacheLags(t *testing.T) {
	g := NewWithT(t)
	h, now := restartingApplications(t, 2, daprApp("team", "a", ""), daprApp("team", "b", ""), daprApp("team", "c", ""))
	restarts := func() []string {
		return slices.DeleteFunc(slices.Clone(h.writes), func(w string) bool { return !strings.HasPrefix(w, "patch Deployment/") })
	}
	unseen := func(names ...string) { // the cache as it was before the patches
		for _, name := range names {
			d := &appsv1.Deployment{}
			g.Expect(h.client.Get(t.Context(), client.ObjectKey{Namespace: "team", Name: name}, d)).To(Succeed())
			d.Spec.Template.Annotations = map[string]string{rotatorv1.DaprEnabledAnnotation: rotatorv1.DaprEnabledAnnotationValue}
			g.Expect(h.client.Update(t.Context(), d)).To(Succeed())
		}
	}

	h.writes = nil
	_, _, err := h.reconcileOnce()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(restarts()).To(Equal([]string{"patch Deployment/a", "patch Deployment/b"}))

	unseen("a", "b")
	*now, h.writes = t0.Add(time.Second), nil
	_, _, err = h.reconcileOnce()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(restarts()).To(BeEmpty(), "both are in flight, though the cache does not show it")

	*now, h.writes = t0.Add(restartMemoTTL+time.Second), nil
	_, _, err = h.reconcileOnce()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(restarts()).To(Equal([]string{"patch Deployment/a", "patch Deployment/b"}), "undone, so asked for again")
}

package e2e

import (
	"fmt"
	"testing"
	"time"

	"github.com/fluxcd/cli-utils/pkg/kstatus/status"
	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/e2e/fixture"
	"github.com/mtls-rotator/mtls-rotator/internal/health"
)

// lazyWaitFor is status.rotation.waitingFor during a lazy wait.
const lazyWaitFor = "owners' redeploys"

// startLazyRotation sets trigger with applications.lazy restarting
// restartBefore ahead of the published root certificate's expiry, and waits
// until the rotation published and waits for owners' redeploys. It returns
// the rotation as then.
func startLazyRotation(t *testing.T, key types.NamespacedName, trigger string, restartBefore time.Duration) *rotatorv1.MTLSRootRotation {
	t.Helper()
	g := NewWithT(t)
	obj := getRotation(t, key)
	obj.Spec.Trigger = trigger
	obj.Spec.Applications.Lazy = &rotatorv1.LazyRestartSpec{RestartBefore: &metav1.Duration{Duration: restartBefore}}
	updateRotation(t, obj)
	g.Eventually(func(g Gomega) {
		r := getRotation(t, key).Status.Rotation
		g.Expect(r.Trigger).To(Equal(trigger))
		g.Expect(r.WaitingFor).To(Equal(lazyWaitFor))
	}).WithTimeout(2 * time.Minute).WithPolling(200 * time.Millisecond).Should(Succeed())
	return getRotation(t, key)
}

// TestLazyRotationLeavesRestartsToOwners: a lazy same-key rotation publishes,
// restarts the control plane and its canary (one application, whose new pods
// show the injector hands out the published anchors), and then no other
// application: it is Ready (RestartsDeferred) and names its deadline. Once
// the owners redeployed every application it completes, woken by their pods
// (its safety-net resync is ten minutes away), with no other application
// restarted. A second lazy rotation, whose deadline is a minute away,
// restarts nothing else before it, then only the applications their owners
// did not redeploy; every handshake works meanwhile.
func TestLazyRotationLeavesRestartsToOwners(t *testing.T) {
	g := NewWithT(t)
	freshBundle(t)
	startOperator(t)
	key := newRotation(t, "lazy", rotatorv1.MTLSRootRotationSpec{Trigger: "first", Applications: rotatorv1.ApplicationsSpec{MaxConcurrent: 3}})
	first := waitRotationCompleted(t, key, "first")
	apps := daprApps()

	// A year ahead: only the owners' redeploys end this wait.
	waiting := startLazyRotation(t, key, "second", 24*time.Hour)
	rot := waiting.Status.Rotation
	g.Expect(rot.DeferredUntil.Time).To(BeTemporally("~", first.Status.Root.NotAfter.Add(-24*time.Hour), time.Second),
		"a day ahead of the expiry of the root certificate the rotation replaced")
	g.Expect(conditions.IsReady(waiting)).To(BeTrue(), "the mesh works: Ready while the restarts are deferred")
	g.Expect(conditions.GetReason(waiting, meta.ReadyCondition)).To(Equal(rotatorv1.RestartsDeferredReason))
	g.Expect(kstatusOf(t, waiting)).To(Equal(status.CurrentStatus), "a GitOps health check does not wait on it")
	g.Expect(argoHealthOf(t, key).Status).To(Equal(health.Healthy))
	g.Expect(eventCount(t, key, rotatorv1.RestartsDeferredReason)).To(Equal(int32(1)))
	canary := canaryApp(t, rot.Canary)
	g.Expect(rot.Canary.VerifiedAt).NotTo(BeNil())
	g.Consistently(func(g Gomega) {
		g.Expect(restartedApps(t, rot.ID)).To(Equal([]string{canary.Name}))
		g.Expect(getRotation(t, key).Status.Rotation.WaitingFor).To(Equal(lazyWaitFor))
	}).WithTimeout(3*time.Second).WithPolling(250*time.Millisecond).Should(Succeed(), "no application but the canary is restarted before the deadline")

	redeployByOwners(t, apps...)
	second := waitRotationCompleted(t, key, "second")
	g.Expect(restartedApps(t, second.Status.LastCompletedRotation.ID)).To(Equal([]string{canary.Name}), "the owners redeployed every other application")
	g.Expect(second.Status.Applications.Restarted).To(Equal(int32(1)))
	g.Expect(second.Status.Applications.Skipped).To(Equal(int32(len(apps) - 1)))
	g.Expect(second.Status.Convergence.Progress).To(Equal(fmt.Sprintf("%d/%d", second.Status.Convergence.Pods, second.Status.Convergence.Pods)))

	// A minute ahead: the stragglers are restarted then, and only they.
	o := startOracle(t)
	restartBefore := time.Until(second.Status.Root.NotAfter.Time) - time.Minute
	waiting = startLazyRotation(t, key, "third", restartBefore.Round(time.Second))
	rot = waiting.Status.Rotation
	canary = canaryApp(t, rot.Canary)
	var owned []fixture.App // two their owners redeploy, not the canary
	for _, app := range apps {
		if app != canary && len(owned) < 2 {
			owned = append(owned, app)
		}
	}
	redeployByOwners(t, owned...)
	g.Consistently(func(g Gomega) {
		g.Expect(restartedApps(t, rot.ID)).To(Equal([]string{canary.Name}))
	}).WithTimeout(time.Until(rot.DeferredUntil.Time)-2*time.Second).WithPolling(500*time.Millisecond).Should(Succeed(),
		"nothing but the canary is restarted before %s", rot.DeferredUntil)
	third := waitRotationCompleted(t, key, "third")
	o.stop()
	restarted := restartedApps(t, third.Status.LastCompletedRotation.ID)
	g.Expect(restarted).To(HaveLen(len(apps)-len(owned)), "every straggler is restarted, the canary first")
	for _, app := range owned {
		g.Expect(restarted).NotTo(ContainElement(app.Name), "%s was redeployed by its owner", app.Name)
	}
	g.Expect(third.Status.Applications.Skipped).To(Equal(int32(len(owned))))
	g.Expect(third.Status.LastCompletedRotation.FinishedAt.Time).To(BeTemporally("<", second.Status.Root.NotAfter.Time),
		"all before the previous root certificate expires")
	moments, mixed, failures := o.report()
	t.Logf("oracle: %d moments observed, %d with pods on different issuers", moments, mixed)
	g.Expect(failures).To(BeEmpty())
	g.Expect(mixed).To(BeNumerically(">", 0), "the oracle must have seen pods on the previous issuer next to the new one")
}

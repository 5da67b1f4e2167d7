package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/fluxcd/cli-utils/pkg/kstatus/status"
	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/e2e/fixture"
	"github.com/mtls-rotator/mtls-rotator/internal/pki"
	"github.com/mtls-rotator/mtls-rotator/internal/restart"
)

// restartObserver polls the fixture's workloads while a rotation runs and
// records, for one rotation id, the order in which the control-plane
// workloads were restarted, whether every earlier one had rolled out at that
// moment, and the largest number of applications restarting at once.
type restartObserver struct {
	mu              sync.Mutex
	order           []string
	notAwaited      []string
	maxAppsInFlight int
	cancel          context.CancelFunc
	done            chan struct{}
}

func observeRestarts(t *testing.T, rotationID func() string) *restartObserver {
	ctx, cancel := context.WithCancel(t.Context())
	o := &restartObserver{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(o.done)
		seen := map[string]bool{}
		for ctx.Err() == nil {
			id := rotationID()
			if id != "" {
				o.sample(ctx, id, seen)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	return o
}

func (o *restartObserver) sample(ctx context.Context, id string, seen map[string]bool) {
	rolledOut := true
	for _, w := range fixture.ControlPlane {
		annotations, st, err := readControlPlane(ctx, w)
		if err != nil {
			return
		}
		done := st.Done
		if restart.RestartedFor(annotations, id) && !seen[w.Name] {
			seen[w.Name] = true
			o.mu.Lock()
			o.order = append(o.order, w.Name)
			if !rolledOut {
				o.notAwaited = append(o.notAwaited, w.Name)
			}
			o.mu.Unlock()
		}
		rolledOut = rolledOut && restart.RestartedFor(annotations, id) && done
	}
	inFlight := 0
	for _, app := range fixtureOpts.AppList() {
		annotations, st, err := readWorkload(ctx, appRef(app))
		if err != nil {
			return
		}
		if restart.RestartedFor(annotations, id) && !st.Done {
			inFlight++
		}
	}
	o.mu.Lock()
	o.maxAppsInFlight = max(o.maxAppsInFlight, inFlight)
	o.mu.Unlock()
}

func (o *restartObserver) stop() {
	o.cancel()
	<-o.done
}

// TestSameKeyRotation is the core: first issuance onto the empty bundle the
// Helm chart creates, then a second rotation by changing spec.trigger.
func TestSameKeyRotation(t *testing.T) {
	g := NewWithT(t)
	ctx := t.Context()

	freshBundle(t)
	// Sentry's JWT material lives in the same Secret and must survive.
	secret, _ := readBundle(t)
	secret.Data = map[string][]byte{"jwt.key": []byte("sentry-jwt-signing-key"), "jwks.json": []byte(`{"keys":[]}`)}
	g.Expect(k8sClient.Update(ctx, secret)).To(Succeed())

	op := startOperator(t)
	key := types.NamespacedName{Namespace: fixture.ControlPlaneNamespace, Name: "dapr"}
	obj := &rotatorv1.MTLSRootRotation{
		ObjectMeta: metav1.ObjectMeta{Name: key.Name, Namespace: key.Namespace},
		Spec: rotatorv1.MTLSRootRotationSpec{
			Trigger:      "first",
			Applications: rotatorv1.ApplicationsSpec{MaxConcurrent: 2},
		},
	}
	g.Expect(k8sClient.Create(ctx, obj)).To(Succeed())
	t.Cleanup(func() { _ = k8sClient.Delete(context.Background(), obj) })

	currentID := func() string {
		o := &rotatorv1.MTLSRootRotation{}
		if k8sClient.Get(ctx, key, o) != nil || o.Status.Rotation == nil {
			return ""
		}
		return o.Status.Rotation.ID
	}
	obs := observeRestarts(t, currentID)
	first := waitRotationCompleted(t, key, "first")
	obs.stop()
	checkRotation(t, first, obs)
	g.Expect(kstatusOf(t, first)).To(Equal(status.CurrentStatus))
	g.Expect(first.Status.Rotation.RootRevision).To(Equal(int32(1)), "a first issuance issues the root once")
	g.Expect(first.Status.Rotation.IssuerRevision).To(Equal(int32(1)), "and the issuer once")
	checkConditions(t, first)

	secret, cm := readBundle(t)
	g.Expect(secret.Data["ca.crt"]).To(Equal([]byte(cm.Data["ca.crt"])), "Secret and ConfigMap anchors must be byte-identical")
	g.Expect(secret.Data).To(HaveKeyWithValue("jwt.key", []byte("sentry-jwt-signing-key")))
	g.Expect(secret.Data).To(HaveKeyWithValue("jwks.json", []byte(`{"keys":[]}`)))
	g.Expect(secret.Labels).To(HaveKeyWithValue("app.kubernetes.io/managed-by", "Helm"), "Helm's labels stay")
	g.Expect(secret.Annotations).To(HaveKeyWithValue("meta.helm.sh/release-name", "dapr"))
	b := pki.Bundle{TrustAnchors: secret.Data["ca.crt"], IssuerChain: secret.Data["issuer.crt"], IssuerKey: secret.Data["issuer.key"]}
	_, err := b.Validate(time.Now())
	g.Expect(err).NotTo(HaveOccurred(), "the published bundle passes Sentry's checks")
	root1, issuer1 := parseOne(t, secret.Data["ca.crt"]), parseOne(t, secret.Data["issuer.crt"])
	g.Expect(first.Status.Root.SHA256Fingerprint).To(Equal(pki.Fingerprint(root1)))
	g.Expect(first.Status.Issuer.SHA256Fingerprint).To(Equal(pki.Fingerprint(issuer1)))
	g.Expect(first.Status.TrustAnchors).To(Equal(int32(1)))

	// The second rotation: one Git commit changing the trigger.
	g.Expect(k8sClient.Get(ctx, key, obj)).To(Succeed())
	obj.Spec.Trigger = "second"
	updateRotation(t, obj)
	obs = observeRestarts(t, func() string {
		if id := currentID(); id != first.Status.LastCompletedRotation.ID {
			return id
		}
		return ""
	})
	second := waitRotationCompleted(t, key, "second")
	obs.stop()
	checkRotation(t, second, obs)
	g.Expect(second.Status.LastCompletedRotation.ID).NotTo(Equal(first.Status.LastCompletedRotation.ID))
	g.Expect(second.Status.Rotation.RootRevision).To(Equal(int32(2)))
	g.Expect(second.Status.Rotation.IssuerRevision).To(Equal(int32(2)))

	secret, cm = readBundle(t)
	g.Expect(secret.Data["ca.crt"]).To(Equal([]byte(cm.Data["ca.crt"])))
	g.Expect(secret.Data).To(HaveKeyWithValue("jwt.key", []byte("sentry-jwt-signing-key")))
	root2, issuer2 := parseOne(t, secret.Data["ca.crt"]), parseOne(t, secret.Data["issuer.crt"])
	g.Expect(pki.SamePublicKey(root1, root2)).To(BeTrue(), "the root key is reused")
	g.Expect(root2.SerialNumber).NotTo(Equal(root1.SerialNumber), "the root was renewed")
	g.Expect(second.Status.Root.PublicKeySHA256).To(Equal(first.Status.Root.PublicKeySHA256))
	g.Expect(second.Status.Root.SHA256Fingerprint).NotTo(Equal(first.Status.Root.SHA256Fingerprint))
	g.Expect(pki.Fingerprint(issuer2)).NotTo(Equal(pki.Fingerprint(issuer1)), "a new issuer")
	g.Expect(pki.SamePublicKey(issuer1, issuer2)).To(BeFalse(), "the issuer gets a new key")

	// Events tell the story of each step; no key or certificate body is in them or in status.
	g.Eventually(func(g Gomega) {
		events := eventsFor(t, key)
		for _, byReason := range events {
			for _, e := range byReason {
				g.Expect(e.Message).NotTo(ContainSubstring("BEGIN"))
			}
		}
		for _, r := range []string{"RotationStarted", "CertificatesIssued", "TrustBundlePublished", "ControlPlaneRestarted", "ApplicationsRestarted", "RotationCompleted"} {
			g.Expect(events).To(HaveKey(r))
		}
	}).WithTimeout(30 * time.Second).Should(Succeed())
	logs := op.logs.String()
	g.Expect(logs).To(ContainSubstring("rotation completed"), "the log capture works")
	for _, secret := range []string{"BEGIN", "PRIVATE KEY", "MII"} {
		g.Expect(logs).NotTo(ContainSubstring(secret), "no key or certificate body in the operator's logs")
	}
	statusJSON, err := json.Marshal(second.Status)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(string(statusJSON)).NotTo(ContainSubstring("BEGIN"))

	// A reconcile request on a completed rotation changes nothing.
	secretVersion := secret.ResourceVersion
	requestReconcile(t, key, "now")
	g.Consistently(func(g Gomega) {
		now, _ := readBundle(t)
		g.Expect(now.ResourceVersion).To(Equal(secretVersion), "no write when nothing changes")
		g.Expect(getRotation(t, key).Status.LastCompletedRotation.ID).To(Equal(second.Status.LastCompletedRotation.ID))
	}).WithTimeout(3 * time.Second).WithPolling(200 * time.Millisecond).Should(Succeed())

	backup := &corev1.Secret{}
	g.Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: key.Namespace, Name: "dapr-backup"}, backup)).To(Succeed())
	g.Expect(backup.Data["ca.crt"]).To(Equal(pki.EncodeCertificates(root1)), "the backup holds the bundle before the rotation")
	g.Expect(metav1.IsControlledBy(backup, second)).To(BeTrue())
	for k := range backup.Data {
		g.Expect(k).NotTo(HaveSuffix(".key"), "a settled backup holds no private key: %s", k)
	}
}

// checkRotation asserts what every completed rotation must show.
func checkRotation(t *testing.T, obj *rotatorv1.MTLSRootRotation, obs *restartObserver) {
	t.Helper()
	g := NewWithT(t)
	id := obj.Status.LastCompletedRotation.ID
	obs.mu.Lock()
	defer obs.mu.Unlock()
	want := make([]string, 0, len(fixture.ControlPlane))
	for _, w := range fixture.ControlPlane {
		want = append(want, w.Name)
	}
	g.Expect(obs.order).To(Equal(want), "control plane restarted in order")
	g.Expect(obs.notAwaited).To(BeEmpty(), "each control-plane workload is restarted only after the previous ones rolled out")
	g.Expect(obs.maxAppsInFlight).To(BeNumerically("<=", obj.Spec.Applications.MaxConcurrent))

	for _, app := range fixtureOpts.AppList() {
		annotations, st, err := readWorkload(t.Context(), appRef(app))
		g.Expect(err).NotTo(HaveOccurred())
		if app.Dapr {
			g.Expect(restart.RestartedFor(annotations, id)).To(BeTrue(), "Dapr app %s restarted", app.Name)
			g.Expect(st.Done).To(BeTrue())
			// Exactly once: one ReplicaSet carries this rotation's id.
			n := restartedRevisions(t.Context(), g, appRef(app), id)
			g.Expect(n).To(Equal(1), "app %s restarted exactly once for %s", app.Name, id)
		} else {
			g.Expect(annotations).NotTo(HaveKey(restart.Annotation), "non-Dapr app %s untouched", app.Name)
		}
	}
	g.Expect(obj.Status.Applications).NotTo(BeNil())
	g.Expect(obj.Status.Applications.Progress).To(Equal(fmt.Sprintf("%d/%d", obj.Status.Applications.Total, obj.Status.Applications.Total)))
	g.Expect(conditions.Has(obj, meta.ReconcilingCondition)).To(BeFalse())
	g.Expect(conditions.Has(obj, meta.StalledCondition)).To(BeFalse())
	for _, s := range obj.Status.Rotation.Steps {
		g.Expect(s.FinishedAt).NotTo(BeNil(), "step %s finished", s.Name)
	}
}

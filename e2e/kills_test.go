package e2e

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fluxcd/pkg/runtime/conditions"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/pki"
)

var errKilled = errors.New("the operator was killed")

// killAfterWrite stands for an operator process killed right after one of
// its writes landed: that write reaches the API server, and nothing after it
// does, as nothing of a dead process would. A dry run persists nothing, so it
// is not a write here.
type killAfterWrite struct {
	// before runs ahead of each write, with the operator's description of it.
	before func(what string)

	mu       sync.Mutex // held across a write: one at a time, so "after" is exact
	killedAt string
	killed   chan struct{}
}

func newKillAfterWrite(before func(what string)) *killAfterWrite {
	return &killAfterWrite{before: before, killed: make(chan struct{})}
}

func (k *killAfterWrite) around(what string, write func() error) error {
	if strings.HasPrefix(what, "dry-run ") {
		return write()
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.killedAt != "" {
		return errKilled
	}
	k.before(what)
	if err := write(); err != nil {
		return err
	}
	k.killedAt = what
	close(k.killed)
	return errKilled
}

// killedAfter returns the write the operator was killed after, once it was.
func (k *killAfterWrite) killedAfter() (string, bool) {
	select {
	case <-k.killed:
		k.mu.Lock()
		defer k.mu.Unlock()
		return k.killedAt, true
	default:
		return "", false
	}
}

// killedRun is what runKilledAfterEveryWrite saw.
type killedRun struct {
	kills []string // the writes, in order, each of which an operator died after
	// whileApart are the writes that were about to land while Sentry's Secret
	// and the ConfigMap held different anchors, the ConfigMap write that
	// makes them alike again aside.
	whileApart []string
}

// maxKills bounds a killed run: a rotation makes about 50 writes.
const maxKills = 400

// runKilledAfterEveryWrite runs operators one after the other, each killed
// right after its first write lands, until the rotation for trigger has
// completed and an operator has run for quiet without writing: every write
// of the rotation, its settling included, is followed by a crash.
func runKilledAfterEveryWrite(t *testing.T, key types.NamespacedName, trigger string, quiet time.Duration) killedRun {
	t.Helper()
	var (
		run killedRun
		mu  sync.Mutex
	)
	before := func(what string) {
		if strings.Contains(what, "ConfigMapApplyConfiguration") {
			return
		}
		s, cm := &corev1.Secret{}, &corev1.ConfigMap{}
		err := errors.Join(k8sClient.Get(t.Context(), bundleKey, s), k8sClient.Get(t.Context(), bundleKey, cm))
		if err != nil || cm.Data["ca.crt"] != string(s.Data["ca.crt"]) {
			mu.Lock()
			defer mu.Unlock()
			run.whileApart = append(run.whileApart, fmt.Sprintf("%s (%v)", what, err))
		}
	}
	for {
		if len(run.kills) == maxKills {
			t.Fatalf("%d operators killed and the rotation for %q has not completed; killed after: %v", maxKills, trigger, run.kills)
		}
		k := newKillAfterWrite(before)
		op := startOperatorWith(t, operatorOptions{faults: k})
		var completedAt time.Time
		deadline := time.Now().Add(2 * time.Minute)
		for {
			if what, ok := k.killedAfter(); ok {
				op.stop()
				run.kills = append(run.kills, what)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("operator %d neither wrote nor completed the rotation in 2 minutes; killed after: %v", len(run.kills)+1, run.kills)
			}
			if completedAt.IsZero() && completed(t, key, trigger) {
				completedAt = time.Now()
			}
			if !completedAt.IsZero() && time.Since(completedAt) > quiet {
				op.stop()
				mu.Lock()
				defer mu.Unlock()
				return run
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// completed tells whether the rotation for trigger has completed and its
// object is Ready for its generation.
func completed(t *testing.T, key types.NamespacedName, trigger string) bool {
	obj := getRotation(t, key)
	last := obj.Status.LastCompletedRotation
	return last != nil && last.Trigger == trigger && conditions.IsReady(obj) && obj.Status.ObservedGeneration == obj.Generation
}

// TestKilledAfterEveryWrite kills the operator right after each write of a
// same-key and then a new-key rotation (Secret, ConfigMap, backup,
// cert-manager objects, root keys, workload restarts, status), starting a new
// one each time. Both rotations complete as they do without a crash: every
// workload restarted once per phase, Sentry's Secret and the ConfigMap never
// apart when anything but the ConfigMap write is about to land, the new root
// alone at the end.
func TestKilledAfterEveryWrite(t *testing.T) {
	g := NewWithT(t)
	freshBundle(t)
	key := newRotation(t, "killed", rotatorv1.MTLSRootRotationSpec{Trigger: "a"})
	report := func(name string, run killedRun) {
		t.Logf("%s: %d writes, each followed by a kill: %s", name, len(run.kills), strings.Join(run.kills, "; "))
		g.Expect(run.whileApart).To(BeEmpty(), "writes about to land while the Secret and ConfigMap differed")
	}

	sameKey := runKilledAfterEveryWrite(t, key, "a", 3*time.Second)
	report("same key", sameKey)
	first := getRotation(t, key)
	assertRestartedOnce(t, first.Status.LastCompletedRotation.ID)
	sameBundleInSecretAndConfigMap(t)

	first.Spec.Trigger, first.Spec.Root.KeyPolicy = "b", rotatorv1.KeyPolicyRotate
	updateRotation(t, first)
	newKey := runKilledAfterEveryWrite(t, key, "b", 3*time.Second)
	report("new key", newKey)
	second := getRotation(t, key)
	for _, phase := range []string{"overlap", "switch", "prune"} {
		assertRestartedOnce(t, second.Status.LastCompletedRotation.ID+"-"+phase)
	}
	published := sameBundleInSecretAndConfigMap(t)
	g.Expect(published.Anchors).To(HaveLen(1))
	g.Expect(pki.PublicKeyFingerprint(published.Anchors[0])).NotTo(Equal(first.Status.Root.PublicKeySHA256), "a new root key")
	g.Expect(fmt.Sprint(sameKey.kills, newKey.kills)).To(ContainSubstring("ConfigMapApplyConfiguration"))
}

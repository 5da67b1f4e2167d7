package e2e

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/pki"
)

// faultyWrites fails every nth write the operator makes, cycling through
// what an API server answers under load: a 409 Conflict and a 500 before the
// write, and a timeout after it landed (the caller cannot tell it did).
type faultyWrites struct {
	every int

	mu       sync.Mutex
	writes   int
	injected map[string]int // by kind of fault
}

func newFaultyWrites(every int) *faultyWrites {
	return &faultyWrites{every: every, injected: map[string]int{}}
}

// around runs write, failing it when its turn comes.
func (f *faultyWrites) around(what string, write func() error) error {
	f.mu.Lock()
	f.writes++
	n := f.writes
	var fault string
	if n%f.every == 0 {
		fault = []string{"conflict", "internal", "timeout"}[(n/f.every)%3]
		f.injected[fault]++
	}
	f.mu.Unlock()
	gr := schema.GroupResource{Resource: what}
	switch fault {
	case "conflict":
		return apierrors.NewConflict(gr, what, fmt.Errorf("injected conflict"))
	case "internal":
		return apierrors.NewInternalError(fmt.Errorf("injected error on %s", what))
	case "timeout":
		if err := write(); err != nil {
			return err
		}
		return apierrors.NewTimeoutError("injected timeout after the write landed", 1)
	}
	return write()
}

func (f *faultyWrites) counts() (writes int, injected map[string]int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.writes, maps.Clone(f.injected)
}

// wrap returns c with its writes (status included) going through f.
func (f *faultyWrites) wrap(c client.Client) client.Client { return &faultyClient{Client: c, f: f} }

type faultyClient struct {
	client.Client
	f *faultyWrites
}

func kindOf(obj runtime.Object) string { return fmt.Sprintf("%T", obj) }

func (c *faultyClient) Create(ctx context.Context, obj client.Object, opts ...client.CreateOption) error {
	return c.f.around("create "+kindOf(obj), func() error { return c.Client.Create(ctx, obj, opts...) })
}

func (c *faultyClient) Update(ctx context.Context, obj client.Object, opts ...client.UpdateOption) error {
	return c.f.around("update "+kindOf(obj), func() error { return c.Client.Update(ctx, obj, opts...) })
}

func (c *faultyClient) Patch(ctx context.Context, obj client.Object, patch client.Patch, opts ...client.PatchOption) error {
	return c.f.around("patch "+kindOf(obj), func() error { return c.Client.Patch(ctx, obj, patch, opts...) })
}

func (c *faultyClient) Apply(ctx context.Context, obj runtime.ApplyConfiguration, opts ...client.ApplyOption) error {
	return c.f.around("apply", func() error { return c.Client.Apply(ctx, obj, opts...) })
}

func (c *faultyClient) Delete(ctx context.Context, obj client.Object, opts ...client.DeleteOption) error {
	return c.f.around("delete "+kindOf(obj), func() error { return c.Client.Delete(ctx, obj, opts...) })
}

func (c *faultyClient) Status() client.SubResourceWriter {
	return &faultyStatus{SubResourceWriter: c.Client.Status(), f: c.f}
}

type faultyStatus struct {
	client.SubResourceWriter
	f *faultyWrites
}

func (s *faultyStatus) Update(ctx context.Context, obj client.Object, opts ...client.SubResourceUpdateOption) error {
	return s.f.around("status update "+kindOf(obj), func() error { return s.SubResourceWriter.Update(ctx, obj, opts...) })
}

func (s *faultyStatus) Patch(ctx context.Context, obj client.Object, patch client.Patch, opts ...client.SubResourcePatchOption) error {
	return s.f.around("status patch "+kindOf(obj), func() error { return s.SubResourceWriter.Patch(ctx, obj, patch, opts...) })
}

// TestRotationsCompleteThroughAPIErrors: with every third (then every
// fourth) write of the operator failing (Secret, ConfigMap, backup,
// cert-manager objects, root keys, workloads, status), a same-key and then a
// new-key rotation complete with the result they have without faults: Secret
// and ConfigMap alike, every workload restarted exactly once per phase, the
// new root alone at the end.
func TestRotationsCompleteThroughAPIErrors(t *testing.T) {
	for _, every := range []int{3, 4} {
		t.Run(fmt.Sprintf("every %d writes", every), func(t *testing.T) {
			g := NewWithT(t)
			freshBundle(t)
			faults := newFaultyWrites(every)
			startOperatorWith(t, operatorOptions{faults: faults})
			key := newRotation(t, fmt.Sprintf("faulty-%d", every), rotatorv1.MTLSRootRotationSpec{Trigger: "a"})
			first := waitRotationCompleted(t, key, "a")
			assertRestartedOnce(t, first.Status.LastCompletedRotation.ID)
			sameBundleInSecretAndConfigMap(t)

			first.Spec.Trigger, first.Spec.Root.KeyPolicy = "b", rotatorv1.KeyPolicyRotate
			updateRotation(t, first)
			second := waitRotationCompleted(t, key, "b")
			for _, phase := range []string{"overlap", "switch", "prune"} {
				assertRestartedOnce(t, second.Status.LastCompletedRotation.ID+"-"+phase)
			}
			published := sameBundleInSecretAndConfigMap(t)
			g.Expect(published.Anchors).To(HaveLen(1))
			g.Expect(pki.PublicKeyFingerprint(published.Anchors[0])).NotTo(Equal(first.Status.Root.PublicKeySHA256), "a new root key")
			writes, injected := faults.counts()
			t.Logf("operator writes: %d; injected: %v", writes, injected)
			for _, kind := range []string{"conflict", "internal", "timeout"} {
				g.Expect(injected[kind]).To(BeNumerically(">", 0), kind)
			}
		})
	}
}

// sameBundleInSecretAndConfigMap checks that Sentry's Secret holds a bundle
// Sentry accepts and the ConfigMap the same anchors, and returns it.
func sameBundleInSecretAndConfigMap(t *testing.T) *pki.ParsedBundle {
	t.Helper()
	g := NewWithT(t)
	s, cm := readBundle(t)
	g.Expect(cm.Data["ca.crt"]).To(Equal(string(s.Data["ca.crt"])))
	parsed, err := pki.Bundle{TrustAnchors: s.Data["ca.crt"], IssuerChain: s.Data["issuer.crt"], IssuerKey: s.Data["issuer.key"]}.Validate(time.Now())
	g.Expect(err).NotTo(HaveOccurred())
	return parsed
}

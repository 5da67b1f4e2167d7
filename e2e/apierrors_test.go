package e2e

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
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

var faultKinds = []string{"conflict", "internal", "timeout"}

func newFaultyWrites(every int) *faultyWrites {
	return &faultyWrites{every: every, injected: map[string]int{}}
}

// around runs write, failing it when its turn comes. A dry run persists
// nothing: it is not a write here.
func (f *faultyWrites) around(what string, write func() error) error {
	if strings.HasPrefix(what, "dry-run ") {
		return write()
	}
	f.mu.Lock()
	f.writes++
	n := f.writes
	var fault string
	if n%f.every == 0 {
		fault = faultKinds[(n/f.every)%len(faultKinds)]
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

// writeHook runs each write of the operator, and may fail it before or
// after it lands.
type writeHook interface {
	around(what string, write func() error) error
}

// hookWrites returns c with its writes (status and other subresources
// included) going through h.
func hookWrites(c client.Client, h writeHook) client.Client { return &faultyClient{Client: c, f: h} }

type faultyClient struct {
	client.Client
	f writeHook
}

func kindOf(obj runtime.Object) string { return fmt.Sprintf("%T", obj) }

func (c *faultyClient) Create(ctx context.Context, obj client.Object, opts ...client.CreateOption) error {
	what := "create "
	if slices.Contains(opts, client.CreateOption(client.DryRunAll)) {
		what = "dry-run create "
	}
	return c.f.around(what+kindOf(obj), func() error { return c.Client.Create(ctx, obj, opts...) })
}

func (c *faultyClient) Update(ctx context.Context, obj client.Object, opts ...client.UpdateOption) error {
	return c.f.around("update "+kindOf(obj), func() error { return c.Client.Update(ctx, obj, opts...) })
}

func (c *faultyClient) Patch(ctx context.Context, obj client.Object, patch client.Patch, opts ...client.PatchOption) error {
	return c.f.around("patch "+kindOf(obj), func() error { return c.Client.Patch(ctx, obj, patch, opts...) })
}

func (c *faultyClient) Apply(ctx context.Context, obj runtime.ApplyConfiguration, opts ...client.ApplyOption) error {
	return c.f.around(fmt.Sprintf("apply %T", obj), func() error { return c.Client.Apply(ctx, obj, opts...) })
}

func (c *faultyClient) Delete(ctx context.Context, obj client.Object, opts ...client.DeleteOption) error {
	return c.f.around("delete "+kindOf(obj), func() error { return c.Client.Delete(ctx, obj, opts...) })
}

func (c *faultyClient) Status() client.SubResourceWriter {
	return &faultyStatus{SubResourceWriter: c.Client.Status(), f: c.f}
}

func (c *faultyClient) SubResource(name string) client.SubResourceClient {
	sub := c.Client.SubResource(name)
	return &faultySubResource{SubResourceClient: sub, status: faultyStatus{SubResourceWriter: sub, f: c.f, name: name}}
}

type faultyStatus struct {
	client.SubResourceWriter
	f    writeHook
	name string // of the subresource; "" for status
}

func (s *faultyStatus) what(verb string, obj client.Object) string {
	return fmt.Sprintf("%s %s %s", cmp.Or(s.name, "status"), verb, kindOf(obj))
}

type faultySubResource struct {
	client.SubResourceClient
	status faultyStatus
}

func (s *faultySubResource) Create(ctx context.Context, obj, sub client.Object, opts ...client.SubResourceCreateOption) error {
	return s.status.f.around(s.status.what("create", obj), func() error { return s.SubResourceClient.Create(ctx, obj, sub, opts...) })
}

func (s *faultySubResource) Update(ctx context.Context, obj client.Object, opts ...client.SubResourceUpdateOption) error {
	return s.status.Update(ctx, obj, opts...)
}

func (s *faultySubResource) Patch(ctx context.Context, obj client.Object, patch client.Patch, opts ...client.SubResourcePatchOption) error {
	return s.status.Patch(ctx, obj, patch, opts...)
}

func (s *faultyStatus) Update(ctx context.Context, obj client.Object, opts ...client.SubResourceUpdateOption) error {
	return s.f.around(s.what("update", obj), func() error { return s.SubResourceWriter.Update(ctx, obj, opts...) })
}

func (s *faultyStatus) Patch(ctx context.Context, obj client.Object, patch client.Patch, opts ...client.SubResourcePatchOption) error {
	return s.f.around(s.what("patch", obj), func() error { return s.SubResourceWriter.Patch(ctx, obj, patch, opts...) })
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
			for _, kind := range faultKinds {
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

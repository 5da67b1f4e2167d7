package e2e

import (
	"context"
	"crypto/x509"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/e2e/fixture"
	"github.com/mtls-rotator/mtls-rotator/internal/pki"
	"github.com/mtls-rotator/mtls-rotator/internal/pki/pkitest"
	"github.com/mtls-rotator/mtls-rotator/internal/restart"
)

// availabilityOracle checks, at every moment it observes, that every pair of
// running Dapr pods would complete an mTLS handshake, and that every Dapr pod
// accepts every running sentry: each peer's workload certificate (signed by
// the issuer the sentry pod serving it had loaded) must verify, with Go's x509
// verification, under the trust anchors the other peer was injected with.
type availabilityOracle struct {
	t        *testing.T
	mu       sync.Mutex
	moments  int
	mixed    int // moments with pods on more than one issuer
	failures map[string]bool
	leaves   map[string][]*x509.Certificate // by pod UID and issuer hash
	cancel   context.CancelFunc
	done     chan struct{}
}

func startOracle(t *testing.T) *availabilityOracle {
	ctx, cancel := context.WithCancel(t.Context())
	o := &availabilityOracle{t: t, failures: map[string]bool{}, leaves: map[string][]*x509.Certificate{}, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(o.done)
		for ctx.Err() == nil {
			if err := o.observe(ctx); err != nil && ctx.Err() == nil {
				o.fail("observing: %v", err)
			}
			time.Sleep(25 * time.Millisecond)
		}
	}()
	return o
}

func (o *availabilityOracle) stop() {
	o.cancel()
	<-o.done
}

func (o *availabilityOracle) fail(format string, args ...any) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.failures[fmt.Sprintf(format, args...)] = true
}

// peer is one party of the mesh at one moment.
type peer struct {
	name    string
	anchors []*x509.Certificate
	chains  [][]*x509.Certificate // one per sentry that may have issued its certificate
	issuers []string
}

// chainFor returns a workload certificate for a pod signed by an issuer,
// minted once and reused, as a sidecar keeps its certificate.
func (o *availabilityOracle) chainFor(uid types.UID, spiffe, issuerHash string) ([]*x509.Certificate, error) {
	key := string(uid) + "/" + issuerHash
	o.mu.Lock()
	chain, ok := o.leaves[key]
	o.mu.Unlock()
	if ok {
		return chain, nil
	}
	m, ok := testInjector.Issuer(issuerHash)
	if !ok {
		return nil, fmt.Errorf("unknown issuer %s", issuerHash)
	}
	issuerChain, err := pki.ParseCertificates(m.Chain)
	if err != nil {
		return nil, fmt.Errorf("issuer %s: %w", issuerHash, err)
	}
	signer, err := pki.ParsePrivateKey(m.Key)
	if err != nil {
		return nil, fmt.Errorf("issuer %s key: %w", issuerHash, err)
	}
	leaf := pkitest.NewWorkload(o.t, &pkitest.CA{Cert: issuerChain[0], Key: signer}, spiffe, 24*time.Hour)
	chain = append([]*x509.Certificate{leaf.Cert}, issuerChain...)
	o.mu.Lock()
	o.leaves[key] = chain
	o.mu.Unlock()
	return chain, nil
}

func running(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning }

func (o *availabilityOracle) observe(ctx context.Context) error {
	pods := &corev1.PodList{}
	if err := k8sClient.List(ctx, pods); err != nil {
		return err
	}
	var sidecars, sentries []peer
	issuersSeen := map[string]bool{}
	for i := range pods.Items {
		p := &pods.Items[i]
		if !running(p) {
			continue
		}
		switch {
		case p.Namespace == fixture.ControlPlaneNamespace && p.Labels["app"] == fixture.Sentry:
			hash := p.Annotations[fixture.IssuerAnnotation]
			m, ok := testInjector.Issuer(hash)
			if !ok || len(m.Anchors) == 0 {
				continue // a sentry started on an empty bundle has nothing to serve
			}
			anchors, err := pki.ParseCertificates(m.Anchors)
			if err != nil {
				return err
			}
			chain, err := o.chainFor(p.UID, "spiffe://cluster.local/ns/dapr-system/dapr-sentry", hash)
			if err != nil {
				return err
			}
			sentries = append(sentries, peer{name: "sentry " + p.Name, anchors: anchors, chains: [][]*x509.Certificate{chain}, issuers: []string{hash}})
		case p.Annotations[fixture.SentryIssuersAnnotation] != "" || p.Annotations[fixture.EnabledAnnotation] == "true":
			anchorsPEM, _ := fixture.TrustAnchors(p)
			name := p.Namespace + "/" + p.Name
			if anchorsPEM == "" {
				o.fail("%s has no trust anchors", name)
				continue
			}
			anchors, err := pki.ParseCertificates([]byte(anchorsPEM))
			if err != nil {
				o.fail("%s has unparsable trust anchors: %v", name, err)
				continue
			}
			pr := peer{name: name, anchors: anchors}
			for _, hash := range strings.Split(p.Annotations[fixture.SentryIssuersAnnotation], ",") {
				if hash == "" {
					continue
				}
				chain, err := o.chainFor(p.UID, "spiffe://cluster.local/ns/"+p.Namespace+"/"+p.Labels["app"], hash)
				if err != nil {
					return err
				}
				pr.chains = append(pr.chains, chain)
				pr.issuers = append(pr.issuers, hash)
				issuersSeen[hash] = true
			}
			if len(pr.chains) == 0 {
				o.fail("%s started when no sentry was ready", name)
				continue
			}
			sidecars = append(sidecars, pr)
		}
	}
	now := time.Now()
	for _, a := range sidecars {
		for _, b := range sidecars {
			if a.name == b.name {
				continue
			}
			for i, chain := range b.chains {
				if err := pki.VerifyChain(chain, a.anchors, now); err != nil {
					o.fail("%s rejects %s (certificate from issuer %s): %v", a.name, b.name, b.issuers[i], err)
				}
			}
		}
		for _, s := range sentries {
			if err := pki.VerifyChain(s.chains[0], a.anchors, now); err != nil {
				o.fail("%s rejects %s: %v", a.name, s.name, err)
			}
		}
	}
	o.mu.Lock()
	o.moments++
	if len(issuersSeen) > 1 {
		o.mixed++
	}
	o.mu.Unlock()
	return nil
}

func (o *availabilityOracle) report() (moments, mixed int, failures []string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for f := range o.failures {
		failures = append(failures, f)
	}
	return o.moments, o.mixed, failures
}

// TestAvailabilityOracle proves that a same-key rotation keeps every handshake
// working at every observed moment, and that the oracle does catch a rotation
// that breaks them (a new root key published without a trust overlap).
func TestAvailabilityOracle(t *testing.T) {
	freshBundle(t)
	startOperator(t)
	key := newRotation(t, "oracle", rotatorv1.MTLSRootRotationSpec{
		Trigger: "first", Applications: rotatorv1.ApplicationsSpec{MaxConcurrent: 1},
	})
	waitRotationCompleted(t, key, "first") // every pod now holds real anchors

	t.Run("same-key rotation: zero failed handshakes", func(t *testing.T) {
		g := NewWithT(t)
		o := startOracle(t)
		obj := getRotation(t, key)
		obj.Spec.Trigger = "second"
		updateRotation(t, obj)
		waitRotationCompleted(t, key, "second")
		time.Sleep(200 * time.Millisecond)
		o.stop()
		moments, mixed, failures := o.report()
		t.Logf("oracle: %d moments observed, %d with pods on different issuers", moments, mixed)
		g.Expect(failures).To(BeEmpty())
		g.Expect(moments).To(BeNumerically(">=", 10))
		g.Expect(mixed).To(BeNumerically(">", 0), "the oracle must have seen the mesh mid-rotation")
	})

	t.Run("new root key without overlap: caught", func(t *testing.T) {
		g := NewWithT(t)
		o := startOracle(t)
		// What a careless manual rotation does: a new root and issuer, then restarts.
		root := pkitest.NewRoot(t, pkitest.Options{})
		issuer := pkitest.NewIssuer(t, root, pkitest.Options{})
		s, cm := readBundle(t)
		s.Data["ca.crt"], s.Data["issuer.crt"], s.Data["issuer.key"] = root.CertPEM(), issuer.CertPEM(), issuer.KeyPEM(t)
		cm.Data["ca.crt"] = string(root.CertPEM())
		g.Expect(k8sClient.Update(t.Context(), s)).To(Succeed())
		g.Expect(k8sClient.Update(t.Context(), cm)).To(Succeed())
		sentry := &appsv1.Deployment{}
		sentry.Namespace, sentry.Name = fixture.ControlPlaneNamespace, fixture.Sentry
		g.Expect(k8sClient.Patch(t.Context(), sentry, client.RawPatch(types.MergePatchType, restart.Patch("manual")))).To(Succeed())
		waitDeploymentRolledOut(t, fixture.ControlPlaneNamespace, fixture.Sentry)
		var app fixture.App
		for _, a := range fixtureOpts.AppList() {
			if a.Dapr {
				app = a
				break
			}
		}
		d := &appsv1.Deployment{}
		d.Namespace, d.Name = app.Namespace, app.Name
		g.Expect(k8sClient.Patch(t.Context(), d, client.RawPatch(types.MergePatchType, restart.Patch("manual")))).To(Succeed())
		waitDeploymentRolledOut(t, app.Namespace, app.Name)
		time.Sleep(200 * time.Millisecond)
		o.stop()
		_, _, failures := o.report()
		t.Logf("oracle caught %d distinct failures, for example: %s", len(failures), first(failures))
		g.Expect(failures).NotTo(BeEmpty())
		g.Expect(strings.Join(failures, "\n")).To(ContainSubstring("rejects " + app.Namespace + "/" + app.Name))
	})
}

func first(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}

package convergence

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/mtls-rotator/mtls-rotator/internal/pki"
	"github.com/mtls-rotator/mtls-rotator/internal/pki/pkitest"
)

// daprPod is a pod as Dapr's injector leaves it: an app container, and a
// daprd container whose env holds anchors, owned by owner when it is set.
func daprPod(name string, anchors []byte, owner string) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "team", UID: "uid-" + "name", Labels: map[string]string{InjectedLabel: "true"},
		Annotations: map[string]string{"dapr.io/enabled": "true", "kubectl.kubernetes.io/last-applied-configuration": string(make([]byte, 1024))}}}
	p.Spec.Containers = []corev1.Container{
		{Name: "app", Image: "app:1", Env: []corev1.EnvVar{{Name: "A", Value: "b"}}},
		{Name: SidecarContainer, Image: "daprd:1.18", Env: []corev1.EnvVar{{Name: "APP_ID", Value: name}, {Name: TrustAnchorsEnv, Value: string(anchors)},
			{Name: ControlPlaneEnv, Value: "dapr-system"}}},
	}
	if owner != "" {
		p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: owner, Controller: ptr.To(true)},
			{APIVersion: "v1", Kind: "ConfigMap", Name: "not-a-controller"}}
	}
	p.Status.Phase = corev1.PodRunning
	p.Status.StartTime = &metav1.Time{Time: time.Date(2026, 11, 29, 0, 0, 0, 0, time.UTC)}
	return p
}

func TestAnchors(t *testing.T) {
	old, fresh := pkitest.NewRoot(t, pkitest.Options{}), pkitest.NewRoot(t, pkitest.Options{})
	both := append(old.CertPEM(), fresh.CertPEM()...)
	tests := []struct {
		name    string
		pod     func() *corev1.Pod
		want    []string
		problem string
	}{
		{"one root", func() *corev1.Pod { return daprPod("a", old.CertPEM(), "") }, []string{pki.Fingerprint(old.Cert)}, ""},
		{"an overlap, in order", func() *corev1.Pod { return daprPod("a", both, "") }, []string{pki.Fingerprint(old.Cert), pki.Fingerprint(fresh.Cert)}, ""},
		{"no daprd container", func() *corev1.Pod { p := daprPod("a", both, ""); p.Spec.Containers = p.Spec.Containers[:1]; return p }, nil,
			"no daprd container"},
		{"no anchors in its env", func() *corev1.Pod { p := daprPod("a", both, ""); p.Spec.Containers[1].Env = nil; return p }, nil,
			"its daprd container has no DAPR_TRUST_ANCHORS"},
		{"anchors from a reference", func() *corev1.Pod {
			p := daprPod("a", both, "")
			p.Spec.Containers[1].Env[1] = corev1.EnvVar{Name: TrustAnchorsEnv, ValueFrom: &corev1.EnvVarSource{}}
			return p
		}, nil, "DAPR_TRUST_ANCHORS is not a literal value"},
		{"anchors that do not parse", func() *corev1.Pod { return daprPod("a", []byte("-----BEGIN CERTIFICATE-----\nnope"), "") }, nil,
			"DAPR_TRUST_ANCHORS cannot be parsed"},
		{"empty anchors", func() *corev1.Pod { return daprPod("a", nil, "") }, nil, "DAPR_TRUST_ANCHORS cannot be parsed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			got, problem := Anchors(tt.pod())
			g.Expect(got).To(Equal(tt.want))
			if tt.problem == "" {
				g.Expect(problem).To(BeEmpty())
			} else {
				g.Expect(problem).To(HavePrefix(tt.problem))
			}
			// A trimmed pod answers the same, without its containers.
			trimmed := Trim(tt.pod())
			g.Expect(trimmed.Spec.Containers).To(BeEmpty())
			got2, problem2 := Anchors(trimmed)
			g.Expect(got2).To(Equal(tt.want))
			g.Expect(problem2).To(Equal(problem))
		})
	}
}

func TestTrimKeepsWhatConvergenceNeedsAndNoPEM(t *testing.T) {
	g := NewWithT(t)
	root := pkitest.NewRoot(t, pkitest.Options{})
	full := daprPod("a", root.CertPEM(), "app-7d4")
	trimmed := Trim(full)
	want, _ := Observe(full)
	got, live := Observe(trimmed)
	g.Expect(live).To(BeTrue())
	g.Expect(got).To(Equal(want))
	g.Expect(got.Owner).To(Equal("ReplicaSet app-7d4"), "the controller, not any owner")
	g.Expect(got.ControlPlane).To(Equal("dapr-system"))
	g.Expect(got.TrustEnds).To(Equal(root.Cert.NotAfter.UTC()), "when its one root expires")
	g.Expect(trimmed.OwnerReferences).To(HaveLen(1))
	g.Expect(trimmed.Labels).To(Equal(full.Labels), "label selectors still match")
	g.Expect(trimmed.Status.StartTime).To(Equal(full.Status.StartTime))
	g.Expect(fmt.Sprintf("%+v", trimmed)).NotTo(ContainSubstring("BEGIN"), "no PEM is kept")
	// Pods holding the same anchors share one string.
	other := Trim(daprPod("b", root.CertPEM(), "app-7d4"))
	a, b := trimmed.Annotations[AnchorsAnnotation], other.Annotations[AnchorsAnnotation]
	g.Expect(a).To(Equal(b))
	g.Expect(&[]byte(a)[0]).NotTo(BeNil())
}

// TestTrimIsIdempotent: the informer may transform a pod twice (the initial
// list streamed by the API server); the second trim changes nothing.
func TestTrimIsIdempotent(t *testing.T) {
	g := NewWithT(t)
	root := pkitest.NewRoot(t, pkitest.Options{})
	for _, full := range []*corev1.Pod{daprPod("a", root.CertPEM(), "app-7d4"), daprPod("b", []byte("not PEM"), "app-7d4")} {
		once := Trim(full)
		twice := Trim(once.DeepCopy())
		g.Expect(twice).To(Equal(once), full.Name)
		want, _ := Observe(full)
		got, _ := Observe(twice)
		g.Expect(got).To(Equal(want), full.Name)
	}
}

func TestObserveSkipsPodsThatDoNotRunAnyMore(t *testing.T) {
	g := NewWithT(t)
	root := pkitest.NewRoot(t, pkitest.Options{})
	for _, f := range []func(*corev1.Pod){
		func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded },
		func(p *corev1.Pod) { p.Status.Phase = corev1.PodFailed },
	} {
		p := daprPod("a", root.CertPEM(), "")
		f(p)
		_, live := Observe(p)
		g.Expect(live).To(BeFalse())
	}
	p := daprPod("a", root.CertPEM(), "")
	p.Status.Phase = corev1.PodPending
	o, live := Observe(p)
	g.Expect(live).To(BeTrue(), "a pending pod starts with the anchors it holds")
	g.Expect(o.Owner).To(BeEmpty(), "a bare pod has no owner")

	p = daprPod("a", root.CertPEM(), "")
	p.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	o, live = Observe(Trim(p))
	g.Expect(live).To(BeTrue(), "a terminating pod's sidecar serves until it exits")
	g.Expect(o.Terminating).To(BeTrue())
	g.Expect(Unmet(o, Requirement{Roots: []string{"AA:BB"}})).To(Equal("it is terminating, and does not trust root AA:BB"))
}

func TestSummarize(t *testing.T) {
	g := NewWithT(t)
	oldFP, newFP := "AA:11", "BB:22"
	pods := []Pod{
		{Namespace: "b", Name: "p1", Owner: "ReplicaSet x", Anchors: []string{oldFP, newFP}},
		{Namespace: "b", Name: "p2", Owner: "ReplicaSet x", Anchors: []string{oldFP, newFP}},
		{Namespace: "a", Name: "p3", Owner: "ReplicaSet y", Anchors: []string{newFP}},
		{Namespace: "b", Name: "p0", Anchors: []string{oldFP}},
		{Namespace: "a", Name: "p4", Owner: "Job j", Problem: "no daprd container"},
	}
	r := Summarize(pods, Requirement{Roots: []string{newFP}}, 5)
	g.Expect(r.Total).To(Equal(5))
	g.Expect(r.Converged).To(Equal(3))
	g.Expect(r.Progress()).To(Equal("3/5"))
	g.Expect(r.Sets).To(Equal([]Set{{Anchors: []string{oldFP, newFP}, Pods: 2}, {Anchors: nil, Pods: 1}, {Anchors: []string{oldFP}, Pods: 1}, {Anchors: []string{newFP}, Pods: 1}}))
	g.Expect(r.Stragglers).To(Equal([]Straggler{
		{Pod: pods[4], Reason: "its trust anchors cannot be read: no daprd container"},
		{Pod: pods[3], Reason: "it does not trust root BB:22"},
	}), "by namespace and name, each with its reason")
	g.Expect(Summarize(pods, Requirement{Roots: []string{newFP}}, 1).Stragglers).To(HaveLen(1))
	g.Expect(Summarize(nil, Requirement{Roots: []string{newFP}}, 5)).To(Equal(Report{}))
	g.Expect(Summarize(pods, Requirement{Roots: []string{oldFP, newFP}}, 5).Converged).To(Equal(2), "every required root")

	// Started after a moment: a pod that started before it is named, with why.
	switched := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	timed := []Pod{{Namespace: "a", Name: "new", Anchors: []string{newFP}, Started: switched.Add(time.Second)},
		{Namespace: "a", Name: "old", Anchors: []string{newFP}, Started: switched.Add(-time.Second)}}
	r = Summarize(timed, Requirement{Roots: []string{newFP}, StartedAfter: switched, Why: "before the new issuer"}, 5)
	g.Expect(r.Converged).To(Equal(1))
	g.Expect(r.Stragglers).To(HaveLen(1))
	g.Expect(r.Stragglers[0].Reason).To(Equal("it started at 2026-11-29T11:59:59Z, before the new issuer"))
}

// BenchmarkPodCacheMemory measures what 10,000 Dapr sidecar pods cost in the
// cache, trimmed as the operator caches them and untrimmed.
func BenchmarkPodCacheMemory(b *testing.B) {
	const n = 10000
	root := pkitest.NewRoot(b, pkitest.Options{})
	anchors := append(root.CertPEM(), pkitest.NewRoot(b, pkitest.Options{}).CertPEM()...)
	for _, mode := range []string{"full", "trimmed"} {
		b.Run(mode, func(b *testing.B) {
			var perPod float64
			for b.Loop() {
				pods := make([]*corev1.Pod, n)
				runtime.GC()
				var before, after runtime.MemStats
				runtime.ReadMemStats(&before)
				for i := range pods {
					// As a decoded list holds it: each pod its own copy of the PEM.
					p := daprPod(fmt.Sprintf("app-%05d", i), []byte(string(anchors)), fmt.Sprintf("app-%05d-7d4", i))
					if mode == "trimmed" {
						p = Trim(p)
					}
					pods[i] = p
				}
				runtime.GC()
				runtime.ReadMemStats(&after)
				perPod = float64(after.HeapAlloc-before.HeapAlloc) / n
				runtime.KeepAlive(pods)
			}
			b.ReportMetric(perPod, "B/pod")
			b.ReportMetric(perPod*n/(1<<20), "MiB/10k")
		})
	}
}

// BenchmarkSummarize50000 is convergence over 50,000 pods in three trust sets.
func BenchmarkSummarize50000(b *testing.B) {
	sets := [][]string{{"AA"}, {"AA", "BB"}, {"BB"}}
	pods := make([]Pod, 50000)
	for i := range pods {
		pods[i] = Pod{Namespace: fmt.Sprintf("ns-%03d", i%300), Name: fmt.Sprintf("p-%05d", i), Anchors: sets[i%3]}
	}
	b.ReportAllocs()
	for b.Loop() {
		Summarize(pods, Requirement{Roots: []string{"BB"}}, 5)
	}
}

func TestUnmetExactly(t *testing.T) {
	g := NewWithT(t)
	exact := Requirement{Roots: []string{"BB"}, Exactly: true}
	g.Expect(Unmet(Pod{Anchors: []string{"BB"}}, exact)).To(BeEmpty())
	g.Expect(Unmet(Pod{Anchors: []string{"AA", "BB"}}, exact)).To(Equal("it also trusts root AA"))
	g.Expect(Unmet(Pod{Anchors: []string{"AA", "BB"}}, Requirement{Roots: []string{"BB"}})).To(BeEmpty())
}

// TestWorkloadIsTheOwnerARestartReaches: a pod names the workload whose
// restart recreates it: a Deployment only when its pod-template-hash ends
// the ReplicaSet's name, never from the name alone; trimmed the same.
func TestWorkloadIsTheOwnerARestartReaches(t *testing.T) {
	root := pkitest.NewRoot(t, pkitest.Options{})
	owned := func(kind, name string, labels map[string]string) *corev1.Pod {
		p := daprPod("p", root.CertPEM(), "")
		p.OwnerReferences = []metav1.OwnerReference{{Kind: kind, Name: name, Controller: ptr.To(true)}}
		for k, v := range labels {
			p.Labels[k] = v
		}
		return p
	}
	for _, tt := range []struct {
		name string
		pod  *corev1.Pod
		want string
	}{
		{"a Deployment's ReplicaSet", owned("ReplicaSet", "web-5d4f9", map[string]string{PodTemplateHashLabel: "5d4f9"}), "Deployment team/web"},
		{"a dashed Deployment name", owned("ReplicaSet", "my-web-app-5d4f9", map[string]string{PodTemplateHashLabel: "5d4f9"}), "Deployment team/my-web-app"},
		{"a ReplicaSet of its own with a dashed name", owned("ReplicaSet", "mixed-rs", nil), ""},
		{"a hash that does not end the name", owned("ReplicaSet", "web-5d4f9", map[string]string{PodTemplateHashLabel: "77aa1"}), ""},
		{"an Argo Rollout's ReplicaSet", owned("ReplicaSet", "web-6c7b8", map[string]string{RolloutsPodTemplateHashLabel: "6c7b8"}), "Rollout team/web"},
		{"a StatefulSet", owned("StatefulSet", "db", nil), "StatefulSet team/db"},
		{"a DaemonSet", owned("DaemonSet", "agent", nil), "DaemonSet team/agent"},
		{"a Job", owned("Job", "migrate", nil), ""},
		{"an owner kind nobody knows", owned("Widget", "w-1", map[string]string{PodTemplateHashLabel: "1"}), ""},
		{"a bare pod", daprPod("p", root.CertPEM(), ""), ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			o, live := Observe(tt.pod)
			g.Expect(live).To(BeTrue())
			g.Expect(o.Workload).To(Equal(tt.want))
			trimmed, _ := Observe(Trim(tt.pod))
			g.Expect(trimmed.Workload).To(Equal(tt.want), "trimmed")
		})
	}
}

// TestSummarizeNamesTheFirstStragglersInAnyOrder: the few stragglers named
// are the first by namespace and name, whatever order the pods come in,
// the same as the head of the full list.
func TestSummarizeNamesTheFirstStragglersInAnyOrder(t *testing.T) {
	g := NewWithT(t)
	var pods []Pod
	for i := range 40 {
		anchors := []string{"AA"}
		if i%3 == 0 {
			anchors = []string{"BB"}
		}
		pods = append(pods, Pod{Namespace: fmt.Sprintf("ns-%d", i%4), Name: fmt.Sprintf("p-%02d", i), Anchors: anchors})
	}
	req := Requirement{Roots: []string{"BB"}}
	all := Summarize(pods, req, len(pods)).Stragglers
	g.Expect(all).To(HaveLen(26))
	g.Expect(slices.IsSortedFunc(all, compareStragglers)).To(BeTrue())
	for seed := range uint64(20) {
		shuffled := slices.Clone(pods)
		rand.New(rand.NewPCG(seed, 1)).Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		r := Summarize(shuffled, req, 5)
		g.Expect(r.Stragglers).To(Equal(all[:5]), "seed %d", seed)
		g.Expect(r.Converged).To(Equal(14))
	}
}

// TestCutOffBefore: the pods whose anchors all expire before the newest
// root published (they hold only an older certificate of it, or an older
// root) are the ones cut off first; those that hold the newest are not.
func TestCutOffBefore(t *testing.T) {
	g := NewWithT(t)
	now := time.Now()
	old := pkitest.NewRoot(t, pkitest.Options{NotBefore: now.Add(-time.Hour), Validity: 24 * time.Hour})
	renewed := pkitest.RenewRoot(t, old, pkitest.Options{NotBefore: now, Validity: 48 * time.Hour})
	older := pkitest.NewRoot(t, pkitest.Options{NotBefore: now.Add(-2 * time.Hour), Validity: 12 * time.Hour})
	observe := func(name string, anchors ...*pkitest.CA) Pod {
		var pem []byte
		for _, a := range anchors {
			pem = append(pem, a.CertPEM()...)
		}
		p, _ := Observe(Trim(daprPod(name, pem, "")))
		return p
	}
	pods := []Pod{observe("converged", renewed), observe("both", old, renewed), observe("bare", old), observe("job", older),
		observe("unreadable", nil...)}
	c := CutOffBefore(pods, renewed.Cert.NotAfter, 5)
	g.Expect(c.Pods).To(Equal(2))
	g.Expect(c.At).To(Equal(older.Cert.NotAfter.UTC().Truncate(time.Second)), "the first to lose every root")
	g.Expect([]string{c.First[0].Name, c.First[1].Name}).To(Equal([]string{"job", "bare"}), "soonest first")
	g.Expect(CutOffBefore(pods, renewed.Cert.NotAfter, 1).First).To(HaveLen(1))
	g.Expect(CutOffBefore(pods[:2], renewed.Cert.NotAfter, 5).Pods).To(BeZero(), "none when every pod holds the newest")
}

// TestStartedInTheSameSecondIsNotAfter: start times are kept to the second,
// so a pod that started in the second a requirement's moment falls in is
// not known to have started after it: it does not meet the requirement (a
// fast cluster restarts pods within the second a phase's control plane
// finished restarting).
func TestStartedInTheSameSecondIsNotAfter(t *testing.T) {
	g := NewWithT(t)
	at := time.Date(2026, 12, 6, 8, 41, 27, 600_000_000, time.UTC)
	req := Requirement{Roots: []string{"a"}, StartedAfter: at, Why: "before the new issuer"}
	pod := func(started time.Time) Pod { return Pod{Name: "p", Anchors: []string{"a"}, Started: started} }
	g.Expect(Unmet(pod(at.Truncate(time.Second)), req)).To(ContainSubstring("started at 2026-12-06T08:41:27Z"), "stored to the second, as the API keeps it")
	g.Expect(Unmet(pod(at.Add(100*time.Millisecond)), req)).NotTo(BeEmpty(), "the same second")
	g.Expect(Unmet(pod(at.Add(-time.Second)), req)).NotTo(BeEmpty())
	g.Expect(Unmet(pod(at.Truncate(time.Second).Add(time.Second)), req)).To(BeEmpty(), "the next second is after")
}

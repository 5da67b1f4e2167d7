// Package convergence says which trust anchors the Dapr sidecar pods that
// actually run hold, and which of them do not yet hold what a rotation needs.
// Dapr's injector labels every pod it patches and hands the sidecar its trust
// anchors once, in the daprd container's DAPR_TRUST_ANCHORS environment
// variable; daprd never reloads them. So the anchors a pod trusts can be read
// from the pod object itself. It makes no API calls, and keeps no PEM: a pod
// is reduced to the SHA-256 fingerprints of the roots it holds.
package convergence

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mtls-rotator/mtls-rotator/internal/pki"
)

const (
	// InjectedLabel is set by Dapr's injector on every pod it patches.
	InjectedLabel = "dapr.io/sidecar-injected"
	// SidecarContainer is the container Dapr's injector adds.
	SidecarContainer = "daprd"
	// TrustAnchorsEnv holds the trust anchors the injector handed the sidecar.
	TrustAnchorsEnv = "DAPR_TRUST_ANCHORS"
	// ControlPlaneEnv names the namespace of the control plane the sidecar
	// belongs to.
	ControlPlaneEnv = "DAPR_CONTROLPLANE_NAMESPACE"
	// AnchorsAnnotation carries, on the operator's cached copy of a pod only
	// (never written to the cluster), the fingerprints Anchors read, joined
	// by commas; ProblemAnnotation why they could not be read.
	AnchorsAnnotation      = "mtls.rotator.dev/observed-anchors"
	ProblemAnnotation      = "mtls.rotator.dev/observed-anchors-problem"
	ControlPlaneAnnotation = "mtls.rotator.dev/observed-control-plane"
	// TrustEndsAnnotation carries, likewise, when the last of its anchors
	// expires (RFC 3339).
	TrustEndsAnnotation = "mtls.rotator.dev/observed-trust-ends"
)

// Anchors reads the trust anchors a pod's sidecar was given, as the
// SHA-256 fingerprints of its roots in the order given, or says why they
// cannot be read. A pod reduced by Trim answers from its annotations.
func Anchors(pod *corev1.Pod) (fingerprints []string, problem string) {
	fingerprints, _, problem = readAnchors(pod)
	return fingerprints, problem
}

// readAnchors is Anchors, and when the last of the anchors expires: from
// then on the sidecar verifies no peer.
func readAnchors(pod *corev1.Pod) (fingerprints []string, trustEnds time.Time, problem string) {
	if v, ok := pod.Annotations[AnchorsAnnotation]; ok {
		trustEnds, _ = time.Parse(time.RFC3339, pod.Annotations[TrustEndsAnnotation])
		return strings.Split(v, ","), trustEnds, ""
	}
	if p, ok := pod.Annotations[ProblemAnnotation]; ok {
		return nil, time.Time{}, p
	}
	i := slices.IndexFunc(pod.Spec.Containers, func(c corev1.Container) bool { return c.Name == SidecarContainer })
	if i < 0 {
		return nil, time.Time{}, fmt.Sprintf("no %s container", SidecarContainer)
	}
	env := pod.Spec.Containers[i].Env
	j := slices.IndexFunc(env, func(e corev1.EnvVar) bool { return e.Name == TrustAnchorsEnv })
	switch {
	case j < 0:
		return nil, time.Time{}, fmt.Sprintf("its %s container has no %s", SidecarContainer, TrustAnchorsEnv)
	case env[j].ValueFrom != nil:
		return nil, time.Time{}, fmt.Sprintf("%s is not a literal value", TrustAnchorsEnv)
	}
	certs, err := pki.ParseCertificates([]byte(env[j].Value))
	if err != nil {
		return nil, time.Time{}, fmt.Sprintf("%s cannot be parsed: %v", TrustAnchorsEnv, err)
	}
	for _, c := range certs {
		fingerprints = append(fingerprints, pki.Fingerprint(c))
		if c.NotAfter.After(trustEnds) {
			trustEnds = c.NotAfter
		}
	}
	return fingerprints, trustEnds.UTC().Truncate(time.Second), ""
}

// The labels a Deployment and an Argo Rollout put on the pods of their
// ReplicaSets; such a ReplicaSet is named <owner>-<hash>.
const (
	PodTemplateHashLabel         = "pod-template-hash"
	RolloutsPodTemplateHashLabel = "rollouts-pod-template-hash"
)

// replicaSetOwner names the Deployment or Argo Rollout whose ReplicaSet
// (owner) runs pod: the pod's template hash ends the ReplicaSet's name. A
// ReplicaSet of its own has none.
func replicaSetOwner(pod *corev1.Pod, owner metav1.OwnerReference) (kind, name string) {
	if owner.Kind != "ReplicaSet" {
		return "", ""
	}
	for kind, label := range map[string]string{"Deployment": PodTemplateHashLabel, "Rollout": RolloutsPodTemplateHashLabel} {
		if h := pod.Labels[label]; h != "" && strings.HasSuffix(owner.Name, "-"+h) {
			return kind, strings.TrimSuffix(owner.Name, "-"+h)
		}
	}
	if i := strings.LastIndex(owner.Name, "-"); pod.Labels[replicaSetOwnerLabel] != "" && i > 0 {
		return pod.Labels[replicaSetOwnerLabel], owner.Name[:i] // trimmed
	}
	return "", ""
}

// workloadOf names, as "Kind namespace/name", the workload whose restart
// recreates pod: its Deployment, StatefulSet, DaemonSet or Argo Rollout; ""
// for any other owner, or none.
func workloadOf(pod *corev1.Pod, owner metav1.OwnerReference) string {
	switch owner.Kind {
	case "StatefulSet", "DaemonSet":
		return fmt.Sprintf("%s %s/%s", owner.Kind, pod.Namespace, owner.Name)
	}
	if kind, name := replicaSetOwner(pod, owner); kind != "" {
		return fmt.Sprintf("%s %s/%s", kind, pod.Namespace, name)
	}
	return ""
}

// sidecarEnv is the literal value of the environment variable name in a
// pod's sidecar; false when there is none.
func sidecarEnv(pod *corev1.Pod, name string) (string, bool) {
	for _, c := range pod.Spec.Containers {
		if c.Name != SidecarContainer {
			continue
		}
		for _, e := range c.Env {
			if e.Name == name && e.ValueFrom == nil {
				return e.Value, true
			}
		}
	}
	return "", false
}

// Pod is what convergence knows of one Dapr sidecar pod.
type Pod struct {
	Namespace, Name string
	// ControlPlane is the namespace of the Dapr control plane the sidecar
	// belongs to; "" when the pod does not say.
	ControlPlane string
	// Owner is the pod's controller as "Kind name", or "" for a bare pod.
	Owner string
	// Workload is the workload a rotation restarts the pod through, as
	// "Kind namespace/name" (a Deployment, StatefulSet, DaemonSet or Argo
	// Rollout); "" when none does (a bare pod, a Job's, a ReplicaSet of its
	// own).
	Workload string
	// Started is when the pod started (when it was created, before it starts).
	Started time.Time
	// Terminating: the pod is being deleted, and still runs until it exits.
	Terminating bool
	// Anchors are the fingerprints of the roots it trusts; Problem, when
	// they cannot be read, says why.
	Anchors []string
	Problem string
	// TrustEnds is when the last of its anchors expires: its sidecar
	// rejects every peer from then on. Zero when the anchors cannot be read.
	TrustEnds time.Time
}

// Observe reads what convergence needs of a live pod: false for a pod that
// does not run any more (succeeded or failed). A terminating pod is live:
// its sidecar serves until it exits, up to its grace period.
func Observe(pod *corev1.Pod) (Pod, bool) {
	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return Pod{}, false
	}
	o := Pod{Namespace: pod.Namespace, Name: pod.Name, ControlPlane: pod.Annotations[ControlPlaneAnnotation], Started: pod.CreationTimestamp.Time,
		Terminating: pod.DeletionTimestamp != nil}
	if pod.Status.StartTime != nil {
		o.Started = pod.Status.StartTime.Time
	}
	if v, ok := sidecarEnv(pod, ControlPlaneEnv); ok {
		o.ControlPlane = v
	}
	for _, ref := range pod.OwnerReferences {
		if ref.Controller != nil && *ref.Controller {
			o.Owner, o.Workload = ref.Kind+" "+ref.Name, workloadOf(pod, ref)
		}
	}
	o.Anchors, o.TrustEnds, o.Problem = readAnchors(pod)
	return o, true
}

// Set is one trust set the pods hold, and how many hold it.
type Set struct {
	Anchors []string
	Pods    int
}

// Straggler is a pod that does not hold what is required, and why.
type Straggler struct {
	Pod
	Reason string
}

// Report is the convergence of the live Dapr pods on the required roots.
type Report struct {
	// Total pods, and how many hold every required root.
	Total, Converged int
	// Sets are the distinct trust sets held, the most held first.
	Sets []Set
	// Stragglers are the first pods that do not converge, by namespace and name.
	Stragglers []Straggler
}

// Requirement is what a pod must satisfy to converge.
type Requirement struct {
	// Roots are the fingerprints of the roots it must trust.
	Roots []string
	// Exactly, when set, requires those roots and no other: the anchors a
	// phase published, not a set that merely includes them.
	Exactly bool
	// StartedAfter, when set, is when it must have started after: a pod
	// started before it (or in the same second) may still present a
	// certificate it got earlier.
	StartedAfter time.Time
	// Why says why StartedAfter matters, for the reason of a pod started before it.
	Why string
}

// Summarize reports how the pods meet the requirement. At most limit
// stragglers are named.
func Summarize(pods []Pod, required Requirement, limit int) Report {
	// Naming every straggler sorts them once; naming a few keeps only those.
	all := limit >= len(pods)
	r := Report{Total: len(pods)}
	sets := map[string]*Set{}
	var stragglers []Straggler
	for _, p := range pods {
		key := strings.Join(p.Anchors, ",")
		if sets[key] == nil {
			sets[key] = &Set{Anchors: p.Anchors}
		}
		sets[key].Pods++
		if reason := Unmet(p, required); reason != "" {
			if all {
				stragglers = append(stragglers, Straggler{Pod: p, Reason: reason})
			} else {
				stragglers = keepFirst(stragglers, Straggler{Pod: p, Reason: reason}, limit)
			}
			continue
		}
		r.Converged++
	}
	for _, s := range sets {
		r.Sets = append(r.Sets, *s)
	}
	slices.SortFunc(r.Sets, func(a, b Set) int {
		return cmp.Or(cmp.Compare(b.Pods, a.Pods), cmp.Compare(strings.Join(a.Anchors, ","), strings.Join(b.Anchors, ",")))
	})
	if all {
		slices.SortFunc(stragglers, compareStragglers)
	}
	r.Stragglers = stragglers
	return r
}

// keepFirst inserts s into first, sorted by namespace and name, keeping only
// the limit first: a report names a few stragglers, whatever their number,
// without holding them all.
func keepFirst(first []Straggler, s Straggler, limit int) []Straggler {
	i, _ := slices.BinarySearchFunc(first, s, compareStragglers)
	if i >= limit {
		return first
	}
	first = slices.Insert(first, i, s)
	return first[:min(len(first), limit)]
}

func compareStragglers(a, b Straggler) int {
	return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
}

// Unmet says why a pod does not meet the requirement, or "".
func Unmet(p Pod, required Requirement) string {
	reason := unmet(p, required)
	if reason != "" && p.Terminating {
		return "it is terminating, and " + strings.TrimPrefix(reason, "it ")
	}
	return reason
}

func unmet(p Pod, required Requirement) string {
	if p.Problem != "" {
		return "its trust anchors cannot be read: " + p.Problem
	}
	for _, want := range required.Roots {
		if !slices.Contains(p.Anchors, want) {
			return "it does not trust root " + Short(want)
		}
	}
	if required.Exactly {
		for _, held := range p.Anchors {
			if !slices.Contains(required.Roots, held) {
				return "it also trusts root " + Short(held)
			}
		}
	}
	if !required.StartedAfter.IsZero() && !startedAfter(p.Started, required.StartedAfter) {
		return fmt.Sprintf("it started at %s, %s", p.Started.UTC().Format(time.RFC3339), required.Why)
	}
	return ""
}

// startedAfter reports whether a pod that started at started surely did so
// after at. Kubernetes keeps a pod's start time, and the operator's status
// its own times, to the second: a pod that started in the second of at is
// not known to have started after it.
func startedAfter(started, at time.Time) bool {
	return started.Truncate(time.Second).After(at.Truncate(time.Second))
}

// Short is the first bytes of a fingerprint, for messages and status.
func Short(fingerprint string) string { return fingerprint[:min(len(fingerprint), 11)] }

// ShortAll shortens every fingerprint; never nil, so JSON shows [] for none.
func ShortAll(fingerprints []string) []string {
	out := make([]string, 0, len(fingerprints))
	for _, f := range fingerprints {
		out = append(out, Short(f))
	}
	return out
}

// Progress is the converged pods out of the total, as "998/1000".
func (r Report) Progress() string { return fmt.Sprintf("%d/%d", r.Converged, r.Total) }

// CutOff is what the anchors the pods hold leave them: the pods whose trust
// ends before the newest published root expires (they hold only older
// roots, which no rotation restarted them off), and when the first of them
// loses every root it trusts.
type CutOff struct {
	// At is when the first of them loses every root; zero when no pod does
	// before the newest root expires.
	At time.Time
	// Pods counts them; First are the first, soonest cut off first.
	Pods  int
	First []Pod
}

// CutOffBefore finds the pods whose trust ends before rootExpires, the
// expiry of the newest root published, naming the first limit of them.
func CutOffBefore(pods []Pod, rootExpires time.Time, limit int) CutOff {
	var c CutOff
	for _, p := range pods {
		if p.TrustEnds.IsZero() || !p.TrustEnds.Before(rootExpires) {
			continue
		}
		c.Pods++
		if c.At.IsZero() || p.TrustEnds.Before(c.At) {
			c.At = p.TrustEnds
		}
		c.First = append(c.First, p)
	}
	slices.SortFunc(c.First, func(a, b Pod) int {
		return cmp.Or(a.TrustEnds.Compare(b.TrustEnds), cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	c.First = c.First[:min(len(c.First), limit)]
	return c
}

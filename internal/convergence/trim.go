package convergence

import (
	"crypto/sha256"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// Trim reduces a Dapr sidecar pod to what convergence needs: identity, its
// controller, phase, start time, and the fingerprints of its anchors in an
// annotation. Pods holding the same anchors share one annotation map, and
// every trimmed pod the same label map: neither may be changed.
//
// A pod already trimmed is returned as it is. The informer's transform must
// be idempotent: when the API server streams the initial list (client-go's
// WatchList), the pods that exist when the operator starts are transformed
// twice, and a second trim would read anchors from a pod that has no
// containers any more: measured, every such pod looked as if it trusted no
// root, and a Switch gate waited on pods that trusted the new one.
func Trim(pod *corev1.Pod) *corev1.Pod {
	if trimmed(pod) {
		return pod
	}
	t := &corev1.Pod{TypeMeta: pod.TypeMeta}
	t.Name, t.Namespace, t.UID, t.ResourceVersion = pod.Name, pod.Namespace, pod.UID, pod.ResourceVersion
	t.CreationTimestamp, t.DeletionTimestamp = pod.CreationTimestamp, pod.DeletionTimestamp
	t.Labels, t.Annotations = injectedLabels, memo.annotations(pod)
	for _, ref := range pod.OwnerReferences {
		if ref.Controller != nil && *ref.Controller {
			t.OwnerReferences = append(t.OwnerReferences, ref)
			if kind, _ := replicaSetOwner(pod, ref); kind != "" {
				t.Labels = replicaSetOwnerMaps[kind]
			}
		}
	}
	t.Status.Phase, t.Status.StartTime = pod.Status.Phase, pod.Status.StartTime
	return t
}

// trimmed reports whether Trim made pod: it has no containers (the API
// server refuses a pod without one) and says what its anchors are, or why
// they cannot be read.
func trimmed(pod *corev1.Pod) bool {
	_, anchors := pod.Annotations[AnchorsAnnotation]
	_, problem := pod.Annotations[ProblemAnnotation]
	return len(pod.Spec.Containers) == 0 && (anchors || problem)
}

// injectedLabels are the labels of every trimmed pod: what the cache selects
// on. A pod of a ReplicaSet that a Deployment or an Argo Rollout owns, as
// its pod-template-hash label tells, keeps that owner's kind in
// replicaSetOwnerLabel instead, from one shared map per kind.
var (
	injectedLabels      = map[string]string{InjectedLabel: "true"}
	replicaSetOwnerMaps = map[string]map[string]string{
		"Deployment": {InjectedLabel: "true", replicaSetOwnerLabel: "Deployment"},
		"Rollout":    {InjectedLabel: "true", replicaSetOwnerLabel: "Rollout"},
	}
)

// replicaSetOwnerLabel names, on a trimmed pod, the kind of the workload
// owning its ReplicaSet.
const replicaSetOwnerLabel = "mtls.rotator.dev/replicaset-owner"

// memo holds, per distinct DAPR_TRUST_ANCHORS value (by its SHA-256: no PEM
// is kept), the annotations of a trimmed pod, so that the anchors of
// thousands of pods are parsed and stored once. It forgets everything past
// maxAnchorSets values, which a cluster only reaches if it keeps changing them.
var memo = &anchorMemo{byValue: map[[32]byte]map[string]string{}}

const maxAnchorSets = 64

type anchorMemo struct {
	mu      sync.Mutex
	byValue map[[32]byte]map[string]string
}

func (m *anchorMemo) annotations(pod *corev1.Pod) map[string]string {
	value, literal := sidecarEnv(pod, TrustAnchorsEnv)
	controlPlane, _ := sidecarEnv(pod, ControlPlaneEnv)
	if !literal {
		_, problem := Anchors(pod)
		return withControlPlane(map[string]string{ProblemAnnotation: problem}, controlPlane)
	}
	key := sha256.Sum256([]byte(controlPlane + "\x00" + value))
	m.mu.Lock()
	defer m.mu.Unlock()
	if a, ok := m.byValue[key]; ok {
		return a
	}
	a := map[string]string{}
	if fingerprints, trustEnds, problem := readAnchors(pod); problem != "" {
		a[ProblemAnnotation] = problem
	} else {
		a[AnchorsAnnotation] = strings.Join(fingerprints, ",")
		a[TrustEndsAnnotation] = trustEnds.Format(time.RFC3339)
	}
	withControlPlane(a, controlPlane)
	if len(m.byValue) >= maxAnchorSets {
		clear(m.byValue)
	}
	m.byValue[key] = a
	return a
}

func withControlPlane(a map[string]string, controlPlane string) map[string]string {
	if controlPlane != "" {
		a[ControlPlaneAnnotation] = controlPlane
	}
	return a
}

package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ConvergenceStatus is what the live Dapr sidecar pods (labelled
// dapr.io/sidecar-injected by Dapr's injector) trust: the roots in the
// DAPR_TRUST_ANCHORS their sidecar was given, which it never reloads. It is
// observed at every reconciliation.
type ConvergenceStatus struct {
	// Root is the fingerprint (first bytes) of the root every pod must trust:
	// the newest root published.
	Root string `json:"root"`
	// Pods is the number of live Dapr sidecar pods; Converged how many of
	// them trust Root.
	Pods      int32 `json:"pods"`
	Converged int32 `json:"converged"`
	// Progress is Converged/Pods, for kubectl.
	Progress string `json:"progress"`
	// TrustSets are the distinct sets of roots the pods hold, the most held first.
	// +listType=atomic
	// +optional
	TrustSets []TrustSetStatus `json:"trustSets,omitempty"`
	// NotConverged names the first pods that do not trust Root, by namespace
	// and name, with the reason.
	// +listType=atomic
	// +optional
	NotConverged []PodConvergence `json:"notConverged,omitempty"`
	// CutOff names the live pods whose every trusted root expires before
	// Root does, when there are any: pods no rotation restarted that hold
	// only an older root certificate (a bare pod, a Job's pod, one a
	// selector or applications.restart false left out). Their sidecars reject
	// every peer from CutOff.At on; recreating them gives them the published
	// anchors.
	// +optional
	CutOff *CutOffStatus `json:"cutOff,omitempty"`
	// LastChangeTime is when any of the above last changed.
	LastChangeTime metav1.Time `json:"lastChangeTime"`
}

// CutOffStatus says when the first pods lose every root they trust.
type CutOffStatus struct {
	// At is when the first of them loses the last root it trusts.
	At metav1.Time `json:"at"`
	// Pods counts the live pods whose trust ends before Root expires.
	Pods int32 `json:"pods"`
	// First names the first of them (namespace/name), soonest cut off first.
	// +listType=atomic
	// +optional
	First []string `json:"first,omitempty"`
}

// TrustSetStatus is one set of roots some pods hold.
type TrustSetStatus struct {
	// Roots are the fingerprints (first bytes) of the roots, in the order given.
	// +listType=atomic
	// +optional
	Roots []string `json:"roots,omitempty"`
	// Pods is how many live pods hold exactly these roots.
	Pods int32 `json:"pods"`
}

// PodConvergence is a pod that does not trust the required root.
type PodConvergence struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// Owner is the pod's controller as "Kind name"; empty for a bare pod.
	// +optional
	Owner string `json:"owner,omitempty"`
	// Roots are the fingerprints (first bytes) of the roots it trusts.
	// +listType=atomic
	// +optional
	Roots []string `json:"roots,omitempty"`
	// Reason says why it does not converge.
	Reason string `json:"reason"`
}

// Package eviction decides which Dapr pods a rotation evicts when
// spec.applications.evictUnmanagedPods is set, and carries the one RBAC
// grant that needs. The grant is generated (make manifests) into
// config/eviction, a ClusterRole of its own that an install adds only when it
// opts in (the kustomize component, or the chart's eviction.enabled): without
// it the operator cannot evict any pod.
package eviction

import "github.com/mtls-rotator/mtls-rotator/internal/convergence"

// Evicting goes through the eviction API, so that PodDisruptionBudgets hold.
// +kubebuilder:rbac:groups="",resources=pods/eviction,verbs=create

// Candidates are the pods to evict: those no workload restart reaches (a
// bare pod, a Job's, a ReplicaSet of its own), running, that do not meet req.
// A pod a restart reaches is never evicted: its restart recreates it.
func Candidates(pods []convergence.Pod, req convergence.Requirement) []convergence.Pod {
	var out []convergence.Pod
	for _, p := range pods {
		if p.Workload == "" && !p.Terminating && convergence.Unmet(p, req) != "" {
			out = append(out, p)
		}
	}
	return out
}

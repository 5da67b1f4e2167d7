package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The spec of what a rotation restarts: the control plane in order, then the
// Dapr applications in waves.

// WorkloadKind is a kind of workload the operator restarts.
// +kubebuilder:validation:Enum=Deployment;StatefulSet;DaemonSet
type WorkloadKind string

const (
	// Deployment is apps/v1 Deployment.
	Deployment WorkloadKind = "Deployment"
	// StatefulSet is apps/v1 StatefulSet.
	StatefulSet WorkloadKind = "StatefulSet"
	// DaemonSet is apps/v1 DaemonSet.
	DaemonSet WorkloadKind = "DaemonSet"
)

// ControlPlaneWorkload names one control-plane workload in this object's namespace.
type ControlPlaneWorkload struct {
	// Kind is Deployment, StatefulSet or DaemonSet.
	// +required
	Kind WorkloadKind `json:"kind"`
	// Name of the workload.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +required
	Name string `json:"name"`
	// Optional workloads that do not exist are skipped with an event (older
	// Dapr versions have no scheduler); a missing required one stops the rotation.
	// +optional
	Optional bool `json:"optional,omitempty"`
}

// ControlPlaneSpec lists the control-plane workloads in restart order.
type ControlPlaneSpec struct {
	// Workloads in restart order; each is restarted once its predecessor has
	// fully rolled out. Defaults to Dapr's: sentry, sidecar injector, operator,
	// placement, scheduler (optional).
	// +kubebuilder:default={{kind: Deployment, name: dapr-sentry}, {kind: Deployment, name: dapr-sidecar-injector}, {kind: Deployment, name: dapr-operator}, {kind: StatefulSet, name: dapr-placement-server}, {kind: StatefulSet, name: dapr-scheduler-server, optional: true}}
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:XValidation:rule="self.all(w, self.exists_one(x, x.kind == w.kind && x.name == w.name))",message="controlPlane.workloads must not list a workload twice"
	// +listType=atomic
	// +optional
	Workloads []ControlPlaneWorkload `json:"workloads,omitempty"`

	// RolloutTimeout bounds the wait for one workload's rollout; when it passes
	// the rotation stops as Stalled, naming the workload.
	// +kubebuilder:default="10m"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:XValidation:rule="duration(self) > duration('0s')",message="controlPlane.rolloutTimeout must be positive"
	// +optional
	RolloutTimeout *metav1.Duration `json:"rolloutTimeout,omitempty"`
}

// ApplicationsSpec selects the Dapr applications to restart.
// +kubebuilder:validation:XValidation:rule="!has(self.lazy) || !has(self.restart) || self.restart",message="applications.lazy defers restarts that applications.restart false turns off: set one of them"
type ApplicationsSpec struct {
	// Restart says whether applications are restarted at all. Sidecars read
	// their trust anchors only at pod start, so turning this off leaves them on
	// the old anchors until their pods are recreated some other way.
	// +kubebuilder:default=true
	// +optional
	Restart *bool `json:"restart,omitempty"`

	// NamespaceSelector selects the namespaces searched for applications; empty
	// selects every namespace.
	// +optional
	NamespaceSelector *LabelSelector `json:"namespaceSelector,omitempty"`

	// Selector narrows, by workload label, the Dapr applications restarted. An
	// application is a Deployment, StatefulSet or DaemonSet whose pod template is
	// annotated dapr.io/enabled: "true"; empty selects all of them.
	// +optional
	Selector *LabelSelector `json:"selector,omitempty"`

	// MaxConcurrent is the most applications restarting at once: a sliding
	// window, where a new restart starts as soon as one in flight has rolled
	// out.
	// +kubebuilder:default=5
	// +kubebuilder:validation:XValidation:rule="self >= 1",message="applications.maxConcurrent must be at least 1"
	// +kubebuilder:validation:Maximum=1000
	// +optional
	MaxConcurrent int32 `json:"maxConcurrent,omitempty"`

	// RolloutTimeout bounds each application's rollout, timed from its
	// restart; when it passes no further application is restarted and the
	// rotation is Stalled, naming those not rolled out; it resumes when they
	// recover.
	// +kubebuilder:default="10m"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:XValidation:rule="duration(self) > duration('0s')",message="applications.rolloutTimeout must be positive"
	// +optional
	RolloutTimeout *metav1.Duration `json:"rolloutTimeout,omitempty"`

	// EvictUnmanagedPods lets a rotation evict, through the eviction API
	// (PodDisruptionBudgets are honoured), the Dapr pods no workload restart
	// reaches (bare pods, Jobs' pods, pods of other owners) that hold a
	// new-key rotation's Switch or Prune gate, or that a same-key rotation
	// leaves on the root certificate it replaced once its applications are
	// restarted: their owner, if any, recreates them on the published
	// anchors. Off, such pods are named (the gate waits for someone to
	// delete them; status.convergence.cutOff names those a same-key rotation
	// left, and when they lose every peer).
	// +optional
	EvictUnmanagedPods bool `json:"evictUnmanagedPods,omitempty"`

	// Lazy does not restart the applications as soon as a rotation that keeps
	// the root key has published: the previous certificate of the same root
	// key keeps verifying the new issuer's certificates until it expires, so
	// the pods their owners redeploy converge by themselves. The applications
	// whose pods still hold the previous certificate are restarted from
	// restartBefore ahead of its expiry, or at once when a new rotation is
	// asked for. Only for keyPolicy Reuse without issuer.issuerRef.
	// +optional
	Lazy *LazyRestartSpec `json:"lazy,omitempty"`
}

// LazyRestartSpec defers the application restarts of a same-key rotation.
type LazyRestartSpec struct {
	// RestartBefore is how long before the previous root certificate expires
	// the applications that have not converged are restarted; it must leave
	// time for their waves to roll out.
	// +kubebuilder:default="168h"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:XValidation:rule="duration(self) > duration('0s')",message="applications.lazy.restartBefore must be positive"
	// +optional
	RestartBefore *metav1.Duration `json:"restartBefore,omitempty"`
}

package v1alpha1

import (
	"github.com/fluxcd/pkg/apis/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// MTLSRootRotationKind is the kind of MTLSRootRotation objects.
const MTLSRootRotationKind = "MTLSRootRotation"

// MTLSRootRotationSpec declares the trust material a Dapr control plane should
// have. The full rotation API (root, issuer, target, control plane and
// application settings) is designed with the same-key rotation feature.
type MTLSRootRotationSpec struct {
	// Trigger is an opaque string; changing it starts a new rotation, so that one
	// Git commit is one rotation.
	// +kubebuilder:validation:MaxLength=253
	// +optional
	Trigger string `json:"trigger,omitempty"`

	// Suspend tells the operator to leave this rotation alone: no certificate is
	// issued and no workload restarted while it is true.
	// +optional
	Suspend bool `json:"suspend,omitempty"`
}

// MTLSRootRotationStatus is the observed state of an MTLSRootRotation.
type MTLSRootRotationStatus struct {
	meta.ReconcileRequestStatus `json:",inline"`

	// ObservedGeneration is the last generation of the spec the operator acted on.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Conditions hold the Ready, Reconciling and Stalled conditions in kstatus
	// semantics.
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// MTLSRootRotation declares the root and issuer certificates of a Dapr control
// plane; the operator issues them, publishes them to Dapr Sentry and restarts
// the control plane and Dapr applications in order.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:path=mtlsrotations,singular=mtlsrotation,shortName=mtlsrot,categories=dapr
// +kubebuilder:printcolumn:name="Ready",type="string",JSONPath=".status.conditions[?(@.type==\"Ready\")].status"
// +kubebuilder:printcolumn:name="Status",type="string",JSONPath=".status.conditions[?(@.type==\"Ready\")].message",priority=1
// +kubebuilder:printcolumn:name="Age",type="date",JSONPath=".metadata.creationTimestamp"
type MTLSRootRotation struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	Spec MTLSRootRotationSpec `json:"spec"`

	// +kubebuilder:default:={"observedGeneration":-1}
	// +optional
	Status MTLSRootRotationStatus `json:"status,omitempty"`
}

// GetConditions returns the status conditions of the object.
func (in *MTLSRootRotation) GetConditions() []metav1.Condition {
	return in.Status.Conditions
}

// SetConditions sets the status conditions on the object.
func (in *MTLSRootRotation) SetConditions(conditions []metav1.Condition) {
	in.Status.Conditions = conditions
}

// MTLSRootRotationList is a list of MTLSRootRotation objects.
// +kubebuilder:object:root=true
type MTLSRootRotationList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []MTLSRootRotation `json:"items"`
}

func init() {
	SchemeBuilder.Register(&MTLSRootRotation{}, &MTLSRootRotationList{})
}

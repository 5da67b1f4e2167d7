package rotation

import (
	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
)

// KeepsRetiredRoots decides, as a rotation starts, whether the roots it
// retires stay in the trust anchors (spec.root.retired), and says why. Dapr's
// WorkflowHistorySigning verifies a stored history against the current
// anchors at its signing time, so with it on a retired root must stay for as
// long as histories signed under it are kept.
func KeepsRetiredRoots(retired *rotatorv1.RetiredRootsSpec, dapr *rotatorv1.DaprConfigurationStatus) (bool, string) {
	switch retired.GetPolicy() {
	case rotatorv1.RetiredRootsKeep:
		return true, "spec.root.retired.policy is Keep"
	case rotatorv1.RetiredRootsDrop:
		return false, "spec.root.retired.policy is Drop"
	}
	if dapr != nil && dapr.WorkflowHistorySigning != "" {
		return true, "WorkflowHistorySigning is on in Dapr Configuration " + dapr.WorkflowHistorySigning
	}
	return false, "WorkflowHistorySigning is off"
}

package controllers

import (
	"context"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/rotation"
)

// reconcileSpec refuses, before any side effect, what the CRD's validation
// cannot check: label selectors the API server stores but cannot parse
// would otherwise fail only at RestartingApplications, after a publish. It
// also holds a rotation in flight when spec.dryRun is set under it: a dry
// run changes nothing, and the rotation is not over.
func (p *pass) reconcileSpec(context.Context) error {
	obj := p.obj
	for _, f := range []struct {
		name string
		sel  *rotatorv1.LabelSelector
	}{
		{"spec.applications.namespaceSelector", obj.Spec.Applications.NamespaceSelector},
		{"spec.applications.selector", obj.Spec.Applications.Selector},
	} {
		if _, err := f.sel.AsSelector(); err != nil {
			return stall(rotatorv1.InvalidSpecReason, "%s is not a valid label selector: %v; nothing was done", f.name, err).terminal()
		}
	}
	if rot := obj.Status.Rotation; obj.Spec.DryRun && rotation.InFlight(rot) {
		return stall(rotatorv1.DryRunMidRotationReason,
			"spec.dryRun is true while rotation %s is in flight (step %s%s): it is held where it is, with the mesh working, and goes on once dryRun is false (spec.suspend pauses a rotation too)",
			rot.ID, rot.Step, phaseSuffix(rot))
	}
	return nil
}

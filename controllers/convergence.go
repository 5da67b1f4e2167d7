package controllers

import (
	"context"

	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/convergence"
)

// Pods are watched cluster-wide, trimmed to the roots each holds (TrimPod).
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch

// maxNotConverged bounds the pods status.convergence names.
const maxNotConverged = 5

// reconcileConvergence observes which roots the live Dapr sidecar pods of
// this control plane hold, against the newest root published, into status.
// It is monitoring: it never holds a rotation up.
func (p *pass) reconcileConvergence(ctx context.Context) error {
	obj := p.obj
	if obj.Status.Root == nil {
		obj.Status.Convergence = nil
		return nil
	}
	observed, err := p.observePods(ctx)
	if err != nil {
		p.log.Error(err, "observing Dapr sidecar pods")
		return nil
	}
	required := obj.Status.Root.SHA256Fingerprint
	report := convergence.Summarize(observed, convergence.Requirement{Roots: []string{required}}, maxNotConverged)
	setConvergence(obj, convergenceStatus(report, required), p.now())
	return nil
}

// convergenceStatus is a report as status shows it: fingerprints shortened.
func convergenceStatus(r convergence.Report, required string) *rotatorv1.ConvergenceStatus {
	s := &rotatorv1.ConvergenceStatus{
		Root: convergence.Short(required), Pods: int32(r.Total), Converged: int32(r.Converged), Progress: r.Progress(),
	}
	for _, set := range r.Sets {
		s.TrustSets = append(s.TrustSets, rotatorv1.TrustSetStatus{Roots: shorten(set.Anchors), Pods: int32(set.Pods)})
	}
	for _, p := range r.Stragglers {
		s.NotConverged = append(s.NotConverged, rotatorv1.PodConvergence{
			Namespace: p.Namespace, Name: p.Name, Owner: p.Owner, Roots: shorten(p.Anchors), Reason: p.Reason,
		})
	}
	return s
}

func shorten(fingerprints []string) []string {
	var out []string
	for _, f := range fingerprints {
		out = append(out, convergence.Short(f))
	}
	return out
}

// setConvergence records s, keeping the time of the last change when
// nothing changed, so that an unchanged observation writes nothing.
func setConvergence(obj *rotatorv1.MTLSRootRotation, s *rotatorv1.ConvergenceStatus, now metav1.Time) {
	if old := obj.Status.Convergence; old != nil {
		s.LastChangeTime = old.LastChangeTime
		if equality.Semantic.DeepEqual(old, s) {
			return
		}
	}
	s.LastChangeTime = now
	obj.Status.Convergence = s
}

package controllers

import (
	"context"
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/bundle"
	"github.com/mtls-rotator/mtls-rotator/internal/convergence"
	"github.com/mtls-rotator/mtls-rotator/internal/pki"
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
	if len(report.Stragglers) > 0 {
		p.explainSameKey(ctx, report.Stragglers)
	}
	status := convergenceStatus(report, required)
	status.CutOff = cutOffStatus(convergence.CutOffBefore(observed, obj.Status.Root.NotAfter.Time, maxNotConverged))
	setConvergence(obj, status, p.now())
	return nil
}

// cutOffStatus is c as status shows it; nil when no pod is cut off early.
func cutOffStatus(c convergence.CutOff) *rotatorv1.CutOffStatus {
	if c.Pods == 0 {
		return nil
	}
	s := &rotatorv1.CutOffStatus{At: metav1.NewTime(c.At), Pods: int32(c.Pods)}
	for _, p := range c.First {
		s.First = append(s.First, p.Namespace+"/"+p.Name)
	}
	return s
}

// explainSameKey says of the pods that hold a previous certificate of the
// root key published (the one the last rotation replaced, kept in the backup
// Secret) that they keep working until it expires: the same key verifies the
// new issuer's certificates.
func (p *pass) explainSameKey(ctx context.Context, stragglers []convergence.Straggler) {
	s := &corev1.Secret{}
	if err := p.Get(ctx, client.ObjectKey{Namespace: p.obj.Namespace, Name: backupName(p.obj)}, s); err != nil {
		return // nothing replaced yet
	}
	previous := sameKeyAs(p.obj.Status.Root, bundle.FromSecret(s.Data, keysOf(p.obj)).TrustAnchors)
	for i, st := range stragglers {
		for _, c := range previous {
			if slices.Contains(st.Anchors, pki.Fingerprint(c)) {
				stragglers[i].Reason = fmt.Sprintf("it holds the previous certificate of the same root key (%s), which keeps verifying the new issuer's certificates until %s; it converges when its pod is recreated",
					convergence.Short(pki.Fingerprint(c)), c.NotAfter.UTC().Format(time.RFC3339))
			}
		}
	}
}

// convergenceStatus is a report as status shows it: fingerprints shortened.
func convergenceStatus(r convergence.Report, required string) *rotatorv1.ConvergenceStatus {
	s := &rotatorv1.ConvergenceStatus{
		Root: convergence.Short(required), Pods: int32(r.Total), Converged: int32(r.Converged), Progress: r.Progress(),
	}
	for _, set := range r.Sets {
		s.TrustSets = append(s.TrustSets, rotatorv1.TrustSetStatus{Roots: convergence.ShortAll(set.Anchors), Pods: int32(set.Pods)})
	}
	for _, p := range r.Stragglers {
		s.NotConverged = append(s.NotConverged, rotatorv1.PodConvergence{
			Namespace: p.Namespace, Name: p.Name, Owner: p.Owner, Roots: convergence.ShortAll(p.Anchors), Reason: p.Reason,
		})
	}
	return s
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

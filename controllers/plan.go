package controllers

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/bundle"
	"github.com/mtls-rotator/mtls-rotator/internal/pki"
	"github.com/mtls-rotator/mtls-rotator/internal/restart"
	"github.com/mtls-rotator/mtls-rotator/internal/rotation"
)

// maxPlannedWaves bounds the waves listed in status.plan.
const maxPlannedWaves = 10

// plan computes what the next rotation would do, reading only.
func (r *MTLSRootRotationReconciler) plan(ctx context.Context, obj *rotatorv1.MTLSRootRotation, t *target) (*rotatorv1.RotationPlan, error) {
	n := namesFor(obj)
	policy := obj.Spec.Root.GetKeyPolicy()
	p := &rotatorv1.RotationPlan{ComputedAt: r.now(), KeyPolicy: policy}
	installed := bundle.FromSecret(t.Secret.Data, keysOf(obj))

	if policy == rotatorv1.KeyPolicyRotate {
		p.Phases = rotation.Phases
		if installed.IsEmpty() {
			p.Phases = rotation.Phases[len(rotation.Phases)-1:]
		}
	}
	rootExists := r.Get(ctx, types.NamespacedName{Namespace: obj.Namespace, Name: n.Root}, &cmapi.Certificate{}) == nil
	switch ref := obj.Spec.Issuer.IssuerRef; {
	case ref != nil:
		p.Certificates = append(p.Certificates, fmt.Sprintf("issue issuer Certificate %s signed by %s %s, whose CA becomes the trust anchor", n.Issuer, ref.GetKind(), ref.Name))
	case policy == rotatorv1.KeyPolicyRotate:
		next := rootSecretNameFor(obj, max(obj.Status.RootKeyGeneration, 1)+1)
		p.Certificates = append(p.Certificates, fmt.Sprintf("issue root Certificate %s with a new key into Secret %s", n.Root, next))
	case obj.Spec.Root.PrivateKeySecretRef != nil && !rootExists:
		p.Certificates = append(p.Certificates, fmt.Sprintf("issue root Certificate %s with the key of Secret %s", n.Root, obj.Spec.Root.PrivateKeySecretRef.Name))
	case rootExists:
		p.Certificates = append(p.Certificates, fmt.Sprintf("renew root Certificate %s with the same key", n.Root))
	default:
		p.Certificates = append(p.Certificates, fmt.Sprintf("issue root Certificate %s with a new key into Secret %s", n.Root, rootSecretName(obj)))
	}
	if obj.Spec.Issuer.IssuerRef == nil {
		p.Certificates = append(p.Certificates, fmt.Sprintf("issue issuer Certificate %s signed by that root", n.Issuer))
	}

	if policy == rotatorv1.KeyPolicyReuse && !installed.IsEmpty() && obj.Spec.Issuer.IssuerRef == nil {
		if blocker := r.reuseBlocker(ctx, obj, installed); blocker != "" {
			p.Blockers = append(p.Blockers, blocker)
		}
	}

	for _, w := range obj.Spec.ControlPlane.GetWorkloads() {
		ref := restart.Ref{Kind: string(w.Kind), Namespace: obj.Namespace, Name: w.Name}
		o, err := workloadObject(ref.Kind)
		if err != nil {
			return nil, err
		}
		err = r.Get(ctx, types.NamespacedName{Namespace: obj.Namespace, Name: w.Name}, o)
		switch {
		case apierrors.IsNotFound(err) && w.Optional:
			p.ControlPlane = append(p.ControlPlane, ref.String()+" (optional, not found: skipped)")
		case apierrors.IsNotFound(err):
			p.ControlPlane = append(p.ControlPlane, ref.String()+" (not found)")
			p.Blockers = append(p.Blockers, fmt.Sprintf("control-plane workload %s does not exist", ref))
		case err != nil:
			return nil, fmt.Errorf("reading %s: %w", ref, err)
		default:
			p.ControlPlane = append(p.ControlPlane, ref.String())
		}
	}

	if obj.Spec.Applications.RestartEnabled() {
		// The plan needs no rotation id: nothing is restarted yet.
		probe := obj.DeepCopy()
		probe.Status.Rotation = &rotatorv1.RotationStatus{}
		apps, err := r.applications(ctx, probe)
		if err != nil {
			return nil, err
		}
		refs := make([]restart.Ref, 0, len(apps))
		for _, a := range apps {
			refs = append(refs, a.Ref)
		}
		waves := restart.Waves(refs, obj.Spec.Applications.GetMaxConcurrent())
		p.Applications, p.Waves = int32(len(refs)), int32(len(waves))
		for _, wave := range waves[:min(len(waves), maxPlannedWaves)] {
			var names []string
			for _, ref := range wave {
				names = append(names, ref.String())
			}
			p.FirstWaves = append(p.FirstWaves, rotatorv1.PlannedWave{Applications: names})
		}
	}
	return p, nil
}

// reuseBlocker says why a same-key rotation over installed would stop, if it would.
func (r *MTLSRootRotationReconciler) reuseBlocker(ctx context.Context, obj *rotatorv1.MTLSRootRotation, installed pki.Bundle) string {
	unknown := fmt.Sprintf("the installed trust anchors were not made with the managed root key: a Reuse rotation would stop with %s; use keyPolicy Rotate",
		rotatorv1.RootKeyUnknownReason)
	anchors, err := pki.ParseCertificates(installed.TrustAnchors)
	if err != nil {
		return fmt.Sprintf("the installed trust anchors cannot be parsed (%v): use keyPolicy Rotate", err)
	}
	root := &corev1.Secret{}
	if err := r.reader().Get(ctx, client.ObjectKey{Namespace: obj.Namespace, Name: rootSecretName(obj)}, root); err != nil {
		if obj.Spec.Root.PrivateKeySecretRef != nil {
			return "" // the brought key decides; checked when it is imported
		}
		return unknown
	}
	key, err := pki.ParsePrivateKey(root.Data[corev1.TLSPrivateKeyKey])
	if err != nil {
		return unknown
	}
	for _, a := range anchors {
		if pki.KeyMatches(key, a) {
			return ""
		}
	}
	return unknown
}

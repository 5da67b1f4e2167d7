package controllers

import (
	"context"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/bundle"
	"github.com/mtls-rotator/mtls-rotator/internal/pki"
	"github.com/mtls-rotator/mtls-rotator/internal/rotation"
)

// target is the Secret and ConfigMap Sentry reads.
type target struct {
	Secret    *corev1.Secret
	ConfigMap *corev1.ConfigMap
}

// reconcileConflict stalls an object while an older one in its namespace
// manages the same Secret or ConfigMap: it touches nothing then.
func (p *pass) reconcileConflict(ctx context.Context) error {
	other, err := p.conflictingRotation(ctx)
	if err != nil || other == "" {
		return err
	}
	// Creations and deletions of siblings wake it; a sibling retargeted
	// elsewhere is noticed on this schedule.
	return stall(rotatorv1.ConflictReason,
		"MTLSRootRotation %s/%s already manages Secret %s or ConfigMap %s; this object touches nothing while it exists",
		p.obj.Namespace, other, p.obj.Spec.Target.GetSecretName(), p.obj.Spec.Target.GetConfigMapName()).retry(time.Minute)
}

// conflictingRotation returns the name of an older MTLSRootRotation in the
// namespace aiming at the same Secret or ConfigMap, if any.
func (p *pass) conflictingRotation(ctx context.Context) (string, error) {
	obj := p.obj
	list := &rotatorv1.MTLSRootRotationList{}
	if err := p.List(ctx, list, client.InNamespace(obj.Namespace)); err != nil {
		return "", fmt.Errorf("listing MTLSRootRotations: %w", err)
	}
	for _, other := range list.Items {
		if other.UID == obj.UID || other.DeletionTimestamp != nil {
			continue
		}
		same := other.Spec.Target.GetSecretName() == obj.Spec.Target.GetSecretName() ||
			other.Spec.Target.GetConfigMapName() == obj.Spec.Target.GetConfigMapName()
		older := other.CreationTimestamp.Before(&obj.CreationTimestamp) ||
			(other.CreationTimestamp.Equal(&obj.CreationTimestamp) && other.Name < obj.Name)
		if same && older {
			return other.Name, nil
		}
	}
	return "", nil
}

// reconcileTarget reads the Secret and ConfigMap Sentry reads, and what the
// status reports of them and of the Dapr Configuration before anything is
// published; an object that takes up the key of an earlier one does so here.
func (p *pass) reconcileTarget(ctx context.Context) error {
	obj := p.obj
	t := &target{Secret: &corev1.Secret{}, ConfigMap: &corev1.ConfigMap{}}
	for _, o := range []struct {
		kind string
		name string
		obj  client.Object
	}{{"Secret", obj.Spec.Target.GetSecretName(), t.Secret}, {"ConfigMap", obj.Spec.Target.GetConfigMapName(), t.ConfigMap}} {
		key := client.ObjectKey{Namespace: obj.Namespace, Name: o.name}
		err := p.Get(ctx, key, o.obj)
		if apierrors.IsNotFound(err) && o.kind == "Secret" {
			// Cached once labeled: read live until the operator publishes.
			err = p.reader().Get(ctx, key, o.obj)
		}
		if apierrors.IsNotFound(err) {
			// Looked at again each minute as well: a Secret created
			// unlabeled is not in the cache, so its creation wakes nothing.
			return stall(rotatorv1.TargetNotFoundReason,
				"%s %s/%s that Dapr Sentry reads does not exist: install Dapr in %s or set spec.target", o.kind, obj.Namespace, o.name, obj.Namespace).
				retry(time.Minute)
		}
		if err != nil {
			return fmt.Errorf("reading %s %s/%s: %w", o.kind, obj.Namespace, o.name, err)
		}
	}
	p.target = t
	if err := p.labelPublishedSecret(ctx); err != nil {
		return err
	}
	observeInstalled(obj, t)
	// Read live, so not on every polling pass of a rotation: once it has
	// been read, only between rotations.
	if obj.Status.DaprConfiguration == nil || !rotation.InFlight(obj.Status.Rotation) {
		if err := p.readDaprConfiguration(ctx, obj); err != nil {
			// Monitoring, but for the start of a rotation that must know
			// whether to keep the roots it retires (see begin).
			p.daprConfigurationErr = err
			p.log.Error(err, "reading the Dapr Configuration")
		}
	}
	return p.adoptRootKeyGeneration(ctx)
}

// labelPublishedSecret puts back the owner label on Sentry's Secret once the
// operator has published to it (a Helm upgrade may drop it): the cache holds
// only labeled Secrets, and without it a change to the Secret would wake
// nothing. A dry run writes nothing, this label included.
func (p *pass) labelPublishedSecret(ctx context.Context) error {
	s, obj := p.target.Secret, p.obj
	if obj.Status.PublishedBundleHash == "" || obj.Spec.DryRun || s.Labels[OwnerLabel] == obj.Name {
		return nil
	}
	patch := fmt.Appendf(nil, `{"metadata":{"labels":{%q:%q}}}`, OwnerLabel, obj.Name)
	if err := p.Patch(ctx, s, client.RawPatch(types.MergePatchType, patch)); err != nil {
		return fmt.Errorf("labeling Secret %s/%s: %w", s.Namespace, s.Name, err)
	}
	return nil
}

// refreshTarget re-reads the Secret and ConfigMap from the API server: what
// is about to be replaced must not be stale.
func (p *pass) refreshTarget(ctx context.Context) error {
	t := p.target
	s, cm := &corev1.Secret{}, &corev1.ConfigMap{}
	if err := p.reader().Get(ctx, client.ObjectKeyFromObject(t.Secret), s); err != nil {
		return fmt.Errorf("reading Secret %s/%s: %w", t.Secret.Namespace, t.Secret.Name, err)
	}
	if err := p.reader().Get(ctx, client.ObjectKeyFromObject(t.ConfigMap), cm); err != nil {
		return fmt.Errorf("reading ConfigMap %s/%s: %w", t.ConfigMap.Namespace, t.ConfigMap.Name, err)
	}
	t.Secret, t.ConfigMap = s, cm
	return nil
}

// drift names how the Secret and ConfigMap Sentry reads differ from what the
// operator published, or returns "" when they do not. Both are read live: the
// cache may not have seen the operator's own last write.
func (p *pass) drift(ctx context.Context) (string, error) {
	obj := p.obj
	if err := p.refreshTarget(ctx); err != nil {
		return "", err
	}
	t, keys := p.target, keysOf(obj)
	// The last completed rotation: the one in status when it completed (its
	// record may have been lost), else the record.
	last := ""
	if l := obj.Status.LastCompletedRotation; l != nil {
		last = l.ID
	}
	if rot := obj.Status.Rotation; rot != nil && rot.Step == rotatorv1.StepCompleted {
		last = rot.ID
	}
	var parts []string
	live, secretChanged, configMapDiffers := p.divergence()
	if secretChanged {
		what := "its content"
		if issued, _, err := p.issuedBundle(ctx); err == nil && bundle.Hash(issued) == obj.Status.PublishedBundleHash {
			what = bundle.Describe(issued, live, keys)
		}
		parts = append(parts, fmt.Sprintf("Secret %s/%s changed since rotation %s published it: %s",
			obj.Namespace, t.Secret.Name, last, what))
	}
	if configMapDiffers {
		parts = append(parts, fmt.Sprintf("ConfigMap %s/%s %s differs from the Secret's, which makes Sentry generate a new CA at its next start",
			obj.Namespace, t.ConfigMap.Name, keys.CA))
	}
	return strings.Join(parts, "; "), nil
}

// guardPublished re-reads the Secret and the ConfigMap before a workload
// restarts onto them mid-rotation. Sentry restarted onto a Secret other than
// the one published, or beside a ConfigMap whose anchors differ from it,
// loads a foreign bundle or generates a new CA: a Secret changed by anyone
// else stalls the rotation, nothing restarted, until it holds the published
// bundle again; a ConfigMap left behind (the second of the two writes of a
// publish did not land, or was undone) is written again at once.
func (p *pass) guardPublished(ctx context.Context, before string) error {
	if err := p.refreshTarget(ctx); err != nil {
		return err
	}
	obj, t, keys, rot := p.obj, p.target, keysOf(p.obj), p.rot()
	live, secretChanged, configMapDiffers := p.divergence()
	if secretChanged {
		return stall(rotatorv1.TrustBundleDriftReason,
			"Secret %s/%s changed since rotation %s published it; %s is not restarted onto it, nor anything after it, until it holds the published bundle again",
			obj.Namespace, t.Secret.Name, rot.ID, before).retry(p.pollInterval())
	}
	if !configMapDiffers {
		return nil
	}
	if err := p.writeConfigMap(ctx, live.TrustAnchors, bundle.Hash(live), rot.ID); err != nil {
		return err
	}
	p.event(corev1.EventTypeWarning, "ConfigMapRepaired", "Publish",
		"rotation %s: ConfigMap %s/%s %s differed from the Secret's before %s restarted; the published anchors were written to it again",
		rot.ID, obj.Namespace, t.ConfigMap.Name, keys.CA, before)
	return nil
}

// divergence says how the target, as last read, differs from what was
// published: the bundle its Secret holds (live), whether that is not the one
// last published, and whether the ConfigMap's anchors differ from the
// Secret's.
func (p *pass) divergence() (live pki.Bundle, secretChanged, configMapDiffers bool) {
	t, keys, published := p.target, keysOf(p.obj), p.obj.Status.PublishedBundleHash
	live = bundle.FromSecret(t.Secret.Data, keys)
	secretChanged = published != "" && bundle.Hash(live) != published
	return live, secretChanged, !bundle.Consistent(t.Secret.Data, t.ConfigMap.Data, keys)
}

func keysOf(obj *rotatorv1.MTLSRootRotation) bundle.Keys {
	k := obj.Spec.Target.Keys
	return bundle.Keys{CA: k.GetCA(), IssuerCert: k.GetIssuerCert(), IssuerKey: k.GetIssuerKey()}
}

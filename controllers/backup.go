package controllers

import (
	"bytes"
	"context"
	"fmt"
	"slices"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/bundle"
	"github.com/mtls-rotator/mtls-rotator/internal/pki"
)

// ReplacedByAnnotation on the backup Secret names the publish (a rotation
// id, with its phase) whose overwritten bundle the Secret's replaced.* keys hold.
const ReplacedByAnnotation = "mtls.rotator.dev/replaced-by"

// backupStore is the backup Secret <name>-backup. It holds the bundle
// installed before the rotation, written once per rotation, and the Secret
// and ConfigMap content the last publish replaced (replaced.* keys), for a
// rollback. While a rotation runs it is owned by nothing, so that deleting
// the object mid-rotation leaves the record (the garbage collector would
// take an owned one); a settled object owns it again (own), so that deleting
// it removes the backup and the private keys it holds. It is always read live: a replay must not overwrite
// what it holds with what the rotation wrote.
type backupStore struct {
	client.Client
	reader client.Reader
	obj    *rotatorv1.MTLSRootRotation
}

func (p *pass) backups() backupStore {
	return backupStore{Client: p.Client, reader: p.reader(), obj: p.obj}
}

func backupName(obj *rotatorv1.MTLSRootRotation) string { return obj.Name + "-backup" }

func (b backupStore) read(ctx context.Context) (*corev1.Secret, error) {
	s := &corev1.Secret{}
	if err := b.reader.Get(ctx, client.ObjectKey{Namespace: b.obj.Namespace, Name: backupName(b.obj)}, s); err != nil {
		return nil, fmt.Errorf("reading the backup Secret: %w", err)
	}
	return s, nil
}

// original returns the bundle installed before rotationID, keeping installed
// as that bundle the first time it is asked for in the rotation.
func (b backupStore) original(ctx context.Context, installed pki.Bundle, rotationID string) (pki.Bundle, error) {
	s, exists, err := b.readOrNew(ctx)
	if err != nil {
		return pki.Bundle{}, err
	}
	if s.Annotations[RotationAnnotation] == rotationID {
		return bundle.FromSecret(s.Data, keysOf(b.obj)), nil
	}
	b.setOriginal(s, installed, rotationID)
	return installed, b.write(ctx, s, exists)
}

// keep records, in one write, what a rollback of the publish restartID
// needs: the bundle installed before rotationID (the first time in the
// rotation, as original does) and the Secret and ConfigMap content the
// publish is about to overwrite (once per publish). A replay of the publish
// finds both recorded and writes nothing, so it never overwrites them with
// what it wrote.
func (b backupStore) keep(ctx context.Context, installed pki.Bundle, t *target, rotationID, restartID string) error {
	s, exists, err := b.readOrNew(ctx)
	if err != nil {
		return err
	}
	if s.Annotations[RotationAnnotation] == rotationID && s.Annotations[ReplacedByAnnotation] == restartID {
		return nil
	}
	if s.Annotations[RotationAnnotation] != rotationID {
		b.setOriginal(s, installed, rotationID)
	}
	keys := keysOf(b.obj)
	cmCA, hasCMCA := t.ConfigMap.Data[keys.CA]
	s.Data = bundle.ReplacedData(s.Data, bundle.Replaced{
		Bundle: bundle.FromSecret(t.Secret.Data, keys), ConfigMapCA: []byte(cmCA), HasConfigMapCA: hasCMCA,
	}, keys)
	s.Annotations[ReplacedByAnnotation] = restartID
	if err := b.write(ctx, s, exists); err != nil {
		return fmt.Errorf("recording the bundle publish %s replaces: %w", restartID, err)
	}
	return nil
}

// readOrNew reads the backup Secret live, or returns a new one when there is none.
func (b backupStore) readOrNew(ctx context.Context) (s *corev1.Secret, exists bool, err error) {
	s, err = b.read(ctx)
	switch {
	case err == nil:
		if s.Annotations == nil {
			s.Annotations = map[string]string{}
		}
		return s, true, nil
	case apierrors.IsNotFound(err):
		return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{}}}, false, nil
	}
	return nil, false, err
}

// setOriginal makes s the backup of installed, the bundle installed before
// rotationID, and of nothing else.
func (b backupStore) setOriginal(s *corev1.Secret, installed pki.Bundle, rotationID string) {
	s.Name, s.Namespace = backupName(b.obj), b.obj.Namespace
	s.Labels = map[string]string{OwnerLabel: b.obj.Name}
	s.Annotations = map[string]string{RotationAnnotation: rotationID, BundleHashAnnotation: bundle.Hash(installed), MadeAnnotation: "true"}
	s.Type = corev1.SecretTypeOpaque
	s.Data, _ = bundle.SecretData(nil, installed, keysOf(b.obj))
}

// write creates or updates the backup Secret s, owned by nothing: every
// write is part of a rotation.
func (b backupStore) write(ctx context.Context, s *corev1.Secret, exists bool) error {
	s.OwnerReferences = slices.DeleteFunc(s.OwnerReferences, func(r metav1.OwnerReference) bool { return r.UID == b.obj.UID })
	var err error
	if exists {
		err = b.Update(ctx, s)
	} else {
		err = b.Create(ctx, s)
	}
	if err != nil {
		return fmt.Errorf("writing the backup Secret: %w", err)
	}
	return nil
}

// own makes the settled object the backup's controller again and drops the
// private keys it holds, in one patch; nothing when that is done or there is
// no backup. The keys served a rollback of the rotation, which is over: the
// retired issuer keys (a compromised one, say) do not outlive it here. The
// certificates stay.
func (b backupStore) own(ctx context.Context) error {
	s := &corev1.Secret{}
	if err := b.Get(ctx, client.ObjectKey{Namespace: b.obj.Namespace, Name: backupName(b.obj)}, s); err != nil {
		return client.IgnoreNotFound(err)
	}
	keyMaterial := bundle.KeyMaterial(keysOf(b.obj))
	holdsKeys := slices.ContainsFunc(keyMaterial, func(k string) bool { _, ok := s.Data[k]; return ok })
	if metav1.IsControlledBy(s, b.obj) && !holdsKeys {
		return nil
	}
	before := s.DeepCopy()
	if err := controllerutil.SetControllerReference(b.obj, s, b.Scheme()); err != nil {
		return err
	}
	for _, k := range keyMaterial {
		delete(s.Data, k)
	}
	if err := b.Patch(ctx, s, client.MergeFrom(before)); err != nil {
		return fmt.Errorf("owning the backup Secret: %w", err)
	}
	return nil
}

// replaced returns what the publish restartID replaced; recorded is false
// when the backup holds no record of that publish.
func (b backupStore) replaced(ctx context.Context, restartID string) (r bundle.Replaced, recorded bool, err error) {
	s, err := b.read(ctx)
	if err != nil {
		return bundle.Replaced{}, false, err
	}
	if s.Annotations[ReplacedByAnnotation] != restartID {
		return bundle.Replaced{}, false, nil
	}
	return bundle.ReplacedFrom(s.Data, keysOf(b.obj)), true, nil
}

// anchorsChanged reports whether current holds other trust anchors than the
// bundle installed before the rotation.
func (b backupStore) anchorsChanged(ctx context.Context, current *corev1.Secret) (bool, error) {
	s, err := b.read(ctx)
	if err != nil {
		return false, err
	}
	ca := keysOf(b.obj).CA
	return !bytes.Equal(s.Data[ca], current.Data[ca]), nil
}

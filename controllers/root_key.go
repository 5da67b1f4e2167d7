package controllers

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"fmt"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/pki"
)

// importRootKey puts a brought root key (spec.root.privateKeySecretRef) into
// the root Secret before cert-manager issues the root, which then signs with
// it (rotationPolicy Never keeps whatever key the Secret holds). The user's
// Secret is only read. A root Secret that already holds another key is never
// overwritten: a key that cannot be imported stalls.
func (p *pass) importRootKey(ctx context.Context) error {
	obj := p.obj
	ref := obj.Spec.Root.PrivateKeySecretRef
	if ref == nil {
		return nil
	}
	dataKey := ref.Key
	if dataKey == "" {
		dataKey = "ca.key"
	}
	src := &corev1.Secret{}
	if err := p.reader().Get(ctx, client.ObjectKey{Namespace: obj.Namespace, Name: ref.Name}, src); err != nil {
		if apierrors.IsNotFound(err) {
			return stall(rotatorv1.InvalidPrivateKeyReason,
				"Secret %s/%s named by spec.root.privateKeySecretRef does not exist", obj.Namespace, ref.Name)
		}
		return fmt.Errorf("reading the root key Secret: %w", err)
	}
	key, err := pki.ParsePrivateKey(src.Data[dataKey])
	if err != nil {
		return stall(rotatorv1.InvalidPrivateKeyReason,
			"key %q of Secret %s/%s holds no usable private key: %v", dataKey, obj.Namespace, ref.Name, err)
	}
	wantAlg, wantSize := string(obj.Spec.Root.PrivateKey.GetAlgorithm()), obj.Spec.Root.PrivateKey.GetSize()
	if alg, size := pki.KeyAlgorithm(key); alg != wantAlg || size != wantSize {
		return stall(rotatorv1.InvalidPrivateKeyReason,
			"the key in Secret %s/%s is %s %d, but spec.root.privateKey asks for %s %d", obj.Namespace, ref.Name, alg, size, wantAlg, wantSize)
	}
	keyPEM, err := pki.EncodePrivateKey(key)
	if err != nil {
		return err
	}

	root := &corev1.Secret{}
	name := rootSecretName(obj)
	err = p.reader().Get(ctx, client.ObjectKey{Namespace: obj.Namespace, Name: name}, root)
	switch {
	case apierrors.IsNotFound(err):
		root = &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: obj.Namespace, Labels: map[string]string{OwnerLabel: obj.Name}, Annotations: madeAnnotations()},
			Type:       corev1.SecretTypeTLS,
			Data:       map[string][]byte{corev1.TLSCertKey: {}, corev1.TLSPrivateKeyKey: keyPEM},
		}
		if err := p.Create(ctx, root); err != nil {
			return fmt.Errorf("importing the root key into Secret %s: %w", name, err)
		}
		p.log.Info("root key imported", "from", ref.Name, "into", name)
		return nil
	case err != nil:
		return fmt.Errorf("reading the root Secret: %w", err)
	}
	held, err := pki.ParsePrivateKey(root.Data[corev1.TLSPrivateKeyKey])
	if err != nil || !publicKeysEqual(held, key) {
		return stall(rotatorv1.InvalidPrivateKeyReason,
			"root Secret %s/%s already holds another key than Secret %s; it is never overwritten: delete it to import the brought key",
			obj.Namespace, name, ref.Name)
	}
	return nil
}

func publicKeysEqual(a, b interface{ Public() crypto.PublicKey }) bool {
	pa, err1 := x509.MarshalPKIXPublicKey(a.Public())
	pb, err2 := x509.MarshalPKIXPublicKey(b.Public())
	return err1 == nil && err2 == nil && bytes.Equal(pa, pb)
}

// adoptRootKeyGeneration makes a new object (no rotation yet) take up the
// root key Secret an earlier object of the same name left, Secrets outliving
// their object by design: after a Rotate that is <name>-root-gN, not
// <name>-root. Of several, it takes the newest whose key made one of the
// installed anchors, or else the newest. It changes nothing for an object
// that has rotated or when no such Secret exists.
func (p *pass) adoptRootKeyGeneration(ctx context.Context) error {
	obj := p.obj
	if obj.Status.RootKeyGeneration != 0 || obj.Status.Rotation != nil {
		return nil
	}
	generations, byName, err := p.rootKeySecrets(ctx)
	if err != nil {
		return err
	}
	if len(generations) == 0 {
		return nil
	}
	chosen := generations[0]
	anchors, _ := pki.ParseCertificates(p.installed().TrustAnchors)
	for _, gen := range generations {
		key, err := pki.ParsePrivateKey(byName[rootSecretNameFor(obj, gen)].Data[corev1.TLSPrivateKeyKey])
		if err == nil && slices.ContainsFunc(anchors, func(a *x509.Certificate) bool { return pki.KeyMatches(key, a) }) {
			chosen = gen
			break
		}
	}
	obj.Status.RootKeyGeneration = chosen
	p.log.Info("root key Secret of an earlier object taken up", "secret", rootSecretNameFor(obj, chosen))
	return nil
}

// dropUnusedRootKeys deletes the root key Secrets of generations after the
// installed one: keys that new-key rotations began and gave up (replaced
// before publishing, or rolled back in Overlap), which no issuer is signed
// by. Only a settled object calls it, once the cert-manager objects point at
// the installed generation, so that cert-manager does not issue them again.
func (p *pass) dropUnusedRootKeys(ctx context.Context) error {
	obj := p.obj
	generations, _, err := p.rootKeySecrets(ctx)
	if err != nil {
		return err
	}
	for _, gen := range generations {
		if gen <= max(obj.Status.RootKeyGeneration, 1) {
			break // newest first
		}
		unused := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: obj.Namespace, Name: rootSecretNameFor(obj, gen)}}
		if err := p.Delete(ctx, unused); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("deleting the unused root key Secret %s: %w", unused.Name, err)
		}
		p.log.Info("unused root key deleted", "secret", unused.Name)
	}
	return nil
}

// rootKeySecrets lists the Secrets labelled for the object (from the cache),
// and returns the root key generations among them, newest first, with the
// Secrets by name.
func (p *pass) rootKeySecrets(ctx context.Context) ([]int32, map[string]*corev1.Secret, error) {
	obj := p.obj
	secrets := &corev1.SecretList{}
	if err := p.List(ctx, secrets, client.InNamespace(obj.Namespace), client.MatchingLabels{OwnerLabel: obj.Name}); err != nil {
		return nil, nil, fmt.Errorf("looking for root key Secrets: %w", err)
	}
	byName := make(map[string]*corev1.Secret, len(secrets.Items))
	names := make([]string, 0, len(secrets.Items))
	for i := range secrets.Items {
		byName[secrets.Items[i].Name] = &secrets.Items[i]
		names = append(names, secrets.Items[i].Name)
	}
	return rootKeyGenerations(obj.Name, names), byName, nil
}

// rootKeyGenerations returns the root key generations among the Secret names
// of the object named name, newest first.
func rootKeyGenerations(name string, secretNames []string) []int32 {
	var gens []int32
	for _, s := range secretNames {
		rest, ok := strings.CutPrefix(s, name+"-root")
		switch {
		case !ok:
			continue
		case rest == "":
			gens = append(gens, 1)
		case strings.HasPrefix(rest, "-g"):
			if n, err := strconv.ParseInt(rest[2:], 10, 32); err == nil && n > 1 && fmt.Sprintf("-g%d", n) == rest {
				gens = append(gens, int32(n))
			}
		}
	}
	slices.Sort(gens)
	slices.Reverse(gens)
	return slices.Compact(gens)
}

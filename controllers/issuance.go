package controllers

import (
	"context"
	"fmt"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/rotation"
)

// OwnerLabel names the MTLSRootRotation an object belongs to.
const OwnerLabel = "mtls.rotator.dev/rotation"

// MadeAnnotation marks, from its creation, a Secret the operator made (the
// backup, an imported root key) or had cert-manager make for it (the root
// and issuer Secrets). The admission policy lets the operator delete only
// Secrets that carry it, and never add it to one: labeling a Secret does
// not make it the operator's to delete.
const MadeAnnotation = "mtls.rotator.dev/made-by-operator"

// madeAnnotations are the annotations of a Secret made for the operator.
func madeAnnotations() map[string]string { return map[string]string{MadeAnnotation: "true"} }

// issuanceNames are the cert-manager objects of one MTLSRootRotation.
type issuanceNames struct {
	SelfSigned string // Issuer
	Root       string // Certificate and its Secret
	RootIssuer string // CA Issuer on the root Secret
	Issuer     string // Certificate and its Secret
}

// rootSecretName is the Secret holding the current root key: a Rotate
// rotation starts a new key generation in a new Secret and keeps the previous
// one until it completes.
func rootSecretName(obj *rotatorv1.MTLSRootRotation) string {
	return rootSecretNameFor(obj, obj.Status.RootKeyGeneration)
}

func rootSecretNameFor(obj *rotatorv1.MTLSRootRotation, generation int32) string {
	if generation <= 1 {
		return obj.Name + "-root"
	}
	return fmt.Sprintf("%s-root-g%d", obj.Name, generation)
}

func namesFor(obj *rotatorv1.MTLSRootRotation) issuanceNames {
	return issuanceNames{
		SelfSigned: obj.Name + "-selfsigned",
		Root:       obj.Name + "-root",
		RootIssuer: obj.Name + "-root-ca",
		Issuer:     obj.Name + "-issuer",
	}
}

// issuerRefOf is the external issuer the current rotation issues from: the
// one pinned at its start while it runs, the spec's otherwise.
func issuerRefOf(obj *rotatorv1.MTLSRootRotation) *rotatorv1.IssuerReference {
	if rot := obj.Status.Rotation; rotation.InFlight(rot) {
		return rot.IssuerRef
	}
	return obj.Spec.Issuer.IssuerRef
}

func describeIssuerRef(ref *rotatorv1.IssuerReference) string {
	if ref == nil {
		return "a root of its own"
	}
	return ref.GetKind() + " " + ref.Name
}

func keySpec(k rotatorv1.PrivateKeySpec, policy cmapi.PrivateKeyRotationPolicy) *cmapi.CertificatePrivateKey {
	alg := map[rotatorv1.KeyAlgorithm]cmapi.PrivateKeyAlgorithm{
		rotatorv1.ECDSA: cmapi.ECDSAKeyAlgorithm, rotatorv1.RSA: cmapi.RSAKeyAlgorithm, rotatorv1.Ed25519: cmapi.Ed25519KeyAlgorithm,
	}[k.GetAlgorithm()]
	return &cmapi.CertificatePrivateKey{
		Algorithm: alg, Size: k.GetSize(), RotationPolicy: policy, Encoding: cmapi.PKCS8,
	}
}

func subjectOf(spec *rotatorv1.MTLSRootRotationSpec) (string, *cmapi.X509Subject) {
	cn := spec.GetTrustDomain()
	s := spec.Root.Subject
	if s == nil {
		return cn, nil
	}
	if s.CommonName != "" {
		cn = s.CommonName
	}
	return cn, &cmapi.X509Subject{Organizations: s.Organizations, OrganizationalUnits: s.OrganizationalUnits, Countries: s.Countries}
}

// desiredIssuance returns the cert-manager objects of obj: a SelfSigned Issuer,
// the root Certificate (isCA, rotationPolicy Never: the key is kept), a CA
// Issuer on the root's Secret, and the issuer Certificate (isCA) it signs.
//
// With an external issuer (spec.issuer.issuerRef) only the issuer Certificate
// is made, signed by that issuer.
func desiredIssuance(obj *rotatorv1.MTLSRootRotation) []client.Object {
	n := namesFor(obj)
	spec := &obj.Spec
	cn, subject := subjectOf(spec)
	meta := func(name string) metav1.ObjectMeta {
		return metav1.ObjectMeta{Name: name, Namespace: obj.Namespace, Labels: map[string]string{OwnerLabel: obj.Name}}
	}
	if ref := issuerRefOf(obj); ref != nil {
		return []client.Object{issuerCertificate(obj, meta(n.Issuer), cmmeta.IssuerReference{Name: ref.Name, Kind: ref.GetKind(), Group: ref.GetGroup()})}
	}
	return []client.Object{
		&cmapi.Issuer{ObjectMeta: meta(n.SelfSigned), Spec: cmapi.IssuerSpec{IssuerConfig: cmapi.IssuerConfig{SelfSigned: &cmapi.SelfSignedIssuer{}}}},
		&cmapi.Certificate{ObjectMeta: meta(n.Root), Spec: cmapi.CertificateSpec{
			IsCA: true, CommonName: cn, Subject: subject,
			SecretName:     rootSecretName(obj),
			SecretTemplate: &cmapi.CertificateSecretTemplate{Labels: map[string]string{OwnerLabel: obj.Name}, Annotations: madeAnnotations()},
			Duration:       &metav1.Duration{Duration: spec.Root.GetDuration()},
			PrivateKey:     keySpec(spec.Root.PrivateKey, cmapi.RotationPolicyNever),
			Usages:         []cmapi.KeyUsage{cmapi.UsageCertSign, cmapi.UsageCRLSign, cmapi.UsageDigitalSignature},
			IssuerRef:      cmmeta.IssuerReference{Name: n.SelfSigned, Kind: cmapi.IssuerKind},
		}},
		&cmapi.Issuer{ObjectMeta: meta(n.RootIssuer), Spec: cmapi.IssuerSpec{IssuerConfig: cmapi.IssuerConfig{CA: &cmapi.CAIssuer{SecretName: rootSecretName(obj)}}}},
		issuerCertificate(obj, meta(n.Issuer), cmmeta.IssuerReference{Name: n.RootIssuer, Kind: cmapi.IssuerKind}),
	}
}

// issuerCertificate is the Certificate of the Dapr issuer: a CA whose key is
// new at every issuance.
func issuerCertificate(obj *rotatorv1.MTLSRootRotation, meta metav1.ObjectMeta, signer cmmeta.IssuerReference) *cmapi.Certificate {
	spec := &obj.Spec
	return &cmapi.Certificate{ObjectMeta: meta, Spec: cmapi.CertificateSpec{
		IsCA: true, CommonName: spec.GetTrustDomain(),
		SecretName:     meta.Name,
		SecretTemplate: &cmapi.CertificateSecretTemplate{Labels: map[string]string{OwnerLabel: obj.Name}, Annotations: madeAnnotations()},
		Duration:       &metav1.Duration{Duration: spec.Issuer.GetDuration()},
		PrivateKey:     keySpec(spec.Issuer.PrivateKey, cmapi.RotationPolicyAlways),
		Usages:         []cmapi.KeyUsage{cmapi.UsageCertSign, cmapi.UsageCRLSign, cmapi.UsageDigitalSignature},
		IssuerRef:      signer,
	}}
}

// unusedIssuance returns the cert-manager objects obj no longer wants: the
// root and its issuers once an external issuer signs the Dapr issuer. The
// root key Secret stays.
func unusedIssuance(obj *rotatorv1.MTLSRootRotation) []client.Object {
	if issuerRefOf(obj) == nil {
		return nil
	}
	n := namesFor(obj)
	meta := func(name string) metav1.ObjectMeta { return metav1.ObjectMeta{Name: name, Namespace: obj.Namespace} }
	return []client.Object{&cmapi.Issuer{ObjectMeta: meta(n.SelfSigned)}, &cmapi.Certificate{ObjectMeta: meta(n.Root)}, &cmapi.Issuer{ObjectMeta: meta(n.RootIssuer)}}
}

// ensureIssuance creates or updates the cert-manager objects, owned by obj.
// The Secrets cert-manager writes are not owned: the root key survives the
// deletion of obj.
func (p *pass) ensureIssuance(ctx context.Context) error {
	obj := p.obj
	for _, desired := range desiredIssuance(obj) {
		current := desired.DeepCopyObject().(client.Object)
		op, err := controllerutil.CreateOrPatch(ctx, p.Client, current, func() error {
			switch c := current.(type) {
			case *cmapi.Issuer:
				c.Spec = desired.(*cmapi.Issuer).Spec
			case *cmapi.Certificate:
				c.Spec = desired.(*cmapi.Certificate).Spec
			}
			if c := current.GetLabels(); c[OwnerLabel] != obj.Name {
				labels := map[string]string{}
				for k, v := range c {
					labels[k] = v
				}
				labels[OwnerLabel] = obj.Name
				current.SetLabels(labels)
			}
			return controllerutil.SetControllerReference(obj, current, p.Scheme())
		})
		if err != nil {
			return fmt.Errorf("applying %T %s: %w", desired, desired.GetName(), err)
		}
		if op != controllerutil.OperationResultNone {
			p.log.V(1).Info("cert-manager object applied", "kind", fmt.Sprintf("%T", desired), "name", desired.GetName(), "operation", op)
		}
	}
	for _, unused := range unusedIssuance(obj) {
		if err := p.Get(ctx, client.ObjectKeyFromObject(unused), unused); apierrors.IsNotFound(err) {
			continue
		} else if err != nil {
			return fmt.Errorf("reading %T %s: %w", unused, unused.GetName(), err)
		}
		if !metav1.IsControlledBy(unused, obj) {
			continue
		}
		if err := p.Delete(ctx, unused); client.IgnoreNotFound(err) != nil {
			return fmt.Errorf("deleting %T %s: %w", unused, unused.GetName(), err)
		}
		p.log.Info("cert-manager object no longer used deleted", "kind", fmt.Sprintf("%T", unused), "name", unused.GetName())
	}
	return nil
}

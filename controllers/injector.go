package controllers

import (
	"context"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/convergence"
	"github.com/mtls-rotator/mtls-rotator/internal/pki"
)

// A probe pod is created in dry-run mode only: it goes through the admission
// webhooks, Dapr's injector among them, and is never stored.
// +kubebuilder:rbac:groups="",namespace=dapr-system,resources=pods,verbs=create

// checkInjector asks Dapr's sidecar injector which trust anchors it hands out
// now, by creating a Dapr-enabled pod in dry-run mode and reading what its
// daprd got. Before applications restart on a phase they must be the anchors
// the phase published: an injector serving stale ones (dapr/dapr#7161) would
// start every restarted application on the old bundle.
func (p *pass) checkInjector(ctx context.Context) error {
	obj, rot := p.obj, p.rot()
	probe := injectorProbe(obj)
	if err := p.Create(ctx, probe, client.DryRunAll); err != nil {
		return stall(rotatorv1.InjectorNotVerifiedReason,
			"no application was restarted: a Dapr-enabled probe pod could not be created in dry-run mode to check the sidecar injector: %v", err).
			retry(p.pollInterval())
	}
	got, problem := convergence.Anchors(probe)
	if problem != "" {
		return stall(rotatorv1.InjectorNotVerifiedReason,
			"no application was restarted: a Dapr-enabled probe pod created in dry-run mode got no usable trust anchors from the sidecar injector (%s); is Dapr's injector running and its webhook registered?", problem).
			retry(p.pollInterval())
	}
	want, err := publishedAnchors(p.target.ConfigMap, keysOf(obj).CA)
	if err != nil {
		return err
	}
	if !slices.Equal(got, want) {
		return stall(rotatorv1.InjectorStaleReason,
			"the sidecar injector hands out trust anchors [%s], but rotation %s published [%s]%s: restarting applications now would start them on the old bundle, so none was restarted; restart the injector (or check what it reads), and the rotation goes on by itself once it serves the published anchors",
			strings.Join(convergence.ShortAll(got), " "), rot.ID, strings.Join(convergence.ShortAll(want), " "), phaseSuffix(rot)).retry(p.pollInterval())
	}
	return nil
}

// injectorProbe is the pod whose dry-run creation asks the injector: Dapr
// enabled, and acceptable under the restricted Pod Security profile.
func injectorProbe(obj *rotatorv1.MTLSRootRotation) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: obj.Name + "-injector-probe", Namespace: obj.Namespace, Annotations: map[string]string{
			rotatorv1.DaprEnabledAnnotation: rotatorv1.DaprEnabledAnnotationValue, "dapr.io/app-id": obj.Name + "-injector-probe",
		}},
		Spec: corev1.PodSpec{
			SecurityContext: &corev1.PodSecurityContext{RunAsNonRoot: ptr.To(true), SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}},
			Containers: []corev1.Container{{Name: "probe", Image: "mtls-rotator.invalid/injector-probe",
				SecurityContext: &corev1.SecurityContext{AllowPrivilegeEscalation: ptr.To(false), Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}}}},
		},
	}
}

// publishedAnchors are the fingerprints of the anchors the ConfigMap Sentry
// and the injector read holds.
func publishedAnchors(cm *corev1.ConfigMap, key string) ([]string, error) {
	certs, err := pki.ParseCertificates([]byte(cm.Data[key]))
	if err != nil {
		return nil, err
	}
	fingerprints := make([]string, 0, len(certs))
	for _, c := range certs {
		fingerprints = append(fingerprints, pki.Fingerprint(c))
	}
	return fingerprints, nil
}

package dapr

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"
)

// SystemConfiguration is the Configuration Dapr's control plane reads
// (Sentry's --config default).
const SystemConfiguration = "daprsystem"

// MTLS is the mTLS part of the control plane's Configuration, which Sentry
// reads when it starts.
type MTLS struct {
	// WorkloadCertTTL is how long the SVIDs Sentry signs live; they renew at
	// half-life.
	WorkloadCertTTL time.Duration
	// AllowedClockSkew backdates each SVID; it must be well under the TTL,
	// or the SVID is due for renewal as soon as it is signed.
	AllowedClockSkew time.Duration
}

// InstallConfiguration installs Dapr's Configuration CRD, from the build's
// crds/ (see hack/build-dapr.sh), and writes the control plane's
// Configuration in namespace with mtls.
func InstallConfiguration(ctx context.Context, c client.Client, namespace string, mtls MTLS) error {
	binary, err := Binary("sentry")
	if err != nil {
		return err
	}
	raw, err := os.ReadFile(filepath.Join(filepath.Dir(binary), "crds", "configuration.yaml"))
	if err != nil {
		return fmt.Errorf("Dapr's Configuration CRD: %w", err)
	}
	crd := &unstructured.Unstructured{}
	if err := yaml.Unmarshal(raw, &crd.Object); err != nil {
		return fmt.Errorf("Dapr's Configuration CRD: %w", err)
	}
	if err := c.Create(ctx, crd); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("installing Dapr's Configuration CRD: %w", err)
	}
	conf := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "dapr.io/v1alpha1", "kind": "Configuration",
		"metadata": map[string]any{"name": SystemConfiguration, "namespace": namespace},
		"spec": map[string]any{"mtls": map[string]any{
			"enabled": true, "controlPlaneTrustDomain": "cluster.local",
			"sentryAddress":    "dapr-sentry." + namespace + ".svc.cluster.local:443",
			"workloadCertTTL":  mtls.WorkloadCertTTL.String(),
			"allowedClockSkew": mtls.AllowedClockSkew.String(),
		}},
	}}
	// The API serves the new kind once the CRD is established.
	var last error
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		existing := &unstructured.Unstructured{}
		existing.SetGroupVersionKind(conf.GroupVersionKind())
		err := c.Get(ctx, client.ObjectKeyFromObject(conf), existing)
		switch {
		case apierrors.IsNotFound(err):
			err = c.Create(ctx, conf.DeepCopy())
		case err == nil:
			existing.Object["spec"] = conf.Object["spec"]
			err = c.Update(ctx, existing)
		}
		last = err
		return err == nil, nil
	})
	if err != nil {
		return fmt.Errorf("writing the Configuration %s/%s: %w (last: %w)", namespace, SystemConfiguration, err, last)
	}
	return nil
}

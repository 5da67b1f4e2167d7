package dapr

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// InjectorName names the injector's MutatingWebhookConfiguration and
// Service, as Dapr's chart does (the injector patches the configuration's
// caBundle by this name).
const InjectorName = "dapr-sidecar-injector"

// RegisterInjector creates the injector's Service and webhook configuration
// as Dapr's chart does, but for a process on this host: the Service is an
// ExternalName of localhost, so the API server reaches the webhook on port
// while it verifies the name Sentry signs (dapr-sidecar-injector.<ns>.svc).
// The injector fills in the caBundle with its trust anchors.
func RegisterInjector(ctx context.Context, c client.Client, namespace string, port int) error {
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: InjectorName, Namespace: namespace}, Spec: corev1.ServiceSpec{
		Type: corev1.ServiceTypeExternalName, ExternalName: "localhost",
		Ports: []corev1.ServicePort{{Name: "https", Port: int32(port)}},
	}}
	webhook := &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: InjectorName, Labels: map[string]string{"app": InjectorName}},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name:               "sidecar-injector.dapr.io",
			ReinvocationPolicy: ptr.To(admissionregistrationv1.IfNeededReinvocationPolicy),
			ClientConfig: admissionregistrationv1.WebhookClientConfig{Service: &admissionregistrationv1.ServiceReference{
				Namespace: namespace, Name: InjectorName, Path: ptr.To("/mutate"), Port: ptr.To(int32(port)),
			}},
			Rules: []admissionregistrationv1.RuleWithOperations{{
				Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
				Rule:       admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}},
			}},
			// The chart's default: a pod is admitted bare when the injector
			// cannot be reached.
			FailurePolicy:           ptr.To(admissionregistrationv1.Ignore),
			SideEffects:             ptr.To(admissionregistrationv1.SideEffectClassNone),
			AdmissionReviewVersions: []string{"v1", "v1beta1"},
			TimeoutSeconds:          ptr.To[int32](10),
		}},
	}
	if err := UnregisterInjector(ctx, c, namespace); err != nil {
		return fmt.Errorf("replacing the injector's registration: %w", err)
	}
	for _, obj := range []client.Object{svc, webhook} {
		if err := c.Create(ctx, obj); err != nil {
			return fmt.Errorf("creating %T %s: %w", obj, obj.GetName(), err)
		}
	}
	return nil
}

// pointWebhook moves the injector's Service and webhook to port: a new
// process serves there.
func pointWebhook(ctx context.Context, c client.Client, namespace string, port int) error {
	webhook := &admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: InjectorName}}
	patch := fmt.Appendf(nil, `[{"op":"replace","path":"/webhooks/0/clientConfig/service/port","value":%d}]`, port)
	if err := c.Patch(ctx, webhook, client.RawPatch(types.JSONPatchType, patch)); err != nil {
		return fmt.Errorf("moving the injector's webhook to port %d: %w", port, err)
	}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: InjectorName, Namespace: namespace}}
	patch = fmt.Appendf(nil, `[{"op":"replace","path":"/spec/ports/0/port","value":%d}]`, port)
	if err := c.Patch(ctx, svc, client.RawPatch(types.JSONPatchType, patch)); err != nil {
		return fmt.Errorf("moving the injector's Service to port %d: %w", port, err)
	}
	return nil
}

// UnregisterInjector removes what RegisterInjector made.
func UnregisterInjector(ctx context.Context, c client.Client, namespace string) error {
	for _, obj := range []client.Object{
		&admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: InjectorName}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: InjectorName, Namespace: namespace}},
	} {
		if err := c.Delete(ctx, obj); err != nil && !apierrors.IsNotFound(err) {
			return err
		}
	}
	return nil
}

// WritePodToken writes to file a token of pod's ServiceAccount, bound to
// pod, for the audiences Sentry's Kubernetes validator asks for: what
// kubelet projects into a control-plane pod of Dapr.
func WritePodToken(ctx context.Context, c client.Client, pod *corev1.Pod, file string) error {
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: pod.Spec.ServiceAccountName, Namespace: pod.Namespace}}
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences:         []string{"dapr.io/sentry", "spiffe://cluster.local/ns/" + pod.Namespace + "/dapr-sentry"},
		ExpirationSeconds: ptr.To[int64](3600),
		BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}
	if err := c.SubResource("token").Create(ctx, sa, req); err != nil {
		return fmt.Errorf("requesting a token for pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return os.WriteFile(file, []byte(req.Status.Token), 0o600)
}

// Mirror keeps a directory holding one key of a ConfigMap as kubelet keeps
// a mounted ConfigMap (its AtomicWriter): the file <dir>/<key> is a symlink
// into ..data, itself a symlink to a directory of the content's version,
// swapped atomically on a change, the old version removed. This is what
// Dapr's control plane reads its trust anchors from, with the effects that
// has on a watch of the file. Hold stops it, as a kubelet that has not
// refreshed the mount yet.
type Mirror struct {
	// File is the path a pod reads: <dir>/<key>.
	File string
	dir  string
	mu   sync.Mutex
	held bool
	last string
	n    int
}

// MirrorConfigMap writes key of the ConfigMap into dir now, and again each
// time it changes, until ctx ends.
func MirrorConfigMap(ctx context.Context, c client.Reader, cm types.NamespacedName, key, dir string) (*Mirror, error) {
	m := &Mirror{File: filepath.Join(dir, key), dir: dir}
	if err := m.sync(ctx, c, cm, key); err != nil {
		return nil, err
	}
	if err := os.Symlink(filepath.Join("..data", key), m.File); err != nil {
		return nil, err
	}
	go every(ctx, func() { _ = m.sync(ctx, c, cm, key) })
	return m, nil
}

// Hold stops the mirror (true) or lets it go on (false).
func (m *Mirror) Hold(held bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.held = held
}

func (m *Mirror) sync(ctx context.Context, c client.Reader, key types.NamespacedName, dataKey string) error {
	cm := &corev1.ConfigMap{}
	if err := c.Get(ctx, key, cm); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	content := cm.Data[dataKey]
	if m.held || (m.n > 0 && content == m.last) {
		return nil
	}
	m.n++
	version := fmt.Sprintf("..%d", m.n)
	if err := os.MkdirAll(filepath.Join(m.dir, version), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(m.dir, version, dataKey), []byte(content), 0o644); err != nil {
		return err
	}
	tmp := filepath.Join(m.dir, "..data_tmp")
	_ = os.Remove(tmp)
	if err := os.Symlink(version, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(m.dir, "..data")); err != nil {
		return err
	}
	if m.n > 1 {
		_ = os.RemoveAll(filepath.Join(m.dir, fmt.Sprintf("..%d", m.n-1)))
	}
	m.last = content
	return nil
}

package cli

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlconfig "sigs.k8s.io/controller-runtime/pkg/client/config"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/bundle"
)

// newClient connects to the cluster of kubeconfig, or of KUBECONFIG,
// ~/.kube/config or the in-cluster service account when it is empty.
func newClient(kubeconfig string) (client.Client, error) {
	cfg, err := ctrlconfig.GetConfig()
	if kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	}
	if err != nil {
		return nil, fmt.Errorf("connecting to the cluster: %w", err)
	}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, err
	}
	if err := rotatorv1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	return client.New(cfg, client.Options{Scheme: scheme})
}

// connect returns a client and a context that bounds one command.
func connect(kubeconfig string) (client.Client, context.Context, context.CancelFunc, error) {
	c, err := newClient(kubeconfig)
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	return c, ctx, cancel, nil
}

// export writes the bundle Sentry holds to a directory: ca.crt, issuer.crt
// and issuer.key, byte for byte, warning when Sentry would refuse it.
func export(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("certs export", stderr)
	out := fs.String("out", "", "directory to write ca.crt, issuer.crt and issuer.key into (required)")
	namespace := fs.String("namespace", "dapr-system", "namespace of the Dapr control plane")
	secret := fs.String("secret", rotatorv1.DefaultBundleName, "Secret Sentry reads")
	caKey := fs.String("ca-key", rotatorv1.DefaultCAKey, "data key of the trust anchors")
	certKey := fs.String("issuer-cert-key", rotatorv1.DefaultIssuerCertKey, "data key of the issuer certificate")
	keyKey := fs.String("issuer-key-key", rotatorv1.DefaultIssuerKeyKey, "data key of the issuer private key")
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig file (default: KUBECONFIG, ~/.kube/config or in-cluster)")
	force := fs.Bool("force", false, "overwrite files that exist")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *out == "" {
		return fmt.Errorf("%w: certs export: --out is required", errUsage)
	}
	c, ctx, cancel, err := connect(*kubeconfig)
	if err != nil {
		return err
	}
	defer cancel()
	s := &corev1.Secret{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: *namespace, Name: *secret}, s); err != nil {
		return fmt.Errorf("reading Secret %s/%s: %w", *namespace, *secret, err)
	}
	keys := bundle.Keys{CA: *caKey, IssuerCert: *certKey, IssuerKey: *keyKey}
	b := bundle.FromSecret(s.Data, keys)
	if b.IsEmpty() {
		return fmt.Errorf("Secret %s/%s holds no bundle (Sentry generates one when it starts with none)", *namespace, *secret)
	}
	if err := writeFiles(*out, []outputFile{
		{name: "ca.crt", data: b.TrustAnchors, mode: 0o644},
		{name: "issuer.crt", data: b.IssuerChain, mode: 0o644},
		{name: "issuer.key", data: b.IssuerKey, mode: 0o600},
	}, *force); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote ca.crt, issuer.crt and issuer.key of Secret %s/%s to %s\n", *namespace, *secret, *out)
	if parsed, err := b.Validate(time.Now()); err != nil {
		fmt.Fprintf(stderr, "warning: Dapr Sentry would refuse this bundle: %v\n", err)
	} else {
		fmt.Fprintf(stdout, "trust anchors: %d; issuer expires %s\n", len(parsed.Anchors), parsed.Issuer().NotAfter.Format(time.RFC3339))
	}
	return nil
}

// status prints every MTLSRootRotation with its expiries, like 'dapr mtls
// expiry' for both root and issuer.
func status(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("status", stderr)
	namespace := fs.String("namespace", "", "only this namespace (default: every namespace)")
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig file (default: KUBECONFIG, ~/.kube/config or in-cluster)")
	if err := parse(fs, args); err != nil {
		return err
	}
	c, ctx, cancel, err := connect(*kubeconfig)
	if err != nil {
		return err
	}
	defer cancel()
	list := &rotatorv1.MTLSRootRotationList{}
	if err := c.List(ctx, list, client.InNamespace(*namespace)); err != nil {
		return fmt.Errorf("listing MTLSRootRotations: %w", err)
	}
	if len(list.Items) == 0 {
		fmt.Fprintln(stdout, "no MTLSRootRotation found")
		return nil
	}
	sort.Slice(list.Items, func(i, j int) bool {
		a, b := list.Items[i], list.Items[j]
		return a.Namespace < b.Namespace || (a.Namespace == b.Namespace && a.Name < b.Name)
	})
	now := time.Now()
	w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NAMESPACE\tNAME\tREADY\tSTEP\tROOT EXPIRES\tISSUER EXPIRES\tNEXT RENEWAL\tMESSAGE")
	for _, obj := range list.Items {
		step := "-"
		if r := obj.Status.Rotation; r != nil {
			step = string(r.Step)
			if r.Phase != "" && r.Step != rotatorv1.StepCompleted {
				step += "/" + string(r.Phase)
			}
		}
		ready := "Unknown"
		if c := conditions.Get(&obj, meta.ReadyCondition); c != nil {
			ready = string(c.Status)
		}
		renewal := "-"
		if obj.Status.NextRenewal != nil {
			renewal = when(obj.Status.NextRenewal.Time, now)
		}
		msg := conditions.GetMessage(&obj, meta.ReadyCondition)
		if conditions.IsTrue(&obj, rotatorv1.ExpiringSoonCondition) {
			msg = conditions.GetReason(&obj, rotatorv1.ExpiringSoonCondition) + "; " + msg
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", obj.Namespace, obj.Name, ready, step,
			expiry(obj.Status.Root, now), expiry(obj.Status.Issuer, now), renewal, oneLine(msg, 100))
	}
	return w.Flush()
}

func expiry(c *rotatorv1.CertificateStatus, now time.Time) string {
	if c == nil {
		return "-"
	}
	return when(c.NotAfter.Time, now)
}

// when is a moment with how far it is from now.
func when(t, now time.Time) string {
	d := t.Sub(now)
	switch {
	case d < 0:
		return t.UTC().Format(time.RFC3339) + " (EXPIRED)"
	case d >= 48*time.Hour:
		return fmt.Sprintf("%s (%dd)", t.UTC().Format(time.RFC3339), int(d/(24*time.Hour)))
	case d >= time.Hour:
		return fmt.Sprintf("%s (%dh)", t.UTC().Format(time.RFC3339), int(d/time.Hour))
	}
	return fmt.Sprintf("%s (%dm)", t.UTC().Format(time.RFC3339), int(d/time.Minute))
}

func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		return s[:n-3] + "..."
	}
	return s
}

package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/convergence"
	"github.com/mtls-rotator/mtls-rotator/internal/pki"
)

// errUnconverged marks an inspection that found pods not trusting the
// required root: exit status 3.
var errUnconverged = errors.New("some Dapr pods do not trust the required root")

// inspection is what inspect reports, as JSON and as text.
type inspection struct {
	ControlPlane string `json:"controlPlane"`
	// Root is the fingerprint every pod must trust, and where it was read.
	Root         string           `json:"root"`
	RootFrom     string           `json:"rootFrom"`
	Pods         int              `json:"pods"`
	Converged    int              `json:"converged"`
	NotConverged []unconvergedPod `json:"notConverged"`
}

type unconvergedPod struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Owner     string `json:"owner"`
	// Restartable says whether a rotation can restart the pod through its
	// owner (a Deployment, StatefulSet, DaemonSet or Argo Rollout).
	Restartable bool     `json:"restartable"`
	Roots       []string `json:"roots"`
	Reason      string   `json:"reason"`
}

// inspect lists every Dapr sidecar pod of a control plane that does not
// trust the root published last, with its owner and the roots it holds.
func inspect(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("inspect", stderr)
	namespace := fs.String("namespace", "dapr-system", "namespace of the Dapr control plane")
	output := fs.String("o", "text", "output: text or json")
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig file (default: KUBECONFIG, ~/.kube/config or in-cluster)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *output != "text" && *output != "json" {
		return fmt.Errorf("%w: inspect: -o must be text or json, not %q", errUsage, *output)
	}
	c, ctx, cancel, err := connect(*kubeconfig)
	if err != nil {
		return err
	}
	defer cancel()
	in, err := inspectCluster(ctx, c, *namespace)
	if err != nil {
		return err
	}
	if *output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		err = enc.Encode(in)
	} else {
		err = printInspection(stdout, in)
	}
	if err == nil && len(in.NotConverged) > 0 {
		return errUnconverged
	}
	return err
}

// inspectCluster reads the required root and the Dapr sidecar pods of the
// control plane in namespace, and names those that do not trust it.
func inspectCluster(ctx context.Context, c client.Client, namespace string) (*inspection, error) {
	root, from, err := requiredRoot(ctx, c, namespace)
	if err != nil {
		return nil, err
	}
	pods := &corev1.PodList{}
	if err := c.List(ctx, pods, client.MatchingLabels{convergence.InjectedLabel: "true"}); err != nil {
		return nil, fmt.Errorf("listing Dapr sidecar pods: %w", err)
	}
	var observed []convergence.Pod
	byName := map[string]*corev1.Pod{}
	for i := range pods.Items {
		o, live := convergence.Observe(&pods.Items[i])
		if live && (o.ControlPlane == "" || o.ControlPlane == namespace) {
			observed = append(observed, o)
			byName[o.Namespace+"/"+o.Name] = &pods.Items[i]
		}
	}
	r := convergence.Summarize(observed, convergence.Requirement{Roots: []string{root}}, len(observed))
	in := &inspection{ControlPlane: namespace, Root: root, RootFrom: from, Pods: r.Total, Converged: r.Converged, NotConverged: []unconvergedPod{}}
	for _, s := range r.Stragglers {
		owner, restartable, err := restartOwner(ctx, c, byName[s.Namespace+"/"+s.Name])
		if err != nil {
			return nil, err
		}
		in.NotConverged = append(in.NotConverged, unconvergedPod{Namespace: s.Namespace, Name: s.Name, Owner: owner,
			Restartable: restartable, Roots: convergence.ShortAll(s.Anchors), Reason: s.Reason})
	}
	return in, nil
}

// requiredRoot is the root every pod must trust: the root the
// MTLSRootRotation of the control plane published last, or else the newest
// anchor of the ConfigMap Sentry reads.
func requiredRoot(ctx context.Context, c client.Client, namespace string) (root, from string, err error) {
	list := &rotatorv1.MTLSRootRotationList{}
	if err := c.List(ctx, list, client.InNamespace(namespace)); err != nil && !apierrors.IsNotFound(err) {
		return "", "", fmt.Errorf("listing MTLSRootRotations: %w", err)
	}
	for _, obj := range list.Items {
		if obj.Status.Root != nil {
			return obj.Status.Root.SHA256Fingerprint, "MTLSRootRotation " + namespace + "/" + obj.Name, nil
		}
	}
	cm := &corev1.ConfigMap{}
	name := rotatorv1.DefaultBundleName
	if err := c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, cm); err != nil {
		return "", "", fmt.Errorf("no MTLSRootRotation in %s has published a root, and ConfigMap %s/%s cannot be read: %w", namespace, namespace, name, err)
	}
	anchors, err := pki.ParseCertificates([]byte(cm.Data["ca.crt"]))
	if err != nil {
		return "", "", fmt.Errorf("no MTLSRootRotation in %s has published a root, and ConfigMap %s/%s holds no trust anchors: %w", namespace, namespace, name, err)
	}
	return pki.Fingerprint(anchors[len(anchors)-1]), "ConfigMap " + namespace + "/" + name, nil
}

// restartOwner names the workload that owns a pod through its controllers
// (a ReplicaSet's Deployment or Argo Rollout), and whether a rotation can
// restart it.
func restartOwner(ctx context.Context, c client.Client, pod *corev1.Pod) (string, bool, error) {
	ref := metav1.GetControllerOf(pod)
	if ref == nil {
		return "none (a bare pod)", false, nil
	}
	if ref.Kind == "ReplicaSet" && strings.HasPrefix(ref.APIVersion, "apps/") {
		rs := &appsv1.ReplicaSet{}
		err := c.Get(ctx, client.ObjectKey{Namespace: pod.Namespace, Name: ref.Name}, rs)
		if apierrors.IsNotFound(err) {
			return "ReplicaSet " + ref.Name, false, nil
		}
		if err != nil {
			return "", false, fmt.Errorf("reading ReplicaSet %s/%s: %w", pod.Namespace, ref.Name, err)
		}
		if up := metav1.GetControllerOf(rs); up != nil {
			ref = up
		}
	}
	restartable := (strings.HasPrefix(ref.APIVersion, "apps/") &&
		(ref.Kind == string(rotatorv1.Deployment) || ref.Kind == string(rotatorv1.StatefulSet) || ref.Kind == string(rotatorv1.DaemonSet))) ||
		(strings.HasPrefix(ref.APIVersion, "argoproj.io/") && ref.Kind == "Rollout")
	return ref.Kind + " " + ref.Name, restartable, nil
}

func printInspection(stdout io.Writer, in *inspection) error {
	fmt.Fprintf(stdout, "control plane %s: %d of %d Dapr pods trust root %s (from %s)\n",
		in.ControlPlane, in.Converged, in.Pods, convergence.Short(in.Root), in.RootFrom)
	if len(in.NotConverged) == 0 {
		return nil
	}
	w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NAMESPACE\tPOD\tOWNER\tRESTARTABLE\tROOTS\tREASON")
	for _, p := range in.NotConverged {
		roots := strings.Join(p.Roots, ",")
		if roots == "" {
			roots = "-"
		}
		restartable := "no"
		if p.Restartable {
			restartable = "yes"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", p.Namespace, p.Name, p.Owner, restartable, roots, p.Reason)
	}
	return w.Flush()
}

package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/mtls-rotator/mtls-rotator/e2e/cluster"
)

const (
	operatorNamespace      = "mtls-rotator-system"
	operatorServiceAccount = "mtls-rotator"
	operatorClusterRole    = "mtls-rotator-manager"
	daprNamespace          = "dapr-system"
)

// runOperator starts the operator in the background as its ServiceAccount:
// the ClusterRole comes from config/rbac/role.yaml (generated from markers),
// and the kubeconfig it gets carries only that ServiceAccount's token. The
// arguments after the flags (after "--") are passed to the operator.
func runOperator(ctx context.Context, dir string, args []string) error {
	fs := flag.NewFlagSet("operator", flag.ContinueOnError)
	binary := fs.String("binary", "bin/mtls-rotator", "the operator binary")
	if err := fs.Parse(args); err != nil {
		return err
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	bin, err := filepath.Abs(*binary)
	if err != nil {
		return err
	}
	root, err := cluster.RepoRoot()
	if err != nil {
		return err
	}
	adminKubeconfig := filepath.Join(dir, "kubeconfig")
	kubectl := filepath.Join(root, "bin", "k8s", "assets", "kubectl")
	c, err := newClient(adminKubeconfig)
	if err != nil {
		return err
	}
	// The generated Role lives in the Dapr namespace.
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: daprNamespace}}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating namespace %s: %w", daprNamespace, err)
	}
	if out, err := exec.CommandContext(ctx, kubectl, "--kubeconfig="+adminKubeconfig, "apply", "-f",
		filepath.Join(root, "config", "rbac", "role.yaml")).CombinedOutput(); err != nil {
		return fmt.Errorf("applying the generated ClusterRole and Role: %w: %s", err, out)
	}
	for _, obj := range []client.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: operatorNamespace}},
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: operatorServiceAccount, Namespace: operatorNamespace}},
		&rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: operatorClusterRole},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: operatorClusterRole},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: operatorServiceAccount, Namespace: operatorNamespace}},
		},
		&rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: operatorClusterRole, Namespace: daprNamespace},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: operatorClusterRole},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: operatorServiceAccount, Namespace: operatorNamespace}},
		},
	} {
		if err := c.Create(ctx, obj); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("creating %T %s: %w", obj, obj.GetName(), err)
		}
	}
	saKubeconfig, err := serviceAccountKubeconfig(ctx, adminKubeconfig, filepath.Join(dir, "operator.kubeconfig"))
	if err != nil {
		return err
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	// The operator takes its kubeconfig from the environment.
	if err := os.Setenv("KUBECONFIG", saKubeconfig); err != nil {
		return err
	}
	healthAddr := "127.0.0.1:" + strconv.Itoa(port)
	metricsPort, err := freePort()
	if err != nil {
		return err
	}
	metricsAddr := "127.0.0.1:" + strconv.Itoa(metricsPort)
	// For the demo and for curl: where the metrics are served.
	if err := os.WriteFile(filepath.Join(dir, "metrics-addr"), []byte(metricsAddr+"\n"), 0o644); err != nil {
		return err
	}
	fmt.Printf("starting the operator as ServiceAccount %s/%s (log: %s)\n", operatorNamespace, operatorServiceAccount,
		filepath.Join(dir, "logs", "mtls-rotator.log"))
	return cluster.StartDetachedProcess(ctx, dir, "mtls-rotator", bin,
		append([]string{"--health-addr=" + healthAddr, "--metrics-addr=" + metricsAddr, "--namespaces=dapr-system"}, fs.Args()...),
		cluster.HTTPReady("http://"+healthAddr+"/readyz"))
}

// serviceAccountKubeconfig writes a kubeconfig authenticating as the
// operator's ServiceAccount with a token from the TokenRequest API.
func serviceAccountKubeconfig(ctx context.Context, adminKubeconfig, path string) (string, error) {
	admin, err := clientcmd.LoadFromFile(adminKubeconfig)
	if err != nil {
		return "", err
	}
	cfg, err := clientcmd.NewDefaultClientConfig(*admin, nil).ClientConfig()
	if err != nil {
		return "", err
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return "", err
	}
	tr, err := kube.CoreV1().ServiceAccounts(operatorNamespace).CreateToken(ctx, operatorServiceAccount,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](24 * 3600)}}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("requesting a token for the operator: %w", err)
	}
	out := clientcmdapi.NewConfig()
	out.Clusters["local"] = admin.Clusters[admin.Contexts[admin.CurrentContext].Cluster]
	out.AuthInfos["mtls-rotator"] = &clientcmdapi.AuthInfo{Token: tr.Status.Token}
	out.Contexts["local"] = &clientcmdapi.Context{Cluster: "local", AuthInfo: "mtls-rotator", Namespace: operatorNamespace}
	out.CurrentContext = "local"
	if err := clientcmd.WriteToFile(*out, path); err != nil {
		return "", err
	}
	return path, os.Chmod(path, 0o600)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

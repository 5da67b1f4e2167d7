package main

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/mtls-rotator/mtls-rotator/internal/testenv"
)

// managerArgs returns the args of the manager container of every Deployment
// in rendered YAML.
func managerArgs(t *testing.T, rendered []byte) [][]string {
	t.Helper()
	var all [][]string
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(rendered), -1) {
		var d struct {
			Kind string `json:"kind"`
			Spec struct {
				Template struct {
					Spec struct {
						Containers []struct {
							Name string   `json:"name"`
							Args []string `json:"args"`
						} `json:"containers"`
					} `json:"spec"`
				} `json:"template"`
			} `json:"spec"`
		}
		if err := yaml.Unmarshal([]byte(doc), &d); err != nil {
			t.Fatalf("rendered YAML: %v", err)
		}
		for _, c := range d.Spec.Template.Spec.Containers {
			if d.Kind == "Deployment" && c.Name == "manager" {
				all = append(all, c.Args)
			}
		}
	}
	return all
}

// TestManifestsPassFlagsTheManagerKnows: the args config/manager and the Helm
// chart give the manager are flags it parses; an unknown one would crash-loop
// every install.
func TestManifestsPassFlagsTheManagerKnows(t *testing.T) {
	manifest, err := os.ReadFile(filepath.Join("config", "manager", "manager.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	renderings := map[string][]byte{"config/manager": manifest}
	helm := filepath.Join("bin", "k8s", "assets", "helm")
	if assets := os.Getenv("KUBEBUILDER_ASSETS"); assets != "" {
		helm = filepath.Join(assets, "helm")
	}
	for name, set := range map[string][]string{
		"chart defaults": nil,
		"chart options":  {"--set", "leaderElection.enabled=false", "--set", "metrics.enabled=false", "--set", "logLevel=debug"},
	} {
		out, err := exec.Command(helm, append([]string{"template", "r", "charts/mtls-rotator"}, set...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("helm template (run 'make binaries' for bin/k8s/assets/helm): %v\n%s", err, out)
		}
		renderings[name] = out
	}
	for name, rendered := range renderings {
		args := managerArgs(t, rendered)
		if len(args) != 1 {
			t.Fatalf("%s: %d manager containers", name, len(args))
		}
		if _, err := parseFlags(args[0], io.Discard); err != nil {
			t.Errorf("%s: the manager refuses %v: %v", name, args[0], err)
		}
	}
	if _, err := parseFlags([]string{"--leader-elect"}, io.Discard); err == nil {
		t.Error("an unknown flag is accepted")
	}
}

// TestStartSaysWhenCertManagerIsMissing: against an API server without
// cert-manager's CRDs, the operator stops at start naming what is missing,
// instead of crash-looping on its informers.
func TestStartSaysWhenCertManagerIsMissing(t *testing.T) {
	cfg, stop, err := testenv.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stop() })
	err = requireCertManager(cfg)
	if err == nil || !strings.Contains(err.Error(), "cert-manager is not installed: the API server does not serve cert-manager.io/v1 Certificate") {
		t.Fatalf("want cert-manager named as missing, got %v", err)
	}
}

// TestMemoryLimitFollowsTheContainer: 90% of the container's limit, unless
// GOMEMLIMIT says otherwise; nothing when the variable is missing or wrong.
func TestMemoryLimitFollowsTheContainer(t *testing.T) {
	for _, tt := range []struct {
		env  map[string]string
		want int64
		ok   bool
	}{
		{map[string]string{"MEMORY_LIMIT": "536870912"}, 483183819, true},
		{map[string]string{"MEMORY_LIMIT": "536870912", "GOMEMLIMIT": "300MiB"}, 0, false},
		{map[string]string{}, 0, false},
		{map[string]string{"MEMORY_LIMIT": "lots"}, 0, false},
	} {
		got, ok := memoryLimit(func(k string) string { return tt.env[k] })
		if got != tt.want || ok != tt.ok {
			t.Errorf("memoryLimit(%v) = %d, %v; want %d, %v", tt.env, got, ok, tt.want, tt.ok)
		}
	}
}

package health

import (
	"os"
	"testing"

	"github.com/fluxcd/cli-utils/pkg/kstatus/status"
	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/mtls-rotator/mtls-rotator/internal/testenv"
)

// Script reads the shipped Argo CD health script.
func script(t *testing.T) string {
	t.Helper()
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(root + "/config/argocd/health.lua")
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func object(generation, observed int64, suspend bool, conditions ...map[string]any) map[string]any {
	conds := make([]any, 0, len(conditions))
	for _, c := range conditions {
		conds = append(conds, c)
	}
	return map[string]any{
		"apiVersion": "mtls.rotator.dev/v1alpha1", "kind": "MTLSRootRotation",
		"metadata": map[string]any{"name": "dapr", "namespace": "dapr-system", "generation": generation},
		"spec":     map[string]any{"suspend": suspend, "trigger": "a"},
		"status":   map[string]any{"observedGeneration": observed, "conditions": conds},
	}
}

func cond(typ, st, reason, msg string) map[string]any {
	return map[string]any{"type": typ, "status": st, "reason": reason, "message": msg, "lastTransitionTime": "2026-11-26T00:00:00Z"}
}

func TestArgoCDHealthAgreesWithKstatus(t *testing.T) {
	lua := script(t)
	tests := []struct {
		name    string
		obj     map[string]any
		health  string
		message string
		kstatus status.Status
	}{
		{"completed", object(2, 2, false, cond("Ready", "True", "Succeeded", "rotation r-1 completed")),
			Healthy, "rotation r-1 completed", status.CurrentStatus},
		{"completed, expiring soon", object(2, 2, false, cond("Ready", "True", "Succeeded", "rotation r-1 completed"),
			cond("ExpiringSoon", "True", "IssuerExpiringSoon", "issuer certificate expires at X")),
			Healthy, "rotation r-1 completed; issuer certificate expires at X", status.CurrentStatus},
		{"rotating", object(2, 2, false, cond("Ready", "Unknown", "Progressing", "restarting"), cond("Reconciling", "True", "Progressing", "rotation r-1: restarted Deployment dapr-system/dapr-sentry")),
			Progressing, "rotation r-1: restarted Deployment dapr-system/dapr-sentry", status.InProgressStatus},
		{"retrying", object(2, 2, false, cond("Ready", "False", "ProgressingWithRetry", "boom"), cond("Reconciling", "True", "ProgressingWithRetry", "boom")),
			Progressing, "boom", status.InProgressStatus},
		{"stalled", object(2, 2, false, cond("Ready", "False", "RolledBack", "sentry did not roll out"), cond("Stalled", "True", "RolledBack", "sentry did not roll out")),
			Degraded, "RolledBack: sentry did not roll out", status.FailedStatus},
		{"spec not observed yet", object(3, 2, false, cond("Ready", "True", "Succeeded", "old")),
			Progressing, "Waiting for the operator to observe the latest spec", status.InProgressStatus},
		{"new object (the CRD defaults observedGeneration to -1)", map[string]any{"apiVersion": "mtls.rotator.dev/v1alpha1", "kind": "MTLSRootRotation",
			"metadata": map[string]any{"name": "dapr", "namespace": "dapr-system", "generation": int64(1)},
			"status":   map[string]any{"observedGeneration": int64(-1)}},
			Progressing, "Waiting for the operator to observe the latest spec", status.InProgressStatus},
		{"suspended", object(2, 2, true, cond("Ready", "True", "Succeeded", "done")), Suspended, "Suspended: spec.suspend is true", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			got, err := Evaluate(lua, tt.obj)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got).To(Equal(Result{Status: tt.health, Message: tt.message}))
			if tt.kstatus != "" {
				res, err := status.Compute(&unstructured.Unstructured{Object: tt.obj})
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(res.Status).To(Equal(tt.kstatus), "kstatus: %s", res.Message)
			}
		})
	}
}

func TestEvaluateReportsBrokenScripts(t *testing.T) {
	g := NewWithT(t)
	_, err := Evaluate("return 42", map[string]any{})
	g.Expect(err).To(MatchError(ContainSubstring("not a table")))
	_, err = Evaluate("this is not lua", map[string]any{})
	g.Expect(err).To(MatchError(ContainSubstring("running the health script")))
}

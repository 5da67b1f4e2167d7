package controllers

import (
	"os"
	"regexp"
	"testing"

	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"

	"github.com/mtls-rotator/mtls-rotator/internal/testenv"
)

// exportedMetricNames are the metric families the operator's collectors describe.
func exportedMetricNames(t *testing.T) map[string]bool {
	t.Helper()
	m := NewMetrics(runtime.NewScheme(), nil)
	ch := make(chan *prometheus.Desc, 100)
	for _, c := range m.Collectors() {
		c.Describe(ch)
	}
	close(ch)
	fqName := regexp.MustCompile(`fqName: "([^"]+)"`)
	names := map[string]bool{}
	for d := range ch {
		if match := fqName.FindStringSubmatch(d.String()); match != nil {
			names[match[1]] = true
		}
	}
	return names
}

// TestPrometheusRuleUsesExportedMetrics: every alert of config/prometheus
// reads metrics the operator exports, and the three alerts are there.
func TestPrometheusRuleUsesExportedMetrics(t *testing.T) {
	g := NewWithT(t)
	root, err := testenv.RepoRoot()
	g.Expect(err).NotTo(HaveOccurred())
	data, err := os.ReadFile(root + "/config/prometheus/rule.yaml")
	g.Expect(err).NotTo(HaveOccurred())
	var rule struct {
		Kind string `json:"kind"`
		Spec struct {
			Groups []struct {
				Rules []struct {
					Alert string `json:"alert"`
					Expr  string `json:"expr"`
					For   string `json:"for"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"spec"`
	}
	g.Expect(yaml.Unmarshal(data, &rule)).To(Succeed())
	g.Expect(rule.Kind).To(Equal("PrometheusRule"))
	exported := exportedMetricNames(t)
	g.Expect(exported).To(HaveKey("mtls_rotator_certificate_expiration_timestamp_seconds"))
	g.Expect(exported).To(HaveKey("gotk_reconcile_condition"))
	ours := regexp.MustCompile(`\b(mtls_rotator_[a-z_]+|gotk_[a-z_]+)\b`)
	alerts := map[string]string{}
	for _, group := range rule.Spec.Groups {
		for _, r := range group.Rules {
			alerts[r.Alert] = r.Expr
			for _, name := range ours.FindAllString(r.Expr, -1) {
				g.Expect(exported).To(HaveKey(name), "alert %s reads %s", r.Alert, name)
			}
		}
	}
	g.Expect(alerts["DaprTrustCertificateExpiringSoon"]).To(ContainSubstring("21 * 24 * 3600"))
	g.Expect(alerts["MTLSRotationStalled"]).To(ContainSubstring(`type="Stalled"`))
	g.Expect(alerts["DaprTrustCertificateExpiringSoon"]).To(ContainSubstring("unless on(namespace, name) mtls_rotator_next_renewal_timestamp_seconds"),
		"no warning for a healthy automatic renewal ahead")
	g.Expect(alerts["DaprTrustCertificateExpiringSoon"]).To(ContainSubstring(`certificate!="pods-root"`),
		"pods holding an older root alone have an alert of their own, which no renewal silences")
	g.Expect(alerts["DaprPodsTrustOnlyAnExpiringRoot"]).To(ContainSubstring(`certificate="pods-root"`))
	g.Expect(alerts["DaprPodsTrustOnlyAnExpiringRoot"]).NotTo(ContainSubstring("next_renewal"))
	g.Expect(alerts["DaprTrustCertificateRenewalOverdue"]).To(ContainSubstring("mtls_rotator_next_renewal_timestamp_seconds"))
	g.Expect(alerts["MTLSRotatorAbsent"]).To(HavePrefix("absent("))
}

package e2e

import (
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
)

// freeAddress returns a loopback address nothing listens on.
func freeAddress(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return addr
}

// scrape reads the metrics endpoint as Prometheus would.
func scrape(g Gomega, url string) map[string]*dto.MetricFamily {
	resp, err := http.Get(url)
	g.Expect(err).NotTo(HaveOccurred())
	defer func() { _ = resp.Body.Close() }()
	g.Expect(resp.StatusCode).To(Equal(http.StatusOK))
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	g.Expect(err).NotTo(HaveOccurred())
	return families
}

// sample returns the value of the metric of family name whose labels include
// labels, and whether there is one.
func sample(families map[string]*dto.MetricFamily, name string, labels map[string]string) (float64, bool) {
	f, ok := families[name]
	if !ok {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range labels {
			if have[k] != v {
				continue next
			}
		}
		switch {
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue(), true
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue(), true
		case m.GetHistogram() != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		}
	}
	return 0, false
}

// TestMetricsOnTheManagersEndpoint scrapes the running manager: expiry
// timestamps exactly those of the published certificates, the rotation
// counted with its duration and steps, the current step, application
// progress, and Flux's gotk_* reconcile metrics.
func TestMetricsOnTheManagersEndpoint(t *testing.T) {
	g := NewWithT(t)
	freshBundle(t)
	addr := freeAddress(t)
	startOperatorWith(t, operatorOptions{metricsAddr: addr})
	key := newRotation(t, "metrics", rotatorv1.MTLSRootRotationSpec{Trigger: "a"})
	done := waitRotationCompleted(t, key, "a")
	url := fmt.Sprintf("http://%s/metrics", addr)
	id := map[string]string{"namespace": key.Namespace, "name": key.Name}
	with := func(extra ...string) map[string]string {
		labels := map[string]string{"namespace": key.Namespace, "name": key.Name}
		for i := 0; i+1 < len(extra); i += 2 {
			labels[extra[i]] = extra[i+1]
		}
		return labels
	}

	g.Eventually(func(g Gomega) {
		families := scrape(g, url)
		for cert, s := range map[string]*rotatorv1.CertificateStatus{"root": done.Status.Root, "issuer": done.Status.Issuer} {
			v, ok := sample(families, "mtls_rotator_certificate_expiration_timestamp_seconds", with("certificate", cert))
			g.Expect(ok).To(BeTrue(), "%s expiry", cert)
			g.Expect(v).To(Equal(float64(s.NotAfter.Unix())), "%s expiry", cert)
		}
		v, ok := sample(families, "mtls_rotator_rotations_total", with("result", "completed", "cause", "Trigger"))
		g.Expect(ok).To(BeTrue())
		g.Expect(v).To(Equal(1.0))
		v, _ = sample(families, "mtls_rotator_rotation_duration_seconds", id)
		g.Expect(v).To(Equal(1.0), "one completed rotation observed")
		for _, step := range []string{"Issuing", "Verifying", "Publishing", "RestartingControlPlane", "RestartingApplications"} {
			v, _ = sample(families, "mtls_rotator_step_duration_seconds", map[string]string{"step": step})
			g.Expect(v).To(BeNumerically(">=", 1), "step %s observed", step)
		}
		v, ok = sample(families, "mtls_rotator_rotation_step", with("step", "Completed"))
		g.Expect(ok).To(BeTrue())
		g.Expect(v).To(Equal(1.0))
		total, _ := sample(families, "mtls_rotator_rotation_applications", with("state", "total"))
		restarted, _ := sample(families, "mtls_rotator_rotation_applications", with("state", "restarted"))
		g.Expect(total).To(Equal(float64(done.Status.Applications.Total)))
		g.Expect(restarted).To(Equal(total))
		v, ok = sample(families, "gotk_reconcile_condition", map[string]string{
			"kind": rotatorv1.MTLSRootRotationKind, "name": key.Name, "namespace": key.Namespace, "type": "Ready", "status": "True",
		})
		g.Expect(ok).To(BeTrue())
		g.Expect(v).To(Equal(1.0))
		v, _ = sample(families, "gotk_reconcile_duration_seconds", map[string]string{"kind": rotatorv1.MTLSRootRotationKind, "name": key.Name})
		g.Expect(v).To(BeNumerically(">=", 1))
	}).WithTimeout(30 * time.Second).WithPolling(time.Second).Should(Succeed())
}

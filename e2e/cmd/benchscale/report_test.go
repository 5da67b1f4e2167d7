package main

import (
	"encoding/xml"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
)

const metricsText = `# HELP rest_client_requests_total Number of HTTP requests, partitioned by status code, method, and host.
# TYPE rest_client_requests_total counter
rest_client_requests_total{code="200",host="127.0.0.1:6443",method="GET"} 120
rest_client_requests_total{code="200",host="127.0.0.1:6443",method="PATCH"} 30
rest_client_requests_total{code="409",host="127.0.0.1:6443",method="PATCH"} 2
rest_client_requests_total{code="201",host="127.0.0.1:6443",method="POST"} 4
controller_runtime_reconcile_total{controller="mtlsrootrotation",result="success"} 10
controller_runtime_reconcile_total{controller="mtlsrootrotation",result="requeue_after"} 5
go_memstats_heap_inuse_bytes 1.2e+07
go_gc_heap_live_bytes 8e+06
`

func TestParseMetricsReadsWhatTheBenchmarkReports(t *testing.T) {
	g := NewWithT(t)
	s, err := parseMetrics(strings.NewReader(metricsText))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(s.requests).To(Equal(map[string]float64{"GET": 120, "PATCH": 32, "POST": 4}), "summed over codes")
	g.Expect(s.reconciles).To(Equal(15.0))
	g.Expect(s.heapInuse).To(Equal(12e6))
	g.Expect(s.heapLive).To(Equal(8e6))

	before := samples{requests: map[string]float64{"GET": 100, "PATCH": 2}}
	between := requestsBetween(before, s)
	g.Expect(between).To(Equal(map[string]int{"GET": 20, "PATCH": 30, "POST": 4}))
	g.Expect(writes(between)).To(Equal(34), "every method but GET")
	g.Expect(requestList(between)).To(Equal("GET 20, PATCH 30, POST 4"))
}

func TestParseConfigRefusesWhatItCannotRun(t *testing.T) {
	for _, args := range [][]string{
		{"--apps", "100,x"}, {"--apps", "0"}, {"--key-policy", "Keep"}, {"--wave", "0"}, {"--wave", "1001"}, {"--foreign", "-1"},
	} {
		_, err := parseConfig(args)
		NewWithT(t).Expect(err).To(HaveOccurred(), "%v", args)
	}
	c, err := parseConfig([]string{"--apps", "1000,100,300,100"})
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	NewWithT(t).Expect(c.apps).To(Equal([]int{100, 300, 1000}), "sorted, once each")
}

func sampleReport() report {
	return report{
		Machine: "2 CPUs", Started: time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC), Foreign: 10000, Wave: 10, KeyPolicy: "Reuse",
		Poll: 2 * time.Second, Idle: time.Minute,
		Without: memory{RSS: 40 << 20, Heap: 10 << 20}, WithForeign: memory{RSS: 46 << 20, Heap: 14 << 20},
		Runs: []run{
			{Apps: 100, Script: 20 * time.Second, Operator: 18 * time.Second, Requests: map[string]int{"PATCH": 130, "GET": 9}, Restarts: 105},
			{Apps: 1000, Script: 200 * time.Second, Operator: 150 * time.Second, Requests: map[string]int{"PATCH": 1100}, Restarts: 1005},
		},
	}
}

func TestTableHasTheIssuesRowsPerMeshSize(t *testing.T) {
	g := NewWithT(t)
	var b strings.Builder
	writeTable(&b, sampleReport())
	out := b.String()
	g.Expect(out).To(ContainSubstring("| wall time, 5 control-plane workloads + 100 apps | 20.0 s | 18.0 s (0.90x) |"))
	g.Expect(out).To(ContainSubstring("| API writes by the operator for the rotation | - | 1100 for 1005 restarts (PATCH 1100) | <= restarts + 20 (1025) |"))
	g.Expect(out).To(ContainSubstring("growth 6.0 MiB"))
	g.Expect(strings.Count(out, "## ")).To(Equal(2))
}

func TestChartsDrawBothSeries(t *testing.T) {
	g := NewWithT(t)
	var svg strings.Builder
	writeSVG(&svg, sampleReport())
	var doc struct {
		Polylines []struct {
			Points string `xml:"points,attr"`
		} `xml:"polyline"`
		Circles []struct{} `xml:"circle"`
	}
	g.Expect(xml.Unmarshal([]byte(svg.String()), &doc)).To(Succeed(), "well-formed SVG")
	g.Expect(doc.Polylines).To(HaveLen(2), "the script and the operator")
	g.Expect(doc.Circles).To(HaveLen(4), "a point per mesh size and series")
	for _, p := range doc.Polylines {
		g.Expect(strings.Fields(p.Points)).To(HaveLen(2))
	}

	var md strings.Builder
	writeMermaid(&md, sampleReport())
	g.Expect(md.String()).To(ContainSubstring(`x-axis "Dapr applications" [100, 1000]`))
	g.Expect(md.String()).To(ContainSubstring("line [20.0, 200.0]"))
	g.Expect(md.String()).To(ContainSubstring("line [18.0, 150.0]"))
	g.Expect(md.String()).To(ContainSubstring("0 --> 200"))
}

func TestNiceCeil(t *testing.T) {
	for in, want := range map[float64]float64{0.5: 1, 1: 1, 3: 5, 7: 10, 12: 20, 45: 50, 150: 200, 200: 200, 501: 1000} {
		NewWithT(t).Expect(niceCeil(in)).To(Equal(want), "%v", in)
	}
}

func TestKiloBytes(t *testing.T) {
	g := NewWithT(t)
	b, err := kiloBytes("   65616 kB")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(b).To(Equal(int64(65616 * 1024)))
	_, err = kiloBytes(" many kB")
	g.Expect(err).To(HaveOccurred())
}

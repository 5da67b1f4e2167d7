package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"
)

// run is what one mesh size measured: the kubectl script and the operator's
// rotation over the same control plane and applications.
type run struct {
	Apps           int            `json:"apps"`
	Script         time.Duration  `json:"scriptNanoseconds"`
	Operator       time.Duration  `json:"operatorNanoseconds"`
	Requests       map[string]int `json:"requestsByMethod"`
	Restarts       int            `json:"restarts"`
	PeakRSS        int64          `json:"peakRSSBytes"`
	PeakHeap       int64          `json:"peakHeapInuseBytes"`
	Idle           memory         `json:"idle"`
	IdleReconciles int            `json:"idleReconciles"`
}

// report is one benchmark: its settings, the machine, and a run per mesh size.
type report struct {
	Machine   string        `json:"machine"`
	Started   time.Time     `json:"started"`
	Foreign   int           `json:"foreignDeployments"`
	Wave      int           `json:"wave"`
	KeyPolicy string        `json:"keyPolicy"`
	Poll      time.Duration `json:"operatorPollNanoseconds"`
	Idle      time.Duration `json:"idleWindowNanoseconds"`
	// Without and WithForeign are the operator's idle RSS and heap in use
	// before and after the foreign Deployments were created.
	Without     memory `json:"withoutForeign"`
	WithForeign memory `json:"withForeign"`
	Runs        []run  `json:"runs"`
}

type memory struct {
	RSS  int64 `json:"rssBytes"`
	Heap int64 `json:"heapInuseBytes"`
	Live int64 `json:"heapLiveBytes"`
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

func seconds(d time.Duration) string { return fmt.Sprintf("%.1f s", d.Seconds()) }

// requestList is "PATCH 105, POST 3, ..." in a stable order.
func requestList(byMethod map[string]int) string {
	var parts []string
	for _, m := range slices.Sorted(maps.Keys(byMethod)) {
		parts = append(parts, fmt.Sprintf("%s %d", m, byMethod[m]))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// writeTable writes the report as Markdown: the table per mesh size.
func writeTable(w io.Writer, r report) {
	fmt.Fprintf(w, "# make bench-scale, %s\n\n", r.Started.UTC().Format(time.RFC3339))
	fmt.Fprintf(w, "Machine: %s. %d foreign Deployments; waves of %d (`applications.maxConcurrent`); key policy %s; operator poll interval %s.\n\n",
		r.Machine, r.Foreign, r.Wave, r.KeyPolicy, r.Poll)
	growth := r.WithForeign.RSS - r.Without.RSS
	fmt.Fprintf(w, "Operator idle, before and after the %d foreign Deployments: RSS %s -> %s (growth %s), heap in use %s -> %s, live heap %s -> %s.\n\n",
		r.Foreign, mib(r.Without.RSS), mib(r.WithForeign.RSS), mib(growth), mib(r.Without.Heap), mib(r.WithForeign.Heap),
		mib(r.Without.Live), mib(r.WithForeign.Live))
	for _, run := range r.Runs {
		fmt.Fprintf(w, "## %d Dapr applications\n\n", run.Apps)
		fmt.Fprintln(w, "| figure | kubectl script | mtls-rotator | goal |")
		fmt.Fprintln(w, "|---|---|---|---|")
		ratio := run.Operator.Seconds() / run.Script.Seconds()
		fmt.Fprintf(w, "| wall time, 5 control-plane workloads + %d apps | %s | %s (%.2fx) | <= 1.05x |\n",
			run.Apps, seconds(run.Script), seconds(run.Operator), ratio)
		writes := writes(run.Requests)
		fmt.Fprintf(w, "| API writes by the operator for the rotation | - | %d for %d restarts (%s) | <= restarts + 20 (%d) |\n",
			writes, run.Restarts, requestList(run.Requests), run.Restarts+20)
		fmt.Fprintf(w, "| operator peak RSS / heap in use during the rotation | - | %s / %s | RSS <= 64 MiB |\n", mib(run.PeakRSS), mib(run.PeakHeap))
		fmt.Fprintf(w, "| operator RSS / heap in use / live heap, idle after it | - | %s / %s / %s | RSS <= 64 MiB |\n",
			mib(run.Idle.RSS), mib(run.Idle.Heap), mib(run.Idle.Live))
		fmt.Fprintf(w, "| operator RSS growth with %d foreign Deployments | - | %s | <= %s |\n", r.Foreign, mib(growth), mib(int64(r.Foreign)*(10<<20)/10000))
		fmt.Fprintf(w, "| reconciles while idle, %s | - | %d | 0 |\n\n", r.Idle, run.IdleReconciles)
	}
}

// chart geometry, in SVG user units.
const (
	chartW, chartH = 640, 400
	left, right    = 70, 20
	top, bottom    = 40, 60
)

// writeSVG draws the rotation's wall time against the number of applications,
// for the script and for the operator.
func writeSVG(w io.Writer, r report) {
	maxN, maxT := 1, 1.0
	for _, run := range r.Runs {
		maxN = max(maxN, run.Apps)
		maxT = max(maxT, run.Script.Seconds(), run.Operator.Seconds())
	}
	maxT = niceCeil(maxT)
	x := func(n int) float64 { return left + float64(n)/float64(maxN)*(chartW-left-right) }
	y := func(s float64) float64 { return chartH - bottom - s/maxT*(chartH-top-bottom) }

	fmt.Fprintf(w, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n",
		chartW, chartH, chartW, chartH)
	fmt.Fprintf(w, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(w, `<text x="%d" y="20" font-size="14">Rotation wall time against Dapr applications (%d foreign Deployments, waves of %d)</text>`+"\n", left-50, r.Foreign, r.Wave)
	fmt.Fprintf(w, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`+"\n", left, chartH-bottom, chartW-right, chartH-bottom)
	fmt.Fprintf(w, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`+"\n", left, top, left, chartH-bottom)
	for i := 0; i <= 4; i++ {
		s := maxT * float64(i) / 4
		fmt.Fprintf(w, `<text x="%d" y="%.1f" text-anchor="end">%g s</text>`+"\n", left-6, y(s)+4, s)
		fmt.Fprintf(w, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>`+"\n", left, y(s), chartW-right, y(s))
	}
	for _, run := range r.Runs {
		fmt.Fprintf(w, `<text x="%.1f" y="%d" text-anchor="middle">%d</text>`+"\n", x(run.Apps), chartH-bottom+16, run.Apps)
	}
	fmt.Fprintf(w, `<text x="%d" y="%d" text-anchor="middle">Dapr applications (1 replica each)</text>`+"\n", (chartW+left)/2, chartH-bottom+36)
	series := []struct {
		name, color string
		at          func(run) time.Duration
	}{
		{"kubectl rollout restart + status script", "#d62728", func(r run) time.Duration { return r.Script }},
		{"mtls-rotator (certificate issuance included)", "#1f77b4", func(r run) time.Duration { return r.Operator }},
	}
	for i, s := range series {
		var points []string
		for _, run := range r.Runs {
			px, py := x(run.Apps), y(s.at(run).Seconds())
			points = append(points, fmt.Sprintf("%.1f,%.1f", px, py))
			fmt.Fprintf(w, `<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>`+"\n", px, py, s.color)
		}
		fmt.Fprintf(w, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`+"\n", s.color, strings.Join(points, " "))
		ly := top + 10 + 18*i
		fmt.Fprintf(w, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2"/>`+"\n", left+10, ly, left+30, ly, s.color)
		fmt.Fprintf(w, `<text x="%d" y="%d">%s</text>`+"\n", left+36, ly+4, s.name)
	}
	fmt.Fprintln(w, `</svg>`)
}

// writeMermaid writes the same chart as a Mermaid xychart, which renders in
// a Markdown README: the first line is the script, the second the operator.
func writeMermaid(w io.Writer, r report) {
	var ns, script, operator []string
	for _, run := range r.Runs {
		ns = append(ns, fmt.Sprint(run.Apps))
		script = append(script, fmt.Sprintf("%.1f", run.Script.Seconds()))
		operator = append(operator, fmt.Sprintf("%.1f", run.Operator.Seconds()))
	}
	fmt.Fprintln(w, "```mermaid")
	fmt.Fprintln(w, "xychart-beta")
	fmt.Fprintf(w, "    title \"Rotation wall time, %d foreign Deployments, waves of %d\"\n", r.Foreign, r.Wave)
	fmt.Fprintf(w, "    x-axis \"Dapr applications\" [%s]\n", strings.Join(ns, ", "))
	fmt.Fprintf(w, "    y-axis \"seconds\" 0 --> %g\n", niceCeil(maxSeconds(r)))
	fmt.Fprintf(w, "    line [%s]\n", strings.Join(script, ", "))
	fmt.Fprintf(w, "    line [%s]\n", strings.Join(operator, ", "))
	fmt.Fprintln(w, "```")
}

func maxSeconds(r report) float64 {
	m := 1.0
	for _, run := range r.Runs {
		m = max(m, run.Script.Seconds(), run.Operator.Seconds())
	}
	return m
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	p := 1.0
	for p*10 <= v {
		p *= 10
	}
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// samples are the metrics of the operator's /metrics endpoint this benchmark
// reads, summed over their label sets where it keeps no label.
type samples struct {
	// requests are rest_client_requests_total by HTTP method.
	requests map[string]float64
	// reconciles is controller_runtime_reconcile_total, all results.
	reconciles float64
	// heapInuse is go_memstats_heap_inuse_bytes: live objects and the
	// garbage not yet collected.
	heapInuse float64
	// heapLive is go_gc_heap_live_bytes: the heap the last GC found live.
	heapLive float64
}

// parseMetrics reads the Prometheus text format for the samples above.
func parseMetrics(r io.Reader) (samples, error) {
	s := samples{requests: map[string]float64{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name, labels, value, ok := splitSample(line)
		if !ok {
			continue
		}
		switch name {
		case "rest_client_requests_total":
			s.requests[labelValue(labels, "method")] += value
		case "controller_runtime_reconcile_total":
			s.reconciles += value
		case "go_memstats_heap_inuse_bytes":
			s.heapInuse = value
		case "go_gc_heap_live_bytes":
			s.heapLive = value
		}
	}
	return s, sc.Err()
}

// splitSample splits `name{labels} value` (labels optional).
func splitSample(line string) (name, labels string, value float64, ok bool) {
	series, rest := line, ""
	if j := strings.LastIndexByte(line, '}'); j >= 0 {
		series, rest = line[:j+1], line[j+1:]
	} else if i := strings.IndexByte(line, ' '); i >= 0 {
		series, rest = line[:i], line[i:]
	}
	name, labels, _ = strings.Cut(strings.TrimSuffix(series, "}"), "{")
	fields := strings.Fields(rest)
	if len(fields) == 0 {
		return "", "", 0, false
	}
	v, err := strconv.ParseFloat(fields[0], 64)
	return name, labels, v, err == nil
}

// labelValue is the value of label key in `a="x",b="y"`.
func labelValue(labels, key string) string {
	for _, kv := range strings.Split(labels, ",") {
		k, v, found := strings.Cut(kv, "=")
		if found && strings.TrimSpace(k) == key {
			return strings.Trim(v, `"`)
		}
	}
	return ""
}

func scrape(ctx context.Context, addr string) (samples, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return samples{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return samples{}, fmt.Errorf("scraping the operator's metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return samples{}, fmt.Errorf("scraping the operator's metrics: %s", resp.Status)
	}
	return parseMetrics(resp.Body)
}

// requestsBetween are the operator's API requests by method from before to after.
func requestsBetween(before, after samples) map[string]int {
	out := map[string]int{}
	for method, v := range after.requests {
		if d := int(v - before.requests[method]); d > 0 {
			out[method] = d
		}
	}
	return out
}

// writes counts the requests that change something.
func writes(byMethod map[string]int) int {
	n := 0
	for method, v := range byMethod {
		if method != http.MethodGet && method != http.MethodHead {
			n += v
		}
	}
	return n
}

// procMemory reads a /proc/<pid>/status field in bytes (VmRSS, VmHWM).
func procMemory(pid int, field string) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			return kiloBytes(rest)
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// kiloBytes reads a /proc value such as "  1234 kB" as bytes.
func kiloBytes(s string) (int64, error) {
	kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(s), "kB")), 10, 64)
	return kb * 1024, err
}

// resetPeakRSS makes VmHWM start again from the current RSS (Linux
// clear_refs "5"), so that the peak read later is the peak of what follows.
func resetPeakRSS(pid int) error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
}

// heapSampler keeps the highest heap in use the operator reports while it runs.
type heapSampler struct {
	mu   sync.Mutex
	peak float64
	stop context.CancelFunc
	done chan struct{}
}

func sampleHeap(ctx context.Context, addr string, every time.Duration) *heapSampler {
	ctx, cancel := context.WithCancel(ctx)
	h := &heapSampler{stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(h.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			if s, err := scrape(ctx, addr); err == nil {
				h.mu.Lock()
				h.peak = max(h.peak, s.heapInuse)
				h.mu.Unlock()
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return h
}

// Peak stops the sampler and returns the highest heap in use seen.
func (h *heapSampler) Peak() float64 {
	h.stop()
	<-h.done
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.peak
}

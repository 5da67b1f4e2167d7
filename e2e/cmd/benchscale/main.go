// Command benchscale is 'make bench-scale': on a fresh local cluster it times
// a kubectl rollout-restart script against the operator's rotation over the
// same Dapr control plane and N applications, beside F foreign Deployments,
// and measures the operator's API writes, memory and idle reconciles. It
// prints one table and writes it, a chart and the raw figures to a results
// folder.
package main

import (
	"cmp"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mtls-rotator/mtls-rotator/e2e/cluster"
)

// config are the benchmark's settings.
type config struct {
	root, dir, results string
	apps               []int
	foreign            int
	foreignReplicas    int
	wave               int
	keyPolicy          string
	poll, idle         time.Duration
	keep               bool
}

func parseConfig(args []string) (config, error) {
	c := config{}
	fs := flag.NewFlagSet("benchscale", flag.ContinueOnError)
	apps := fs.String("apps", "1000", "comma-separated numbers of Dapr applications (1 replica each), measured in turn on the same cluster")
	fs.IntVar(&c.foreign, "foreign", 10000, "foreign (not Dapr) Deployments created beside them")
	fs.IntVar(&c.foreignReplicas, "foreign-replicas", 1, "replicas of each foreign Deployment")
	fs.IntVar(&c.wave, "wave", 10, "applications restarted at once: the script's wave and the rotation's applications.maxConcurrent")
	fs.StringVar(&c.keyPolicy, "key-policy", "Reuse", "the rotation's root.keyPolicy: Reuse or Rotate")
	fs.DurationVar(&c.poll, "operator-poll", 2*time.Second, "the operator's --poll-interval (set 1h to show that watches, not polls, drive it)")
	fs.DurationVar(&c.idle, "idle", time.Minute, "the window idle reconciles are counted over")
	fs.StringVar(&c.dir, "dir", "bin/bench-scale", "state directory of the benchmark's local cluster")
	fs.StringVar(&c.results, "results", "bench-results", "folder the table, chart and figures are written under")
	fs.BoolVar(&c.keep, "keep", false, "leave the cluster running at the end")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	for _, s := range strings.Split(*apps, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return c, fmt.Errorf("--apps: %q is not a positive number", s)
		}
		c.apps = append(c.apps, n)
	}
	slices.Sort(c.apps)
	c.apps = slices.Compact(c.apps)
	if c.keyPolicy != "Reuse" && c.keyPolicy != "Rotate" {
		return c, fmt.Errorf("--key-policy: %q is neither Reuse nor Rotate", c.keyPolicy)
	}
	if c.wave < 1 || c.wave > 1000 {
		return c, fmt.Errorf("--wave: %d is not between 1 and 1000", c.wave)
	}
	if c.foreign < 0 || c.foreignReplicas < 0 {
		return c, fmt.Errorf("--foreign and --foreign-replicas cannot be negative")
	}
	return c, nil
}

func main() {
	c, err := parseConfig(os.Args[1:])
	if err != nil {
		fmt.Fprintf(os.Stderr, "benchscale: %v\n", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := benchmark(ctx, c); err != nil {
		fmt.Fprintf(os.Stderr, "benchscale: %v\n", err)
		os.Exit(1)
	}
}

func benchmark(ctx context.Context, c config) (err error) {
	if c.root, err = cluster.RepoRoot(); err != nil {
		return err
	}
	if c.dir, err = filepath.Abs(c.dir); err != nil {
		return err
	}
	b := &bench{config: c}
	if err := b.localcluster(ctx, "up"); err != nil {
		return err
	}
	if !c.keep {
		defer func() {
			if downErr := b.localcluster(context.Background(), "down"); err == nil {
				err = downErr
			}
		}()
	}
	if err := b.connect(); err != nil {
		return err
	}
	r := report{Machine: machine(), Started: time.Now(), Foreign: c.foreign, Wave: c.wave, KeyPolicy: c.keyPolicy, Poll: c.poll, Idle: c.idle}

	// The smallest mesh first, the operator's first issuance, and its idle
	// memory before and after the foreign Deployments.
	if err := b.installApps(ctx, c.apps[0]); err != nil {
		return err
	}
	if err := b.startOperator(ctx); err != nil {
		return err
	}
	if err := b.rotate(ctx, "bench-0"); err != nil {
		return fmt.Errorf("the first issuance: %w", err)
	}
	if r.Without, err = b.idleMemory(ctx, c.apps[0]); err != nil {
		return err
	}
	if err := b.createForeign(ctx); err != nil {
		return err
	}
	if r.WithForeign, err = b.idleMemory(ctx, c.apps[0]); err != nil {
		return err
	}

	for i, n := range c.apps {
		if err := b.installApps(ctx, n); err != nil {
			return err
		}
		measured, err := b.measure(ctx, n, fmt.Sprintf("bench-%d", i+1))
		if err != nil {
			return err
		}
		r.Runs = append(r.Runs, measured)
		so := r
		so.Runs = r.Runs[len(r.Runs)-1:]
		writeTable(os.Stdout, so)
	}
	return writeResults(c.results, r)
}

// measure times the script and then the operator over n applications.
func (b *bench) measure(ctx context.Context, n int, trigger string) (run, error) {
	r := run{Apps: n}
	if err := b.settle(ctx, n); err != nil {
		return r, err
	}
	var err error
	b.say("restarting the control plane and %d applications with the kubectl script, waves of %d", n, b.wave)
	if r.Script, err = b.script(ctx, n); err != nil {
		return r, err
	}
	b.say("the script took %s", seconds(r.Script))
	if err := b.settle(ctx, n); err != nil {
		return r, err
	}
	generations, err := b.restartedGenerations(ctx)
	if err != nil {
		return r, err
	}
	before, err := scrape(ctx, b.metricsAddr)
	if err != nil {
		return r, err
	}
	if err := resetPeakRSS(b.operatorPID); err != nil {
		return r, fmt.Errorf("resetting the operator's peak RSS: %w", err)
	}
	heap := sampleHeap(ctx, b.metricsAddr, 250*time.Millisecond)
	start := time.Now()
	err = b.rotate(ctx, trigger)
	r.Operator = time.Since(start)
	r.PeakHeap = int64(heap.Peak())
	if err != nil {
		return r, err
	}
	b.say("the operator's rotation took %s", seconds(r.Operator))
	after, err := scrape(ctx, b.metricsAddr)
	if err != nil {
		return r, err
	}
	r.Requests = requestsBetween(before, after)
	if r.PeakRSS, err = procMemory(b.operatorPID, "VmHWM"); err != nil {
		return r, err
	}
	restarted, err := b.restartedGenerations(ctx)
	if err != nil {
		return r, err
	}
	r.Restarts = int(restarted - generations)
	r.Idle, r.IdleReconciles, err = b.idleReconciles(ctx, n)
	return r, err
}

func writeResults(folder string, r report) error {
	dir := filepath.Join(folder, r.Started.UTC().Format("20060102-150405"))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var table, svg, mermaid strings.Builder
	writeTable(&table, r)
	writeSVG(&svg, r)
	writeMermaid(&mermaid, r)
	raw, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	for name, data := range map[string]string{"table.md": table.String(), "chart.svg": svg.String(), "chart.mermaid.md": mermaid.String(), "figures.json": string(raw)} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			return err
		}
	}
	fmt.Printf("\n%s\nresults: %s (table.md, chart.svg, chart.mermaid.md, figures.json)\n", table.String(), dir)
	return nil
}

// machine describes where the benchmark ran.
func machine() string {
	mem := "?"
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				bytes, _ := kiloBytes(rest)
				mem = fmt.Sprintf("%.0f GiB", float64(bytes)/(1<<30))
			}
		}
	}
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return fmt.Sprintf("%d CPUs, %s memory, Linux %s, %s", runtime.NumCPU(), mem, cmp.Or(strings.TrimSpace(string(kernel)), "?"), runtime.Version())
}

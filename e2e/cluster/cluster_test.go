package cluster

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
)

// fakeAssets writes shell scripts standing in for every binary a cluster needs;
// etcd runs etcdScript.
func fakeAssets(t *testing.T, etcdScript string) Options {
	t.Helper()
	assets := t.TempDir()
	for _, name := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "cert-manager", "argo-rollouts-controller"} {
		writeScript(t, filepath.Join(assets, name), "sleep 60")
	}
	writeScript(t, filepath.Join(assets, "etcd"), etcdScript)
	if err := os.WriteFile(filepath.Join(assets, "kwok-stages.yaml"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(assets, "argo-rollouts-crds"), 0o755); err != nil {
		t.Fatal(err)
	}
	return Options{
		Dir:               filepath.Join(t.TempDir(), "cluster"),
		AssetsDir:         assets,
		CertManagerBinary: filepath.Join(assets, "cert-manager"),
		StartTimeout:      5 * time.Second,
	}
}

func writeScript(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
}

func TestStartNamesMissingBinaries(t *testing.T) {
	g := NewWithT(t)
	opts := Options{Dir: filepath.Join(t.TempDir(), "cluster"), AssetsDir: t.TempDir(), CertManagerBinary: "/nonexistent"}
	_, err := Start(t.Context(), opts)
	g.Expect(err).To(MatchError(And(
		ContainSubstring("etcd"), ContainSubstring("kube-apiserver"), ContainSubstring("kwok-stages.yaml"), ContainSubstring("argo-rollouts-controller"),
		ContainSubstring("make binaries"))))
	g.Expect(opts.Dir).NotTo(BeADirectory(), "nothing is created when binaries are missing")
}

func TestStartReportsTheLogOfAComponentThatDies(t *testing.T) {
	g := NewWithT(t)
	opts := fakeAssets(t, `echo "etcd: listen tcp 127.0.0.1:2379: bind: address already in use" >&2; exit 1`)
	_, err := Start(t.Context(), opts)
	g.Expect(err).To(MatchError(And(ContainSubstring("etcd exited"), ContainSubstring("address already in use"))))
}

func TestStartStopsWhatItStartedOnFailure(t *testing.T) {
	g := NewWithT(t)
	// etcd never becomes healthy: Start gives up after the timeout and must not
	// leave it running.
	opts := fakeAssets(t, `echo $$ > "$(dirname "$0")/etcd.pid"; exec sleep 60`)
	opts.StartTimeout = 500 * time.Millisecond
	_, err := Start(t.Context(), opts)
	g.Expect(err).To(MatchError(ContainSubstring("waiting for etcd")))
	data, readErr := os.ReadFile(filepath.Join(opts.AssetsDir, "etcd.pid"))
	g.Expect(readErr).NotTo(HaveOccurred())
	pid := strings.TrimSpace(string(data))
	g.Eventually(func() bool {
		_, err := processStartTicks(atoi(t, pid))
		return err != nil
	}).WithTimeout(5*time.Second).Should(BeTrue(), "etcd (pid %s) was left running", pid)
}

func TestStartRefusesASecondClusterInTheSameDirectory(t *testing.T) {
	g := NewWithT(t)
	opts := fakeAssets(t, "sleep 60")
	g.Expect(os.MkdirAll(opts.Dir, 0o755)).To(Succeed())
	self := os.Getpid()
	ticks, err := processStartTicks(self)
	g.Expect(err).NotTo(HaveOccurred())
	running := &state{Server: "https://127.0.0.1:1", Processes: []*process{{Name: "kube-apiserver", PID: self, Started: ticks}}}
	g.Expect(writeState(opts.Dir, running)).To(Succeed())

	_, err = Start(t.Context(), opts)
	g.Expect(err).To(MatchError(And(ContainSubstring("already running"), ContainSubstring("make cluster-down"))))
	g.Expect(filepath.Join(opts.Dir, stateFile)).To(BeARegularFile(), "the running cluster's state is kept")
}

func TestStopDetachedStopsOnlyTheRecordedProcesses(t *testing.T) {
	g := NewWithT(t)
	dir := t.TempDir()
	g.Expect(os.MkdirAll(filepath.Join(dir, "logs"), 0o755)).To(Succeed())
	sleeper, err := startProcess("sleeper", "/bin/sleep", []string{"60"}, filepath.Join(dir, "logs"), true)
	g.Expect(err).NotTo(HaveOccurred())
	// A record whose PID now belongs to another program (this test) must be left alone.
	reused := &process{Name: "stale", PID: os.Getpid(), Started: 1}
	g.Expect(writeState(dir, &state{Processes: []*process{reused, {Name: sleeper.Name, PID: sleeper.PID, Started: sleeper.Started}}})).To(Succeed())

	var out strings.Builder
	g.Expect(StopDetached(dir, &out)).To(Succeed())
	g.Expect(out.String()).To(ContainSubstring("stopped sleeper"))
	g.Expect(out.String()).To(ContainSubstring("stale (pid"))
	g.Eventually(sleeper.exited).WithTimeout(5 * time.Second).Should(BeClosed())
	g.Expect(dir).NotTo(BeADirectory())
}

func TestStopDetachedWithoutACluster(t *testing.T) {
	g := NewWithT(t)
	var out strings.Builder
	g.Expect(StopDetached(filepath.Join(t.TempDir(), "none"), &out)).To(Succeed())
	g.Expect(out.String()).To(ContainSubstring("no local cluster"))
}

func TestFreePortsAreDistinct(t *testing.T) {
	g := NewWithT(t)
	ports, err := FreePorts(7)
	g.Expect(err).NotTo(HaveOccurred())
	seen := map[int]bool{}
	for _, p := range ports {
		g.Expect(seen[p]).To(BeFalse(), "port %d returned twice", p)
		seen[p] = true
	}
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n := 0
	for _, r := range s {
		if r < '0' || r > '9' {
			t.Fatalf("not a pid: %q", s)
		}
		n = n*10 + int(r-'0')
	}
	return n
}

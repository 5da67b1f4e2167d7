package convergence

import (
	"testing"
	"time"
)

func TestJudgeInjector(t *testing.T) {
	restarted := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	published := []string{"new"}
	pod := func(name, workload string, at time.Time, anchors ...string) Pod {
		return Pod{Namespace: "team", Name: name, Workload: workload, Started: at, Anchors: anchors}
	}
	const web = "Deployment team/web"
	tests := []struct {
		name                   string
		pods                   []Pod
		wantFound, wantVerdict bool
		wantPod                string
	}{
		{"no pod yet", nil, false, false, ""},
		{"only pods from before the restart", []Pod{pod("old", web, restarted.Add(-time.Second), "new")}, false, false, ""},
		{"another workload's pod is no evidence", []Pod{pod("other", "Deployment team/api", restarted, "new")}, false, false, ""},
		{"a terminating pod is none", []Pod{func() Pod { p := pod("going", web, restarted, "new"); p.Terminating = true; return p }()}, false, false, ""},
		{"a new pod with the published anchors", []Pod{pod("a", web, restarted, "new")}, true, true, "a"},
		{"a new pod with other anchors", []Pod{pod("a", web, restarted, "old")}, true, false, "a"},
		{"more anchors than published is not the published set", []Pod{pod("a", web, restarted, "old", "new")}, true, false, "a"},
		{"anchors that cannot be read", []Pod{{Name: "a", Workload: web, Started: restarted, Problem: "no daprd container"}}, true, false, "a"},
		{"the newest decides, stale first", []Pod{pod("a", web, restarted, "old"), pod("b", web, restarted.Add(time.Minute), "new")}, true, true, "b"},
		{"the newest decides, stale last", []Pod{pod("b", web, restarted.Add(time.Minute), "old"), pod("a", web, restarted, "new")}, true, false, "b"},
		{"started together: by name, whatever the order", []Pod{pod("z", web, restarted, "old"), pod("y", web, restarted, "new")}, true, false, "z"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := JudgeInjector(tt.pods, web, restarted, published)
			if v.Found != tt.wantFound || v.Published != tt.wantVerdict || v.Pod.Name != tt.wantPod {
				t.Fatalf("got found=%v published=%v pod=%q, want %v %v %q", v.Found, v.Published, v.Pod.Name, tt.wantFound, tt.wantVerdict, tt.wantPod)
			}
		})
	}
}

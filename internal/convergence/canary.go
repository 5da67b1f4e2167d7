package convergence

import (
	"cmp"
	"slices"
	"time"
)

// InjectorVerdict is what the pods of a phase's canary (the application it
// restarted first, alone) show of what Dapr's sidecar injector hands out.
type InjectorVerdict struct {
	// Pod is the canary's newest pod injected since its restart; Found is
	// false while there is none.
	Pod   Pod
	Found bool
	// Published: that pod holds exactly the anchors the phase published.
	Published bool
}

// JudgeInjector finds, among the observed pods, the newest pod of workload
// ("Kind namespace/name") that started at or after restartedAt and is not
// terminating, and says whether its sidecar got exactly the published
// anchors. The newest decides: it is what the injector hands out now, so a
// pod recreated after the injector was mended clears an earlier stale one.
func JudgeInjector(pods []Pod, workload string, restartedAt time.Time, published []string) InjectorVerdict {
	var v InjectorVerdict
	for _, p := range pods {
		if p.Workload != workload || p.Terminating || p.Started.Before(restartedAt) {
			continue
		}
		if !v.Found || cmp.Or(p.Started.Compare(v.Pod.Started), cmp.Compare(p.Name, v.Pod.Name)) > 0 {
			v.Pod, v.Found = p, true
		}
	}
	v.Published = v.Found && v.Pod.Problem == "" && slices.Equal(v.Pod.Anchors, published)
	return v
}

package restart

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	. "github.com/onsi/gomega"
)

func TestPatchSetsTheAnnotation(t *testing.T) {
	g := NewWithT(t)
	var p struct {
		Spec struct {
			Template struct {
				Metadata struct {
					Annotations map[string]string `json:"annotations"`
				} `json:"metadata"`
			} `json:"template"`
		} `json:"spec"`
	}
	at := time.Date(2026, 11, 29, 12, 0, 0, 0, time.FixedZone("CET", 3600))
	g.Expect(json.Unmarshal(Patch("3-abc", at), &p)).To(Succeed())
	g.Expect(p.Spec.Template.Metadata.Annotations).To(Equal(map[string]string{Annotation: "3-abc", AtAnnotation: "2026-11-29T11:00:00Z"}))
	g.Expect(RestartedAt(p.Spec.Template.Metadata.Annotations).Equal(at)).To(BeTrue())
	g.Expect(RestartedAt(nil).IsZero()).To(BeTrue())
	g.Expect(RestartedFor(p.Spec.Template.Metadata.Annotations, "3-abc")).To(BeTrue())
	g.Expect(RestartedFor(p.Spec.Template.Metadata.Annotations, "4-def")).To(BeFalse())
	g.Expect(RestartedFor(nil, "")).To(BeFalse())
}

func cp(name string, exists, optional, restarted, rolledOut bool) Observed {
	return Observed{Ref: Ref{Kind: "Deployment", Namespace: "dapr-system", Name: name},
		Exists: exists, Optional: optional, Restarted: restarted, RolledOut: rolledOut}
}

func TestNextControlPlane(t *testing.T) {
	tests := []struct {
		name      string
		workloads []Observed
		want      ActionType
		workload  string
		skipped   int
		completed int
	}{
		{"restart the first", []Observed{cp("sentry", true, false, false, true), cp("injector", true, false, false, true)}, Restart, "sentry", 0, 0},
		{"wait for the first, touch nothing after", []Observed{cp("sentry", true, false, true, false), cp("injector", true, false, false, true)}, Wait, "sentry", 0, 0},
		{"then the second", []Observed{cp("sentry", true, false, true, true), cp("injector", true, false, false, true)}, Restart, "injector", 0, 1},
		{"missing required stops", []Observed{cp("sentry", true, false, true, true), cp("operator", false, false, false, false), cp("placement", true, false, false, true)}, Missing, "operator", 0, 1},
		{"missing optional is skipped", []Observed{cp("sentry", true, false, true, true), cp("scheduler", false, true, false, false)}, Done, "", 1, 1},
		{"all done", []Observed{cp("sentry", true, false, true, true), cp("injector", true, false, true, true)}, Done, "", 0, 2},
		{"restarted workload rolled back out of date waits", []Observed{cp("sentry", true, false, true, false)}, Wait, "sentry", 0, 0},
		{"empty", nil, Done, "", 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			a := NextControlPlane(tt.workloads)
			g.Expect(a.Type).To(Equal(tt.want))
			g.Expect(a.Workload.Name).To(Equal(tt.workload))
			g.Expect(a.Skipped).To(HaveLen(tt.skipped))
			g.Expect(a.Completed).To(Equal(tt.completed))
		})
	}
}

// simulate runs the control-plane planner to completion the way the controller
// does, crashing (forgetting everything but the world) at random points, and
// checks the order and that nothing is restarted twice.
func TestControlPlaneOrderSurvivesCrashes(t *testing.T) {
	for seed := range uint64(50) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			g := NewWithT(t)
			rng := rand.New(rand.NewPCG(seed, 1))
			world := []Observed{
				cp("sentry", true, false, false, true), cp("injector", true, false, false, true),
				cp("operator", true, false, false, true), cp("placement", true, false, false, true),
				cp("scheduler", rng.IntN(2) == 0, true, false, true),
			}
			var order []string
			restarts := map[string]int{}
			for step := 0; step < 100; step++ {
				a := NextControlPlane(world)
				if a.Type == Done {
					break
				}
				g.Expect(a.Type).NotTo(Equal(Missing))
				i := indexOf(world, a.Workload.Name)
				switch a.Type {
				case Restart:
					if rng.IntN(3) == 0 {
						continue // crashed before the patch landed: replay
					}
					world[i].Restarted, world[i].RolledOut = true, false
					restarts[a.Workload.Name]++
					order = append(order, a.Workload.Name)
				case Wait:
					world[i].RolledOut = rng.IntN(2) == 0
				}
			}
			for name, n := range restarts {
				g.Expect(n).To(Equal(1), "%s restarted %d times", name, n)
			}
			want := []string{"sentry", "injector", "operator", "placement"}
			if world[4].Exists {
				want = append(want, "scheduler")
			}
			g.Expect(order).To(Equal(want))
		})
	}
}

func indexOf(ws []Observed, name string) int {
	for i, w := range ws {
		if w.Name == name {
			return i
		}
	}
	return -1
}

func app(ns, name string, restarted, rolledOut bool) Observed {
	return Observed{Ref: Ref{Kind: "Deployment", Namespace: ns, Name: name}, Exists: true, Restarted: restarted, RolledOut: rolledOut}
}

func TestNextWave(t *testing.T) {
	g := NewWithT(t)
	apps := []Observed{app("b", "x", false, true), app("a", "z", false, true), app("a", "y", false, true)}

	plan := NextWave(apps, 2)
	g.Expect(plan.Restart).To(Equal([]Ref{{"Deployment", "a", "y"}, {"Deployment", "a", "z"}}), "stable order, bounded wave")
	g.Expect(plan.Total).To(Equal(3))

	apps = []Observed{app("b", "x", false, true), app("a", "z", true, false), app("a", "y", true, true)}
	plan = NextWave(apps, 2)
	g.Expect(plan.Restart).To(Equal([]Ref{{"Deployment", "b", "x"}}), "a slot freed by y is used at once, while z still rolls out")
	g.Expect(plan.Waiting).To(HaveLen(1))
	g.Expect(plan.Waiting[0].Name).To(Equal("z"))
	g.Expect(plan.Restarted).To(Equal(1))

	apps = []Observed{app("b", "x", false, true), app("a", "z", true, false), app("a", "y", true, false)}
	plan = NextWave(apps, 2)
	g.Expect(plan.Restart).To(BeEmpty(), "no room while maxConcurrent are in flight")
	g.Expect(plan.Done).To(BeFalse())

	apps = []Observed{app("b", "x", false, true), app("a", "z", true, true), app("a", "y", true, true)}
	plan = NextWave(apps, 2)
	g.Expect(plan.Restart).To(Equal([]Ref{{"Deployment", "b", "x"}}))

	apps = []Observed{app("b", "x", true, true), app("a", "z", true, true)}
	plan = NextWave(apps, 0)
	g.Expect(plan.Done).To(BeTrue())
	g.Expect(plan.Restarted).To(Equal(2))

	g.Expect(NextWave(nil, 5).Done).To(BeTrue())
}

func TestWavesNeverExceedMaxConcurrent(t *testing.T) {
	for seed := range uint64(50) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			g := NewWithT(t)
			rng := rand.New(rand.NewPCG(seed, 2))
			maxConcurrent := 1 + rng.IntN(6)
			var apps []Observed
			for i := range 1 + rng.IntN(30) {
				apps = append(apps, app(fmt.Sprintf("ns-%d", i%4), fmt.Sprintf("app-%02d", i), false, true))
			}
			restarts := map[string]int{}
			for range 1000 {
				plan := NextWave(apps, maxConcurrent)
				if plan.Done {
					break
				}
				inFlight := 0
				for _, a := range apps {
					if a.Restarted && !a.RolledOut {
						inFlight++
					}
				}
				g.Expect(inFlight + len(plan.Restart)).To(BeNumerically("<=", maxConcurrent))
				for _, r := range plan.Restart {
					for i := range apps {
						if apps[i].Ref == r {
							apps[i].Restarted, apps[i].RolledOut = true, false
							restarts[r.Name]++
						}
					}
				}
				for i := range apps {
					if apps[i].Restarted && !apps[i].RolledOut {
						apps[i].RolledOut = rng.IntN(2) == 0
					}
				}
			}
			g.Expect(restarts).To(HaveLen(len(apps)))
			for name, n := range restarts {
				g.Expect(n).To(Equal(1), "%s restarted %d times", name, n)
			}
		})
	}
}

func TestWavesMatchWhatNextWaveDoes(t *testing.T) {
	g := NewWithT(t)
	var apps []Observed
	var refs []Ref
	for i := range 7 {
		a := app(fmt.Sprintf("ns-%d", i%3), fmt.Sprintf("app-%d", i), false, true)
		apps = append(apps, a)
		refs = append(refs, a.Ref)
	}
	waves := Waves(refs, 3)
	g.Expect(waves).To(HaveLen(3))
	for _, wave := range waves {
		plan := NextWave(apps, 3)
		g.Expect(plan.Restart).To(Equal(wave))
		for i := range apps {
			for _, r := range wave {
				if apps[i].Ref == r {
					apps[i].Restarted = true
				}
			}
		}
	}
	g.Expect(NextWave(apps, 3).Done).To(BeTrue())
	g.Expect(Waves(nil, 3)).To(BeEmpty())
}

func TestParseRefReadsWhatStringWrote(t *testing.T) {
	g := NewWithT(t)
	ref := Ref{Kind: "StatefulSet", Namespace: "dapr-system", Name: "dapr-placement-server"}
	g.Expect(ParseRef(ref.String())).To(Equal(ref))
	for _, bad := range []string{"", "Deployment", "Deployment dapr-system", "Deployment /x", "Deployment ns/", " ns/x", "Deployment ns/a/b", "Deployment ns/a b"} {
		_, err := ParseRef(bad)
		g.Expect(err).To(HaveOccurred(), "%q", bad)
	}
}

// TestOverdue: each restart is timed from when it was asked for (from the
// wait's start when unknown); the earliest deadline of the others is next.
func TestOverdue(t *testing.T) {
	g := NewWithT(t)
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	at := func(name string, ago time.Duration) Observed {
		o := app("a", name, true, false)
		if ago > 0 {
			o.RestartedAt = now.Add(-ago)
		}
		return o
	}
	overdue, next := Overdue([]Observed{at("slow", 11*time.Minute), at("fresh", time.Minute), at("older", 4*time.Minute)}, now, 10*time.Minute, now)
	g.Expect(overdue).To(HaveLen(1))
	g.Expect(overdue[0].Name).To(Equal("slow"))
	g.Expect(next).To(Equal(now.Add(6*time.Minute)), "older is due first of the others")
	overdue, _ = Overdue([]Observed{at("unknown", 0)}, now.Add(-time.Hour), 10*time.Minute, now)
	g.Expect(overdue).To(HaveLen(1), "timed from since")
	overdue, next = Overdue(nil, now, time.Minute, now)
	g.Expect(overdue).To(BeEmpty())
	g.Expect(next.IsZero()).To(BeTrue())
}

func TestNextWaveSkipsConvergedApplications(t *testing.T) {
	g := NewWithT(t)
	app := func(name string, restarted, rolledOut, converged bool) Observed {
		return Observed{Ref: Ref{Kind: "Deployment", Namespace: "a", Name: name}, Exists: true, Restarted: restarted, RolledOut: rolledOut, Converged: converged}
	}
	plan := NextWave([]Observed{app("a", false, true, true), app("b", false, true, false), app("c", false, true, true)}, 5)
	g.Expect(plan.Restart).To(Equal([]Ref{{Kind: "Deployment", Namespace: "a", Name: "b"}}), "only what is not converged")
	g.Expect(plan.Skipped).To(Equal(2))
	g.Expect(plan.Done).To(BeFalse())
	plan = NextWave([]Observed{app("a", false, true, true), app("b", true, true, true)}, 5)
	g.Expect(plan.Done).To(BeTrue())
	g.Expect(plan.Restarted).To(Equal(1), "restarted in this phase counts as restarted, converged or not")
	g.Expect(plan.Skipped).To(Equal(1))
	plan = NextWave([]Observed{app("a", true, false, true)}, 5)
	g.Expect(plan.Waiting).To(HaveLen(1), "a restarted application is awaited even when its old pods look converged")
}

// BenchmarkNextWave10000 plans the next restarts over 10,000 applications,
// a window of 50 in flight: what every pass of the applications step does.
func BenchmarkNextWave10000(b *testing.B) {
	apps := make([]Observed, 10000)
	for i := range apps {
		apps[i] = app(fmt.Sprintf("ns-%03d", i%100), fmt.Sprintf("app-%05d", i), i < 5000, i < 4950)
	}
	b.ReportAllocs()
	for b.Loop() {
		if plan := NextWave(apps, 50); len(plan.Waiting) != 50 {
			b.Fatalf("%d in flight", len(plan.Waiting))
		}
	}
}

// TestAskedForCountsRestartsTheCacheDoesNotShowYet: a restart asked for a
// moment ago is in flight though the observation lacks it; one asked for
// longer ago than the TTL and still unseen was undone, and is not counted.
func TestAskedForCountsRestartsTheCacheDoesNotShowYet(t *testing.T) {
	g := NewWithT(t)
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	observed := []Observed{
		app("a", "fresh", false, false), app("a", "undone", false, false), app("a", "seen", true, true),
		app("a", "never", false, false), {Ref: Ref{Kind: "Deployment", Namespace: "a", Name: "gone"}},
	}
	observed[3].Converged = true
	asked := map[Ref]time.Time{
		observed[0].Ref: now.Add(-time.Second), observed[1].Ref: now.Add(-time.Minute),
		observed[2].Ref: now.Add(-time.Second), observed[4].Ref: now.Add(-time.Second),
	}
	AskedFor(observed, asked, now, 30*time.Second)
	g.Expect(observed[0].Restarted).To(BeTrue())
	g.Expect(observed[0].RolledOut).To(BeFalse())
	g.Expect(observed[0].RestartedAt).To(Equal(now.Add(-time.Second)))
	g.Expect(observed[1].Restarted).To(BeFalse(), "older than the TTL: undone by someone, asked for again")
	g.Expect(observed[2].RolledOut).To(BeTrue(), "what the cache shows wins")
	g.Expect(observed[3].Restarted).To(BeFalse(), "never asked for")
	g.Expect(observed[4].Restarted).To(BeFalse(), "a workload that does not exist")

	plan := NextWave(observed[:2], 2)
	g.Expect(plan.Restart).To(ConsistOf(observed[1].Ref), "the one in flight is not restarted again")
}

func TestCanary(t *testing.T) {
	app := func(name string, pods int32, set ...func(*Observed)) Observed {
		o := Observed{Ref: Ref{Kind: "Deployment", Namespace: "team", Name: name}, Exists: true, Pods: pods}
		for _, f := range set {
			f(&o)
		}
		return o
	}
	restarted := func(o *Observed) { o.Restarted = true }
	converged := func(o *Observed) { o.Converged = true }
	tests := []struct {
		name   string
		apps   []Observed
		chosen string
		want   string
	}{
		{"the first to restart, in restart order", []Observed{app("c", 1), app("b", 1), app("a", 1)}, "", "a"},
		{"not one that runs no pod", []Observed{app("a", 0), app("b", 2)}, "", "b"},
		{"not one converged already: it is not restarted", []Observed{app("a", 1, converged), app("b", 1)}, "", "b"},
		{"the one recorded", []Observed{app("a", 1), app("b", 1, restarted)}, "Deployment team/b", "b"},
		{"one restarted for the phase when the record was lost", []Observed{app("a", 1), app("b", 1, restarted)}, "", "b"},
		{"none runs a pod", []Observed{app("a", 0), app("b", 0, restarted)}, "", ""},
		{"none left to restart", []Observed{app("a", 1, converged)}, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := Canary(tt.apps, tt.chosen)
			if ok != (tt.want != "") || got.Name != tt.want {
				t.Fatalf("Canary = %q, %v; want %q", got.Name, ok, tt.want)
			}
		})
	}
}

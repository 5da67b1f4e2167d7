package eviction

import (
	"testing"

	. "github.com/onsi/gomega"

	"github.com/mtls-rotator/mtls-rotator/internal/convergence"
)

func TestCandidates(t *testing.T) {
	g := NewWithT(t)
	req := convergence.Requirement{Roots: []string{"new"}}
	pods := []convergence.Pod{
		{Name: "bare-old", Anchors: []string{"old"}},
		{Name: "bare-new", Anchors: []string{"old", "new"}},
		{Name: "managed-old", Workload: "Deployment team/a", Anchors: []string{"old"}},
		{Name: "leaving-old", Terminating: true, Anchors: []string{"old"}},
		{Name: "unreadable", Problem: "no daprd container"},
	}
	var names []string
	for _, p := range Candidates(pods, req) {
		names = append(names, p.Name)
	}
	g.Expect(names).To(Equal([]string{"bare-old", "unreadable"}), "pods no restart reaches, running, that do not trust the new root")
}

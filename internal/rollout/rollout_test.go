package rollout

import (
	"testing"

	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/utils/ptr"
)

func TestDeployment(t *testing.T) {
	deploy := func(gen, observed int64, replicas, updated, available, unavailable int32) *appsv1.Deployment {
		return &appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Generation: gen},
			Spec:       appsv1.DeploymentSpec{Replicas: ptr.To[int32](3)},
			Status: appsv1.DeploymentStatus{ObservedGeneration: observed, Replicas: replicas, UpdatedReplicas: updated,
				AvailableReplicas: available, UnavailableReplicas: unavailable},
		}
	}
	tests := []struct {
		name   string
		d      *appsv1.Deployment
		done   bool
		reason string
	}{
		{"complete", deploy(2, 2, 3, 3, 3, 0), true, ""},
		{"generation not observed", deploy(3, 2, 3, 3, 3, 0), false, "generation 3 not yet observed"},
		{"old pods still there", deploy(2, 2, 4, 3, 3, 0), false, "1 old replicas pending termination"},
		{"not all updated", deploy(2, 2, 3, 2, 3, 0), false, "2 of 3 replicas updated"},
		{"not all available", deploy(2, 2, 3, 3, 2, 1), false, "2 of 3 updated replicas available"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			NewWithT(t).Expect(Deployment(tt.d)).To(Equal(Status{Done: tt.done, Reason: tt.reason}))
		})
	}
}

func TestStatefulSet(t *testing.T) {
	sts := func(gen, observed int64, current, update string, updated, ready int32) *appsv1.StatefulSet {
		return &appsv1.StatefulSet{
			ObjectMeta: metav1.ObjectMeta{Generation: gen},
			Spec:       appsv1.StatefulSetSpec{Replicas: ptr.To[int32](2)},
			Status: appsv1.StatefulSetStatus{ObservedGeneration: observed, CurrentRevision: current, UpdateRevision: update,
				UpdatedReplicas: updated, ReadyReplicas: ready, AvailableReplicas: ready},
		}
	}
	tests := []struct {
		name string
		s    *appsv1.StatefulSet
		done bool
	}{
		{"complete", sts(2, 2, "r2", "r2", 2, 2), true},
		{"revision behind", sts(2, 2, "r1", "r2", 2, 2), false},
		{"generation not observed", sts(3, 2, "r2", "r2", 2, 2), false},
		{"not ready", sts(2, 2, "r2", "r2", 2, 1), false},
		{"not updated", sts(2, 2, "r2", "r2", 1, 2), false},
		{"no revision yet", sts(1, 1, "", "", 0, 0), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := StatefulSet(tt.s)
			g := NewWithT(t)
			g.Expect(st.Done).To(Equal(tt.done))
			if !tt.done {
				g.Expect(st.Reason).NotTo(BeEmpty())
			}
		})
	}
}

func TestDaemonSet(t *testing.T) {
	ds := func(gen, observed int64, desired, updated, available, unavailable int32) *appsv1.DaemonSet {
		return &appsv1.DaemonSet{
			ObjectMeta: metav1.ObjectMeta{Generation: gen},
			Status: appsv1.DaemonSetStatus{ObservedGeneration: observed, DesiredNumberScheduled: desired,
				UpdatedNumberScheduled: updated, NumberAvailable: available, NumberUnavailable: unavailable},
		}
	}
	tests := []struct {
		name string
		d    *appsv1.DaemonSet
		done bool
	}{
		{"complete", ds(4, 4, 3, 3, 3, 0), true},
		{"no nodes", ds(1, 1, 0, 0, 0, 0), true},
		{"generation not observed", ds(4, 3, 3, 3, 3, 0), false},
		{"not updated", ds(4, 4, 3, 2, 3, 0), false},
		{"not available", ds(4, 4, 3, 3, 2, 1), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			NewWithT(t).Expect(DaemonSet(tt.d).Done).To(Equal(tt.done))
		})
	}
}

func TestArgoRollout(t *testing.T) {
	ro := func(restartAt, restartedAt string, replicas, available int64) *unstructured.Unstructured {
		u := &unstructured.Unstructured{Object: map[string]any{"spec": map[string]any{}, "status": map[string]any{"availableReplicas": available}}}
		if replicas >= 0 {
			_ = unstructured.SetNestedField(u.Object, replicas, "spec", "replicas")
		}
		if restartAt != "" {
			_ = unstructured.SetNestedField(u.Object, restartAt, "spec", "restartAt")
		}
		if restartedAt != "" {
			_ = unstructured.SetNestedField(u.Object, restartedAt, "status", "restartedAt")
		}
		return u
	}
	const at, before = "2026-11-29T10:00:00Z", "2026-11-28T10:00:00Z"
	tests := []struct {
		name string
		u    *unstructured.Unstructured
		done bool
	}{
		{"restarted and available", ro(at, at, 3, 3), true},
		{"never restarted", ro("", "", 2, 2), true},
		{"one replica by default", ro(at, at, -1, 1), true},
		{"restart asked, not done", ro(at, before, 3, 3), false},
		{"restart asked, never done before", ro(at, "", 3, 3), false},
		{"restarted, not yet available", ro(at, at, 3, 2), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			NewWithT(t).Expect(ArgoRollout(tt.u).Done).To(Equal(tt.done))
		})
	}
}

func TestNeverRollsOut(t *testing.T) {
	g := NewWithT(t)
	sts := func(u appsv1.StatefulSetUpdateStrategy) *appsv1.StatefulSet {
		return &appsv1.StatefulSet{Spec: appsv1.StatefulSetSpec{UpdateStrategy: u}}
	}
	partition := func(n int32) appsv1.StatefulSetUpdateStrategy {
		return appsv1.StatefulSetUpdateStrategy{Type: appsv1.RollingUpdateStatefulSetStrategyType,
			RollingUpdate: &appsv1.RollingUpdateStatefulSetStrategy{Partition: &n}}
	}
	g.Expect(StatefulSetNeverRollsOut(sts(appsv1.StatefulSetUpdateStrategy{}))).To(BeEmpty(), "the default rolls out")
	g.Expect(StatefulSetNeverRollsOut(sts(partition(0)))).To(BeEmpty())
	g.Expect(StatefulSetNeverRollsOut(sts(appsv1.StatefulSetUpdateStrategy{Type: appsv1.OnDeleteStatefulSetStrategyType}))).To(ContainSubstring("updateStrategy OnDelete"))
	g.Expect(StatefulSetNeverRollsOut(sts(partition(2)))).To(ContainSubstring("partition 2"))
	g.Expect(DaemonSetNeverRollsOut(&appsv1.DaemonSet{})).To(BeEmpty())
	g.Expect(DaemonSetNeverRollsOut(&appsv1.DaemonSet{Spec: appsv1.DaemonSetSpec{UpdateStrategy: appsv1.DaemonSetUpdateStrategy{Type: appsv1.OnDeleteDaemonSetStrategyType}}})).
		To(ContainSubstring("updateStrategy OnDelete"))
}

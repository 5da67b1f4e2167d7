// Package rollout decides from a workload's live object whether its latest
// spec has fully rolled out. It is recomputed from the world on every pass,
// never remembered.
package rollout

import (
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// Status says whether a rollout is complete and, when not, why.
type Status struct {
	Done   bool
	Reason string
}

func pending(format string, args ...any) Status {
	return Status{Reason: fmt.Sprintf(format, args...)}
}

func replicas(p *int32) int32 {
	if p == nil {
		return 1
	}
	return *p
}

// Deployment: the controller has observed the latest generation, every
// replica runs the latest template and is available, and no old pod is left.
func Deployment(d *appsv1.Deployment) Status {
	want, s := replicas(d.Spec.Replicas), d.Status
	switch {
	case s.ObservedGeneration < d.Generation:
		return pending("generation %d not yet observed", d.Generation)
	case s.UpdatedReplicas < want:
		return pending("%d of %d replicas updated", s.UpdatedReplicas, want)
	case s.Replicas > s.UpdatedReplicas:
		return pending("%d old replicas pending termination", s.Replicas-s.UpdatedReplicas)
	case s.AvailableReplicas < want || s.UnavailableReplicas > 0:
		return pending("%d of %d updated replicas available", s.AvailableReplicas, want)
	}
	return Status{Done: true}
}

// StatefulSetNeverRollsOut says why a restart of the StatefulSet's pod
// template would never roll it out, or "": with updateStrategy OnDelete its
// controller replaces no pod, and with a partition it leaves the pods below
// the partition's ordinal on the old template.
func StatefulSetNeverRollsOut(s *appsv1.StatefulSet) string {
	u := s.Spec.UpdateStrategy
	switch {
	case u.Type == appsv1.OnDeleteStatefulSetStrategyType:
		return "has updateStrategy OnDelete: its controller replaces a pod only when the pod is deleted"
	case u.RollingUpdate != nil && u.RollingUpdate.Partition != nil && *u.RollingUpdate.Partition > 0:
		return fmt.Sprintf("has updateStrategy RollingUpdate with partition %d: its pods with an ordinal below %d keep the old template",
			*u.RollingUpdate.Partition, *u.RollingUpdate.Partition)
	}
	return ""
}

// DaemonSetNeverRollsOut says why a restart of the DaemonSet's pod template
// would never roll it out, or "".
func DaemonSetNeverRollsOut(ds *appsv1.DaemonSet) string {
	if ds.Spec.UpdateStrategy.Type == appsv1.OnDeleteDaemonSetStrategyType {
		return "has updateStrategy OnDelete: its controller replaces a pod only when the pod is deleted"
	}
	return ""
}

// StatefulSet: the controller has observed the latest generation, the current
// revision is the update revision, and every replica is updated and ready.
func StatefulSet(s *appsv1.StatefulSet) Status {
	want, st := replicas(s.Spec.Replicas), s.Status
	switch {
	case st.ObservedGeneration < s.Generation:
		return pending("generation %d not yet observed", s.Generation)
	case st.UpdateRevision == "" || st.CurrentRevision != st.UpdateRevision:
		return pending("current revision %q is not update revision %q", st.CurrentRevision, st.UpdateRevision)
	case st.UpdatedReplicas < want:
		return pending("%d of %d replicas updated", st.UpdatedReplicas, want)
	case st.ReadyReplicas < want || st.AvailableReplicas < want:
		return pending("%d of %d replicas ready", st.ReadyReplicas, want)
	}
	return Status{Done: true}
}

// DaemonSet: the controller has observed the latest generation and every
// scheduled pod is updated and available.
func DaemonSet(ds *appsv1.DaemonSet) Status {
	st := ds.Status
	switch {
	case st.ObservedGeneration < ds.Generation:
		return pending("generation %d not yet observed", ds.Generation)
	case st.UpdatedNumberScheduled < st.DesiredNumberScheduled:
		return pending("%d of %d pods updated", st.UpdatedNumberScheduled, st.DesiredNumberScheduled)
	case st.NumberAvailable < st.DesiredNumberScheduled || st.NumberUnavailable > 0:
		return pending("%d of %d pods available", st.NumberAvailable, st.DesiredNumberScheduled)
	}
	return Status{Done: true}
}

// ArgoRollout: an Argo Rollout restarted through spec.restartAt. Its
// controller evicts every pod created before restartAt and then records
// status.restartedAt; the restart is done once that caught up with restartAt
// and every replica is available again.
func ArgoRollout(u *unstructured.Unstructured) Status {
	restartAt, _, _ := unstructured.NestedString(u.Object, "spec", "restartAt")
	restartedAt, _, _ := unstructured.NestedString(u.Object, "status", "restartedAt")
	want, found, _ := unstructured.NestedInt64(u.Object, "spec", "replicas")
	if !found {
		want = 1
	}
	available, _, _ := unstructured.NestedInt64(u.Object, "status", "availableReplicas")
	switch {
	case restartAt != "" && restartedAt != restartAt:
		return pending("pods created before %s not yet restarted (restarted at %q)", restartAt, restartedAt)
	case available < want:
		return pending("%d of %d replicas available", available, want)
	}
	return Status{Done: true}
}

package controllers

import (
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
	"github.com/mtls-rotator/mtls-rotator/internal/convergence"
	"github.com/mtls-rotator/mtls-rotator/internal/restart"
)

// argoRollout is a Dapr-enabled Argo Rollout of three replicas, restarted
// for restartID (none when empty) and, when done, fully restarted since.
func argoRollout(namespace, name, restartID string, done bool) *unstructured.Unstructured {
	u := newRollout()
	u.SetNamespace(namespace)
	u.SetName(name)
	u.SetLabels(map[string]string{"app": name})
	_ = unstructured.SetNestedField(u.Object, int64(3), "spec", "replicas")
	_ = unstructured.SetNestedStringMap(u.Object, map[string]string{rotatorv1.DaprEnabledAnnotation: "true", "other": "x"}, "spec", "template", "metadata", "annotations")
	_ = unstructured.SetNestedField(u.Object, int64(3), "status", "availableReplicas")
	if restartID != "" {
		u.SetAnnotations(map[string]string{restart.Annotation: restartID, "kept": "no"})
		at := t0.Add(-time.Minute).UTC().Format(time.RFC3339)
		_ = unstructured.SetNestedField(u.Object, at, "spec", "restartAt")
		if done {
			_ = unstructured.SetNestedField(u.Object, at, "status", "restartedAt")
		}
	}
	return u
}

// TestArgoRolloutsAreRestartedThroughRestartAt: where Argo Rollouts is
// installed, a Dapr-enabled Rollout is an application: restarted through
// spec.restartAt with the rotation id in an annotation, never through its
// template, and awaited until its controller restarted every pod. Where it
// is not, Rollouts are not looked for.
func TestArgoRolloutsAreRestartedThroughRestartAt(t *testing.T) {
	k := newPKI(t)
	installed := bundleFrom(t, k.renewIssuer, k.renewed)
	step := atStep(rotatorv1.StepRestartingApplications, rotatorv1.KeyPolicyReuse, "")
	// webPod is a pod Argo's controller made after the restart: the canary's evidence.
	webPod := started(sidecarPod("team", "web-5d4f9-x", "web-5d4f9", ns, k.renewed.CertPEM()), t0)
	delete(webPod.Labels, convergence.PodTemplateHashLabel)
	webPod.Labels[convergence.RolloutsPodTemplateHashLabel] = "5d4f9"
	appPod := started(sidecarPod("team", "a-5d4f9-x", "a-5d4f9", ns, k.renewed.CertPEM()), t0)
	tests := []struct {
		name         string
		rollouts     bool
		objs         []client.Object
		want         string
		wantWrites   []string
		wantProgress string
	}{
		{"restarted through restartAt", true, []client.Object{argoRollout("team", "web", "", false)}, "wait", []string{"patch Rollout/web"}, "0/1"},
		{"awaited until every pod restarted", true, []client.Object{argoRollout("team", "web", "r-1", false)}, "wait", nil, "0/1"},
		{"done once restartedAt caught up", true, []client.Object{argoRollout("team", "web", "r-1", true), webPod}, "", nil, "1/1"},
		{"not looked for where Argo Rollouts is not installed", false, []client.Object{daprApp("team", "a", "r-1"), appPod}, "", nil, "1/1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			h := newHarness(t, append(append(trustBundle(installed), tt.objs...), rotationObj(step))...)
			h.r.Rollouts = tt.rollouts
			p := h.pass("mesh")
			err := p.stepApplications(t.Context())
			g.Expect(kindOf(err)).To(Equal(tt.want), "%v", err)
			g.Expect(h.writes).To(Equal(tt.wantWrites))
			g.Expect(p.obj.Status.Applications.Progress).To(Equal(tt.wantProgress))
			if tt.wantWrites == nil {
				return
			}
			got := newRollout()
			g.Expect(h.client.Get(t.Context(), client.ObjectKey{Namespace: "team", Name: "web"}, got)).To(Succeed())
			g.Expect(got.GetAnnotations()).To(HaveKeyWithValue(restart.Annotation, "r-1"))
			restartAt, _, _ := unstructured.NestedString(got.Object, "spec", "restartAt")
			g.Expect(restartAt).To(Equal(t0.UTC().Format(time.RFC3339)))
			g.Expect(rolloutTemplateAnnotations(got)).NotTo(HaveKey(restart.Annotation), "the template is left alone: no new revision")
		})
	}
}

// TestTrimRolloutKeepsWhatARotationReads: a cached Rollout holds its
// identity, the restart annotation, replicas, the restart's progress and
// the Dapr annotation of its template; nothing else.
func TestTrimRolloutKeepsWhatARotationReads(t *testing.T) {
	g := NewWithT(t)
	full := argoRollout("team", "web", "r-1", true)
	_ = unstructured.SetNestedField(full.Object, "a long pod spec", "spec", "template", "spec", "containers")
	_ = unstructured.SetNestedField(full.Object, "Healthy", "status", "phase")
	trimmed, err := TrimRollout(full)
	g.Expect(err).NotTo(HaveOccurred())
	u := trimmed.(*unstructured.Unstructured)
	g.Expect(u.GetAnnotations()).To(Equal(map[string]string{restart.Annotation: "r-1"}))
	g.Expect(rolloutTemplateAnnotations(u)).To(Equal(map[string]string{rotatorv1.DaprEnabledAnnotation: "true"}))
	g.Expect(observeRollout(u, "r-1")).To(Equal(observeRollout(full, "r-1")))
	_, found, _ := unstructured.NestedFieldNoCopy(u.Object, "spec", "template", "spec")
	g.Expect(found).To(BeFalse())
	_, found, _ = unstructured.NestedFieldNoCopy(u.Object, "status", "phase")
	g.Expect(found).To(BeFalse())
}

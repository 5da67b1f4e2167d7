package controllers

import (
	"context"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	fluxcontroller "github.com/fluxcd/pkg/runtime/controller"
	fluxmetrics "github.com/fluxcd/pkg/runtime/metrics"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
)

// Rotation results counted by mtls_rotator_rotations_total.
const (
	ResultCompleted  = "completed"
	ResultRolledBack = "rolled_back"
	ResultReplaced   = "replaced"
)

// Metrics are the operator's Prometheus metrics: Flux's gotk_* reconcile
// metrics, rotation counters and durations recorded as rotations run, and the
// state of every MTLSRootRotation (expiry timestamps, current step,
// application progress) read from the cache at scrape time.
type Metrics struct {
	gotk             fluxcontroller.Metrics
	rotations        *prometheus.CounterVec
	rotationDuration *prometheus.HistogramVec
	stepDuration     *prometheus.HistogramVec
	state            *stateCollector
}

// NewMetrics makes the metrics; reader is where the scrape-time state is
// read (the manager's cache). Register Collectors with a registry.
func NewMetrics(scheme *runtime.Scheme, reader client.Reader) *Metrics {
	return &Metrics{
		gotk: fluxcontroller.Metrics{Scheme: scheme, MetricsRecorder: fluxmetrics.NewRecorder()},
		rotations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mtls_rotator_rotations_total",
			Help: "Rotations ended, by result: completed, rolled_back, or replaced before publishing anything.",
		}, []string{"namespace", "name", "result", "cause"}),
		rotationDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "mtls_rotator_rotation_duration_seconds",
			Help:    "Duration of completed rotations, from start to completion.",
			Buckets: prometheus.ExponentialBucketsRange(1, 6*3600, 12),
		}, []string{"namespace", "name", "cause"}),
		stepDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "mtls_rotator_step_duration_seconds",
			Help:    "Duration of finished rotation steps, by step and trust-overlap phase.",
			Buckets: prometheus.ExponentialBucketsRange(0.1, 3600, 12),
		}, []string{"step", "phase"}),
		state: &stateCollector{reader: reader},
	}
}

// Collectors returns every collector, to register with a registry.
func (m *Metrics) Collectors() []prometheus.Collector {
	return append(m.gotk.MetricsRecorder.Collectors(), m.rotations, m.rotationDuration, m.stepDuration, m.state)
}

// recordReconcile records Flux's reconcile metrics for obj.
func (m *Metrics) recordReconcile(ctx context.Context, obj *rotatorv1.MTLSRootRotation, start time.Time) {
	if m == nil {
		return
	}
	m.gotk.RecordDuration(ctx, obj, start)
	m.gotk.RecordSuspend(ctx, obj, obj.Spec.Suspend)
	m.gotk.RecordReadiness(ctx, obj)
	m.gotk.RecordReconciling(ctx, obj)
	m.gotk.RecordStalled(ctx, obj)
}

// rotationEnded counts a rotation that ended; a completed one's duration is observed.
func (m *Metrics) rotationEnded(obj *rotatorv1.MTLSRootRotation, rot *rotatorv1.RotationStatus, result string, now time.Time) {
	if m == nil || rot == nil {
		return
	}
	cause := string(rot.Cause)
	if cause == "" {
		cause = string(rotatorv1.CauseTrigger)
	}
	m.rotations.WithLabelValues(obj.Namespace, obj.Name, result, cause).Inc()
	if result == ResultCompleted {
		m.rotationDuration.WithLabelValues(obj.Namespace, obj.Name, cause).Observe(now.Sub(rot.StartedAt.Time).Seconds())
	}
}

// stepFinished observes how long a step took.
func (m *Metrics) stepFinished(step rotatorv1.RotationStep, phase rotatorv1.RotationPhase, took time.Duration) {
	if m == nil {
		return
	}
	m.stepDuration.WithLabelValues(string(step), string(phase)).Observe(took.Seconds())
}

// forget drops the series of an object that no longer exists, so that no
// alert fires for it.
func (m *Metrics) forget(namespace, name string) {
	if m == nil {
		return
	}
	ref := corev1.ObjectReference{Kind: rotatorv1.MTLSRootRotationKind, Namespace: namespace, Name: name}
	for _, t := range []string{meta.ReadyCondition, meta.ReconcilingCondition, meta.StalledCondition} {
		m.gotk.MetricsRecorder.DeleteCondition(ref, t)
	}
	m.gotk.MetricsRecorder.DeleteSuspend(ref)
	m.gotk.MetricsRecorder.DeleteDuration(ref)
	labels := prometheus.Labels{"namespace": namespace, "name": name}
	m.rotations.DeletePartialMatch(labels)
	m.rotationDuration.DeletePartialMatch(labels)
}

// stateCollector reports the state of every MTLSRootRotation at scrape time,
// so that expiry timestamps are exact whatever the last reconcile was.
type stateCollector struct {
	reader client.Reader
}

var (
	expirationDesc = prometheus.NewDesc("mtls_rotator_certificate_expiration_timestamp_seconds",
		"When the root or issuer certificate Dapr Sentry holds expires, as a Unix timestamp; issuer-root is the anchor the issuer chains to, when it is not the newest (root); pods-root is when the first running Dapr pods that hold only an older root lose it.",
		[]string{"namespace", "name", "certificate"}, nil)
	stepDesc = prometheus.NewDesc("mtls_rotator_rotation_step",
		"The step (and trust-overlap phase) of each object's current or last rotation: 1 for it.",
		[]string{"namespace", "name", "step", "phase"}, nil)
	appsDesc = prometheus.NewDesc("mtls_rotator_rotation_applications",
		"Applications of the current or last rotation: total, and restarted and rolled out.",
		[]string{"namespace", "name", "state"}, nil)
	nextRenewalDesc = prometheus.NewDesc("mtls_rotator_next_renewal_timestamp_seconds",
		"When the next automatic renewal falls due (spec.renewBefore), as a Unix timestamp.",
		[]string{"namespace", "name"}, nil)
)

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- expirationDesc
	ch <- stepDesc
	ch <- appsDesc
	ch <- nextRenewalDesc
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	list := &rotatorv1.MTLSRootRotationList{}
	if err := c.reader.List(ctx, list); err != nil {
		ch <- prometheus.NewInvalidMetric(expirationDesc, err)
		return
	}
	for i := range list.Items {
		obj := &list.Items[i]
		ns, name, st := obj.Namespace, obj.Name, obj.Status
		for cert, s := range map[string]*rotatorv1.CertificateStatus{"root": st.Root, "issuer-root": st.IssuerRoot, "issuer": st.Issuer} {
			if s != nil {
				ch <- prometheus.MustNewConstMetric(expirationDesc, prometheus.GaugeValue, float64(s.NotAfter.Unix()), ns, name, cert)
			}
		}
		if c := st.Convergence; c != nil && c.CutOff != nil {
			ch <- prometheus.MustNewConstMetric(expirationDesc, prometheus.GaugeValue, float64(c.CutOff.At.Unix()), ns, name, "pods-root")
		}
		if st.Rotation != nil {
			ch <- prometheus.MustNewConstMetric(stepDesc, prometheus.GaugeValue, 1, ns, name, string(st.Rotation.Step), string(st.Rotation.Phase))
		}
		if a := st.Applications; a != nil {
			ch <- prometheus.MustNewConstMetric(appsDesc, prometheus.GaugeValue, float64(a.Total), ns, name, "total")
			ch <- prometheus.MustNewConstMetric(appsDesc, prometheus.GaugeValue, float64(a.Restarted), ns, name, "restarted")
		}
		if st.NextRenewal != nil {
			ch <- prometheus.MustNewConstMetric(nextRenewalDesc, prometheus.GaugeValue, float64(st.NextRenewal.Unix()), ns, name)
		}
	}
}

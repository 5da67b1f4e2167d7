package controllers

import (
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	rotatorv1 "github.com/mtls-rotator/mtls-rotator/api/v1alpha1"
)

func TestRenewBeforeWarning(t *testing.T) {
	tests := []struct {
		name        string
		renewBefore time.Duration
		ttl, skew   string
		warns       bool
	}{
		{"automatic renewal off", 0, "", "", false},
		{"a week against Dapr's defaults", 7 * 24 * time.Hour, "", "", false},
		{"a day is not more than a day and the skew", 24 * time.Hour, "", "", true},
		{"just above the defaults", 24*time.Hour + 16*time.Minute, "", "", false},
		{"short workload certificates", 2 * time.Hour, "1h", "15m", false},
		{"long workload certificates", 7 * 24 * time.Hour, "168h", "0s", true},
		{"unparseable settings fall back to Dapr's defaults", 2 * time.Hour, "a day", "soon", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg := renewBeforeWarning(tt.renewBefore, &rotatorv1.DaprConfigurationStatus{WorkloadCertTTL: tt.ttl, AllowedClockSkew: tt.skew})
			NewWithT(t).Expect(msg != "").To(Equal(tt.warns), "message: %q", msg)
		})
	}
}

func TestExpiringReasonAndItsAnnouncement(t *testing.T) {
	g := NewWithT(t)
	g.Expect(expiringReason([]string{"issuer"})).To(Equal("IssuerExpiringSoon"))
	g.Expect(expiringReason([]string{"root"})).To(Equal("RootExpiringSoon"))
	g.Expect(expiringReason([]string{"root", "issuer"})).To(Equal("RootAndIssuer" + rotatorv1.ExpiringSoonReason))
	g.Expect(covers("IssuerExpiringSoon", "IssuerExpiringSoon")).To(BeTrue())
	g.Expect(covers("IssuerExpiringSoon", "RootAndIssuerExpiringSoon")).To(BeFalse(), "the root joining is news")
	g.Expect(covers("RootAndIssuerExpiringSoon", "IssuerExpiringSoon")).To(BeTrue(), "a renewed root is not")
	g.Expect(covers("", "IssuerExpiringSoon")).To(BeFalse())
}

// TestObserveDaprConfigurations: the system Configuration of the object's
// namespace gives the mTLS settings; any Configuration of the cluster that
// turns WorkflowHistorySigning on is named, since applications choose theirs.
func TestObserveDaprConfigurations(t *testing.T) {
	config := func(ns, name string, mtls bool, features ...any) unstructured.Unstructured {
		spec := map[string]any{"mtls": map[string]any{"enabled": mtls, "workloadCertTTL": "24h"}}
		if len(features) > 0 {
			spec["features"] = features
		}
		u := unstructured.Unstructured{Object: map[string]any{"spec": spec}}
		u.SetNamespace(ns)
		u.SetName(name)
		return u
	}
	signing := map[string]any{"name": WorkflowHistorySigningFeature, "enabled": true}
	off := map[string]any{"name": WorkflowHistorySigningFeature, "enabled": false}
	system := config("dapr-system", "daprsystem", true)
	for _, tt := range []struct {
		name  string
		items []unstructured.Unstructured
		want  *rotatorv1.DaprConfigurationStatus
	}{
		{"none", nil, nil},
		{"the system Configuration alone", []unstructured.Unstructured{system},
			&rotatorv1.DaprConfigurationStatus{Name: "daprsystem", MTLSEnabled: true, WorkloadCertTTL: "24h"}},
		{"another control plane's is not this one's", []unstructured.Unstructured{config("dapr-b", "daprsystem", false)}, nil},
		{"an application's Configuration turns the feature on", []unstructured.Unstructured{system, config("shop", "orders", true, signing), config("shop", "cart", true, off)},
			&rotatorv1.DaprConfigurationStatus{Name: "daprsystem", MTLSEnabled: true, WorkloadCertTTL: "24h", WorkflowHistorySigning: "shop/orders"}},
		{"without a system Configuration, Dapr's defaults", []unstructured.Unstructured{config("shop", "orders", true, signing)},
			&rotatorv1.DaprConfigurationStatus{MTLSEnabled: true, WorkflowHistorySigning: "shop/orders"}},
		{"five named, the rest counted", []unstructured.Unstructured{
			config("a", "1", true, signing), config("a", "2", true, signing), config("a", "3", true, signing),
			config("a", "4", true, signing), config("a", "5", true, signing), config("a", "6", true, signing), config("a", "7", true, signing)},
			&rotatorv1.DaprConfigurationStatus{MTLSEnabled: true, WorkflowHistorySigning: "a/1, a/2, a/3, a/4, a/5 and 2 more"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			NewWithT(t).Expect(observeDaprConfigurations(tt.items, "dapr-system")).To(Equal(tt.want))
		})
	}
}

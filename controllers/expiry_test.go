package controllers

import (
	"testing"
	"time"

	. "github.com/onsi/gomega"

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

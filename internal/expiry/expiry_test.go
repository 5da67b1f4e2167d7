package expiry

import (
	"testing"
	"time"

	. "github.com/onsi/gomega"
)

func TestEvaluate(t *testing.T) {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	day := 24 * time.Hour
	root := func(in time.Duration) Certificate { return Certificate{Name: "root", NotAfter: now.Add(in)} }
	issuer := func(in time.Duration) Certificate { return Certificate{Name: "issuer", NotAfter: now.Add(in)} }
	monitor := Policy{Warning: 30 * day, RootRenewable: true}
	renew := Policy{Warning: 30 * day, RenewBefore: 7 * day, RootRenewable: true}
	tests := []struct {
		name     string
		root     Certificate
		issuer   Certificate
		policy   Policy
		expiring []string
		due      Renewal
		next     time.Time
	}{
		{"nothing published", Certificate{Name: "root"}, Certificate{Name: "issuer"}, renew, nil, None, time.Time{}},
		{"far from expiry: wake when the issuer's warning starts", root(365 * day), issuer(100 * day), monitor, nil, None, now.Add(70 * day)},
		{"issuer inside the warning", root(365 * day), issuer(20 * day), monitor, []string{"issuer"}, None, now.Add(20 * day)},
		{"both inside, soonest first", root(10 * day), issuer(20 * day), monitor, []string{"root", "issuer"}, None, now.Add(10 * day)},
		{"expired still listed", root(365 * day), issuer(-time.Hour), monitor, []string{"issuer"}, None, now.Add(335 * day)},
		{"no renewal without renewBefore", root(2 * day), issuer(2 * day), monitor, []string{"issuer", "root"}, None, now.Add(2 * day)},
		{"renewal wakes at the issuer's due time", root(365 * day), issuer(40 * day), renew, nil, None, now.Add(10 * day)},
		{"issuer due, root not", root(365 * day), issuer(7 * day), renew, []string{"issuer"}, Issuer, now.Add(7 * day)},
		{"root due renews both", root(6 * day), issuer(6 * day), renew, []string{"issuer", "root"}, Root, now.Add(6 * day)},
		{"root due, issuer not: wake when its warning starts", root(5 * day), issuer(30*day + time.Hour), renew, []string{"root"}, Root, now.Add(time.Hour)},
		{"external root is only reported", root(5 * day), issuer(100 * day), Policy{Warning: 30 * day, RenewBefore: 7 * day}, []string{"root"}, None, now.Add(5 * day)},
		{"an issuer capped at its external CA's expiry is not renewed", root(5 * day), issuer(5 * day), Policy{Warning: 30 * day, RenewBefore: 7 * day}, []string{"issuer", "root"}, None, now.Add(5 * day)},
		{"exactly at the due moment", root(365 * day), issuer(7 * day), renew, []string{"issuer"}, Issuer, now.Add(7 * day)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			s := Evaluate(tt.root, tt.issuer, tt.policy, now)
			var names []string
			for _, c := range s.Expiring {
				names = append(names, c.Name)
			}
			g.Expect(names).To(Equal(tt.expiring))
			g.Expect(s.Due).To(Equal(tt.due))
			g.Expect(s.Next).To(Equal(tt.next))
			if s.RenewAt.IsZero() {
				g.Expect(s.Due).To(Equal(None), "nothing due without a renewal moment")
			} else {
				g.Expect(s.Due != None).To(Equal(!now.Before(s.RenewAt)), "due exactly when the renewal moment has come")
			}
		})
	}
}

func TestDescribe(t *testing.T) {
	g := NewWithT(t)
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	g.Expect(Describe([]Certificate{
		{Name: "issuer", NotAfter: now.Add(90 * time.Minute)},
		{Name: "root", NotAfter: now.Add(20 * 24 * time.Hour)},
	}, now)).To(Equal("issuer certificate expires at 2026-11-26T13:30:00Z; root certificate expires at 2026-12-16T12:00:00Z"))
	g.Expect(Describe([]Certificate{{Name: "issuer", NotAfter: now.Add(-time.Hour)}}, now)).
		To(Equal("issuer certificate expired at 2026-11-26T11:00:00Z"))
}

package dapr

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Pair counts the calls from the sidecars of one application to those of
// another (the sidecar's stats file, per peer application).
type Pair struct {
	Calls int64 `json:"calls"`
	// Failed calls reached the peer and failed: a handshake refused, an
	// unknown authority, an error the peer returned.
	Failed int64 `json:"failed"`
	// Unreachable calls found no process listening (the peer's pod gone).
	Unreachable int64  `json:"unreachable"`
	LastError   string `json:"lastError,omitempty"`
}

// SidecarCounts is what one sidecar wrote last.
type SidecarCounts struct {
	Pod       string           `json:"pod"`
	Namespace string           `json:"namespace"`
	App       string           `json:"app"`
	Calls     map[string]*Pair `json:"calls"`
	SVID      struct {
		Serial string `json:"serial"`
		// Issuer is the SHA-256 of the SubjectPublicKeyInfo of the issuer
		// that signed the SVID, hex (see IssuerKeyID).
		Issuer   string    `json:"issuer"`
		NotAfter time.Time `json:"notAfter"`
		Renewals int       `json:"renewals"`
	} `json:"svid"`
	JWT struct {
		Supported bool   `json:"supported"`
		Verified  int64  `json:"verified"`
		Failed    int64  `json:"failed"`
		LastError string `json:"lastError,omitempty"`
	} `json:"jwt"`
	Done bool `json:"done"`
	// Live is set for the sidecar of a pod that is live and ready now.
	Live bool `json:"-"`
}

// Calls sums what every sidecar the mesh ran, live or stopped, counted.
type Calls struct {
	Sidecars []SidecarCounts
	// Pairs are the calls by "<from ns>/<app> -> <to ns>/<app>".
	Pairs map[string]*Pair
	Total Pair
	// Renewals counts the SVIDs renewed; JWTsVerified and JWTsFailed the
	// JWTs checked against the published JWKS.
	Renewals                 int
	JWTsVerified, JWTsFailed int64
	JWTSupported             bool
}

// Calls reads the counts every sidecar wrote.
func (m *Mesh) Calls() (Calls, error) {
	files, err := filepath.Glob(filepath.Join(m.o.Dir, "sidecar-*", "stats.json"))
	if err != nil {
		return Calls{}, err
	}
	live := map[string]bool{}
	m.mu.Lock()
	for _, mem := range m.members {
		live[mem.dir] = mem.ready
	}
	m.mu.Unlock()
	c := Calls{Pairs: map[string]*Pair{}}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if os.IsNotExist(err) {
			continue // a sidecar that never served
		}
		if err != nil {
			return Calls{}, err
		}
		var s SidecarCounts
		if err := json.Unmarshal(b, &s); err != nil {
			return Calls{}, fmt.Errorf("%s: %w", f, err)
		}
		s.Live = live[filepath.Dir(f)]
		c.add(s)
	}
	return c, nil
}

func (c *Calls) add(s SidecarCounts) {
	c.Sidecars = append(c.Sidecars, s)
	for to, p := range s.Calls {
		key := s.Namespace + "/" + s.App + " -> " + to
		sum := c.Pairs[key]
		if sum == nil {
			sum = &Pair{}
			c.Pairs[key] = sum
		}
		for _, into := range []*Pair{sum, &c.Total} {
			into.Calls += p.Calls
			into.Failed += p.Failed
			into.Unreachable += p.Unreachable
			if p.LastError != "" {
				into.LastError = p.LastError
			}
		}
	}
	c.Renewals += s.SVID.Renewals
	c.JWTsVerified += s.JWT.Verified
	c.JWTsFailed += s.JWT.Failed
	c.JWTSupported = c.JWTSupported || s.JWT.Supported
}

// Since is what was counted after before was read.
func (c Calls) Since(before Calls) Pair {
	return Pair{Calls: c.Total.Calls - before.Total.Calls, Failed: c.Total.Failed - before.Total.Failed,
		Unreachable: c.Total.Unreachable - before.Total.Unreachable}
}

// String is a line for a log: calls, failures, renewals and JWTs.
func (c Calls) String() string {
	s := fmt.Sprintf("calls %d, failed %d, unreachable %d, SVIDs renewed %d", c.Total.Calls, c.Total.Failed, c.Total.Unreachable, c.Renewals)
	if c.JWTSupported {
		s += fmt.Sprintf(", JWTs verified %d, failed %d", c.JWTsVerified, c.JWTsFailed)
	}
	return s
}

// Table lists the pairs, one a line.
func (c Calls) Table() string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(c.Pairs)) {
		p := c.Pairs[k]
		fmt.Fprintf(&b, "%-40s calls %6d failed %4d unreachable %3d %s\n", k, p.Calls, p.Failed, p.Unreachable, p.LastError)
	}
	return b.String()
}

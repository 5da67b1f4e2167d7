// Command sidecar stands in for daprd in the e2e suite with daprd's own mTLS
// code (Dapr's pkg/security): it takes the trust anchors its pod was
// injected with (DAPR_TRUST_ANCHORS, read once, as daprd does), gets its
// SVID from Dapr's Sentry with a token bound to its pod and renews it,
// serves gRPC over mTLS, and calls every peer continuously, each call on a
// new connection so that every call is a full handshake under the
// certificates and anchors held at that moment. It counts the calls and
// failures per peer and writes them to a file the suite reads.
//
// It is built by hack/build-dapr.sh inside a module that requires the Dapr
// release under test, so it runs that release's pkg/security.
package main

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jwt"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/dapr/dapr/pkg/healthz"
	"github.com/dapr/dapr/pkg/modes"
	"github.com/dapr/dapr/pkg/security"
)

// jwtAudience is the audience the sidecar asks Sentry's JWTs for.
const jwtAudience = "dapr.io/e2e"

// Peer is one sidecar another calls, as the suite lists them in the peers
// file.
type Peer struct {
	Pod       string `json:"pod"`
	Namespace string `json:"namespace"`
	App       string `json:"app"`
	Address   string `json:"address"`
}

// Pair counts the calls to one peer application.
type Pair struct {
	Calls int64 `json:"calls"`
	// Failed calls reached the peer and failed: a refused handshake, an
	// unknown authority, an error the peer returned.
	Failed int64 `json:"failed"`
	// Unreachable calls found no process listening (the peer's pod gone).
	Unreachable int64  `json:"unreachable"`
	LastError   string `json:"lastError,omitempty"`
}

// SVID is what the sidecar knows of its own workload certificate.
type SVID struct {
	Serial string `json:"serial"`
	// Issuer is the SHA-256 of the signing key's SubjectPublicKeyInfo (the
	// issuer certificate Sentry signed it with), hex.
	Issuer   string    `json:"issuer"`
	NotAfter time.Time `json:"notAfter"`
	// Renewals counts the new certificates after the first.
	Renewals int `json:"renewals"`
}

// JWT counts the JWT SVIDs fetched and checked against the published JWKS.
type JWT struct {
	Supported bool   `json:"supported"`
	Verified  int64  `json:"verified"`
	Failed    int64  `json:"failed"`
	LastError string `json:"lastError,omitempty"`
}

// Stats is what the sidecar writes to its stats file.
type Stats struct {
	Pod       string           `json:"pod"`
	Namespace string           `json:"namespace"`
	App       string           `json:"app"`
	Calls     map[string]*Pair `json:"calls"`
	SVID      SVID             `json:"svid"`
	JWT       JWT              `json:"jwt"`
	Done      bool             `json:"done"`
}

type flags struct {
	listen, healthzAddr, sentry, peers, stats, jwks, identity, pod, cpNamespace string
	interval, drain                                                             time.Duration
}

func main() {
	var f flags
	flag.StringVar(&f.listen, "listen", "127.0.0.1:0", "gRPC mTLS address")
	flag.StringVar(&f.healthzAddr, "healthz", "127.0.0.1:0", "health endpoint address")
	flag.StringVar(&f.sentry, "sentry-address", "", "Sentry's address")
	flag.StringVar(&f.peers, "peers", "", "file listing the peers to call (JSON)")
	flag.StringVar(&f.stats, "stats", "", "file to write the counts to (JSON)")
	flag.StringVar(&f.jwks, "jwks", "", "published JWKS file to verify JWTs with (optional)")
	flag.StringVar(&f.identity, "identity-dir", "", "directory the SVID is written to")
	flag.StringVar(&f.pod, "pod", "", "name of the pod this sidecar stands in for")
	flag.StringVar(&f.cpNamespace, "control-plane-namespace", "dapr-system", "Dapr's namespace")
	flag.DurationVar(&f.interval, "interval", 100*time.Millisecond, "time between rounds of calls to every peer")
	flag.DurationVar(&f.drain, "drain", 2*time.Second, "how long it still serves once told to stop")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, f); err != nil {
		log.Fatalf("sidecar: %v", err)
	}
}

func run(ctx context.Context, f flags) error {
	hz := healthz.New()
	sec, err := security.New(ctx, security.Options{
		SentryAddress:           f.sentry,
		ControlPlaneTrustDomain: "cluster.local",
		ControlPlaneNamespace:   f.cpNamespace,
		TrustAnchors:            []byte(os.Getenv("DAPR_TRUST_ANCHORS")),
		AppID:                   os.Getenv("APP_ID"),
		MTLSEnabled:             true,
		Mode:                    modes.KubernetesMode,
		Healthz:                 hz,
		WriteIdentityToFile:     &f.identity,
		JwtAudiences:            []string{jwtAudience},
	})
	if err != nil {
		return err
	}
	secCtx, stopSec := context.WithCancel(context.Background())
	secDone := make(chan error, 1)
	go func() { secDone <- sec.Run(secCtx) }()
	defer func() { stopSec(); <-secDone }()
	h, err := handler(ctx, sec, secDone)
	if err != nil {
		return err
	}

	lis, err := net.Listen("tcp", f.listen)
	if err != nil {
		return err
	}
	srv := grpc.NewServer(h.GRPCServerOptionMTLS())
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go func() { _ = srv.Serve(lis) }()
	if err := serveHealthz(f.healthzAddr, hz); err != nil {
		return err
	}

	s := &sidecar{f: f, h: h, stats: Stats{Pod: f.pod, Namespace: security.CurrentNamespace(), App: os.Getenv("APP_ID"), Calls: map[string]*Pair{}}}
	_, s.stats.JWT.Supported = h.(jwtFetcher)
	s.callUntil(ctx)
	s.stats.Done = true
	s.write()

	// As a pod's grace period: it has left its peers' lists, but one that
	// read its list before may still call; it is served until the drain ends.
	time.Sleep(f.drain)
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		srv.Stop()
	}
	return nil
}

// handler waits for the security provider to hold an SVID; it fails when
// the provider stops first (no SVID from Sentry).
func handler(ctx context.Context, sec security.Provider, secDone chan error) (security.Handler, error) {
	type result struct {
		h   security.Handler
		err error
	}
	got := make(chan result, 1)
	waitCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		h, err := sec.Handler(waitCtx)
		got <- result{h, err}
	}()
	select {
	case r := <-got:
		return r.h, r.err
	case err := <-secDone:
		secDone <- err // for run's deferred wait
		return nil, fmt.Errorf("security provider stopped: %w", err)
	}
}

// jwtFetcher is the part of pkg/security's Handler that fetches JWT SVIDs
// (Dapr 1.18 and later).
type jwtFetcher interface {
	FetchJWT(ctx context.Context, audience string) (string, error)
}

// serveHealthz answers 200 once the security provider is ready, as daprd's
// health endpoint does.
func serveHealthz(addr string, hz healthz.Healthz) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if !hz.IsReady() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	go func() { _ = http.Serve(lis, mux) }() //nolint:gosec // loopback, test only
	return nil
}

type sidecar struct {
	f     flags
	h     security.Handler
	mu    sync.Mutex
	stats Stats
}

// callUntil calls every peer each round until ctx ends, writing the counts
// after each round.
func (s *sidecar) callUntil(ctx context.Context) {
	t := time.NewTicker(s.f.interval)
	defer t.Stop()
	for {
		s.observeSVID()
		s.checkJWT(ctx)
		for _, p := range s.readPeers() {
			if ctx.Err() != nil {
				return
			}
			s.call(ctx, p)
		}
		s.write()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (s *sidecar) readPeers() []Peer {
	b, err := os.ReadFile(s.f.peers)
	if err != nil {
		return nil
	}
	var peers []Peer
	if json.Unmarshal(b, &peers) != nil {
		return nil
	}
	out := peers[:0]
	for _, p := range peers {
		if p.Pod != s.f.pod {
			out = append(out, p)
		}
	}
	return out
}

// call makes one Health.Check call to p on a new connection, authorizing
// p's SPIFFE ID path as daprd's service invocation does.
func (s *sidecar) call(ctx context.Context, p Peer) {
	err := func() error {
		conn, err := grpc.NewClient(p.Address, s.h.GRPCDialOptionMTLSUnknownTrustDomain(p.Namespace, p.App))
		if err != nil {
			return err
		}
		defer conn.Close()
		callCtx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		_, err = healthpb.NewHealthClient(conn).Check(callCtx, &healthpb.HealthCheckRequest{})
		return err
	}()
	if ctx.Err() != nil {
		return // stopping: a call cut short is not the peer's failure
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	key := p.Namespace + "/" + p.App
	pair := s.stats.Calls[key]
	if pair == nil {
		pair = &Pair{}
		s.stats.Calls[key] = pair
	}
	pair.Calls++
	switch {
	case err == nil:
	case strings.Contains(err.Error(), "connection refused"):
		pair.Unreachable++
	default:
		pair.Failed++
		pair.LastError = fmt.Sprintf("%s: %v", p.Pod, err)
	}
}

// observeSVID reads the certificate pkg/security wrote last.
func (s *sidecar) observeSVID() {
	b, err := os.ReadFile(filepath.Join(s.f.identity, "cert.pem"))
	if err != nil {
		return
	}
	block, rest := pem.Decode(b)
	if block == nil {
		return
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return
	}
	serial, issuer := leaf.SerialNumber.Text(16), ""
	// The chain pkg/security writes: the SVID, then the issuer that signed it.
	if ib, _ := pem.Decode(rest); ib != nil {
		if ic, err := x509.ParseCertificate(ib.Bytes); err == nil {
			sum := sha256.Sum256(ic.RawSubjectPublicKeyInfo)
			issuer = hex.EncodeToString(sum[:])
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stats.SVID.Serial != "" && s.stats.SVID.Serial != serial {
		s.stats.SVID.Renewals++
	}
	s.stats.SVID.Serial, s.stats.SVID.Issuer, s.stats.SVID.NotAfter = serial, issuer, leaf.NotAfter
}

// checkJWT fetches the JWT SVID Sentry issued with the certificate and
// verifies it with the published JWKS.
func (s *sidecar) checkJWT(ctx context.Context) {
	f, ok := s.h.(jwtFetcher)
	if !ok || s.f.jwks == "" {
		return
	}
	err := func() error {
		token, err := f.FetchJWT(ctx, jwtAudience)
		if err != nil {
			return err
		}
		set, err := jwk.ReadFile(s.f.jwks)
		if err != nil {
			return fmt.Errorf("reading the published JWKS: %w", err)
		}
		if _, err := jwt.Parse([]byte(token), jwt.WithKeySet(set), jwt.WithAudience(jwtAudience)); err != nil {
			return fmt.Errorf("verifying with the published JWKS: %w", err)
		}
		return nil
	}()
	if errors.Is(err, context.Canceled) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.stats.JWT.Failed++
		s.stats.JWT.LastError = err.Error()
		return
	}
	s.stats.JWT.Verified++
}

// write replaces the stats file atomically.
func (s *sidecar) write() {
	s.mu.Lock()
	b, err := json.Marshal(s.stats)
	s.mu.Unlock()
	if err != nil {
		return
	}
	tmp := s.f.stats + ".tmp"
	if os.WriteFile(tmp, b, 0o600) == nil {
		_ = os.Rename(tmp, s.f.stats)
	}
}

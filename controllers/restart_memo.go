package controllers

import (
	"sync"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/mtls-rotator/mtls-rotator/internal/restart"
)

// restartMemoTTL is how long a restart this process asked for counts as
// done though the cache does not show it yet (restart.AskedFor). A cache
// lags by milliseconds; this only has to outlast a slow watch.
const restartMemoTTL = 30 * time.Second

// restartMemo remembers, per MTLSRootRotation, the restarts this process
// patched for its current restart id. A workload event can wake a pass
// before the cache holds the pass's own restart patch; without the memo
// that pass would patch the same workload again.
type restartMemo struct {
	mu       sync.Mutex
	byObject map[client.ObjectKey]*askedRestarts
}

type askedRestarts struct {
	id string
	at map[restart.Ref]time.Time
}

// record notes that ref was patched for restart id at.
func (m *restartMemo) record(key client.ObjectKey, id string, ref restart.Ref, at time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.byObject == nil {
		m.byObject = map[client.ObjectKey]*askedRestarts{}
	}
	a := m.byObject[key]
	if a == nil || a.id != id {
		a = &askedRestarts{id: id, at: map[restart.Ref]time.Time{}}
		m.byObject[key] = a
	}
	a.at[ref] = at
}

// apply marks in observed the restarts for id the cache does not show yet.
func (m *restartMemo) apply(key client.ObjectKey, id string, observed []restart.Observed, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if a := m.byObject[key]; a != nil && a.id == id {
		restart.AskedFor(observed, a.at, now, restartMemoTTL)
	}
}

// forget drops what is remembered for an object (deleted).
func (m *restartMemo) forget(key client.ObjectKey) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.byObject, key)
}

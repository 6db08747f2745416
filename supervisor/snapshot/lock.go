package snapshot

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/lifeboat/lifeboat/supervisor/storage"
)

// LeaseTTL is how long a lease lives without a refresh. A crashed writer's
// lease expires after it; a live one is refreshed every LeaseTTL/3.
const LeaseTTL = 5 * time.Minute

// Lease kinds.
const (
	LeaseBackup = "backup" // shared: any number of backups at once
	LeasePrune  = "prune"  // exclusive against backups
)

// Lease is the content of a locks/KIND-ID object.
type Lease struct {
	Kind    string    `json:"kind"`
	ID      string    `json:"id"`
	Host    string    `json:"host"`
	PID     int       `json:"pid"`
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires"`
}

// Leases lists the leases that have not expired.
func (r *Repository) Leases(ctx context.Context) ([]Lease, error) {
	var keys []string
	if err := r.store.List(ctx, locksPrefix, func(o storage.ObjectInfo) error {
		keys = append(keys, o.Key)
		return nil
	}); err != nil {
		return nil, err
	}
	var live []Lease
	for _, k := range keys {
		b, err := r.getAll(ctx, k, 1<<16)
		if err != nil {
			continue // released meanwhile
		}
		var l Lease
		if json.Unmarshal(b, &l) == nil && time.Now().Before(l.Expires) {
			live = append(live, l)
		}
	}
	return live, nil
}

// takeLease writes a lease object and keeps it fresh until release.
func (r *Repository) takeLease(ctx context.Context, kind string) (release func(), err error) {
	host, _ := os.Hostname()
	l := Lease{Kind: kind, ID: randomID(8), Host: host, PID: os.Getpid(), Created: time.Now().UTC()}
	key := locksPrefix + kind + "-" + l.ID
	write := func(ctx context.Context) error {
		l.Expires = time.Now().Add(LeaseTTL).UTC()
		b, _ := json.Marshal(l)
		return r.store.Put(ctx, key, bytes.NewReader(b), int64(len(b)))
	}
	if err := write(ctx); err != nil {
		return nil, fmt.Errorf("take %s lease: %w", kind, err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(LeaseTTL / 3)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				if err := write(context.Background()); err != nil {
					r.log.Warn("cannot refresh lease", "lease", key, "error", err)
				}
			case <-stop:
				return
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			close(stop)
			wg.Wait()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			r.store.Delete(ctx, key)
		})
	}, nil
}

// acquireBackupLease takes a shared backup lease, refusing while a prune
// holds its exclusive one (prune deletes packs a backup might reuse).
func (r *Repository) acquireBackupLease(ctx context.Context) (func(), error) {
	leases, err := r.Leases(ctx)
	if err != nil {
		return nil, fmt.Errorf("check leases: %w", err)
	}
	for _, l := range leases {
		if l.Kind == LeasePrune {
			return nil, fmt.Errorf("a prune is running on %s (host %s, pid %d, until %s); retry later", r.store, l.Host, l.PID, l.Expires.Format(time.RFC3339))
		}
	}
	release, err := r.takeLease(ctx, LeaseBackup)
	if err != nil {
		return nil, err
	}
	// A prune that started between the check and our lease sees ours and
	// backs off, or we see its lease now: one of the two always yields.
	if leases, err = r.Leases(ctx); err == nil {
		for _, l := range leases {
			if l.Kind == LeasePrune {
				release()
				return nil, fmt.Errorf("a prune started on %s; retry later", r.store)
			}
		}
	}
	return release, nil
}

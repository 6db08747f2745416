package snapshot

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/lifeboat/lifeboat/supervisor/storage"
)

// LeaseTTL is how long a lease lives without a refresh. A crashed writer's
// lease expires after it; a live one is refreshed every LeaseTTL/3.
const LeaseTTL = 5 * time.Minute

// leaseTTL is LeaseTTL, shortened by tests that wait for a killed writer's
// lease to expire.
var leaseTTL = LeaseTTL

// Lease kinds.
const (
	LeaseBackup = "backup" // shared: any number of backups at once
	LeasePrune  = "prune"  // exclusive against backups and other prunes
)

// ErrLocked means another writer holds a lease that excludes this
// operation (a prune while backups run, a backup while a prune runs).
// It is temporary: retry later.
var ErrLocked = errors.New("repository is locked by another writer")

// ErrLeaseLost means a writer could not refresh its lease for so long that
// others may consider it expired: what it wrote may no longer be protected,
// so it must not commit.
var ErrLeaseLost = errors.New("lease lost: it could not be refreshed before it expired")

// Lease is the content of a locks/KIND-ID object.
type Lease struct {
	Kind    string    `json:"kind"`
	ID      string    `json:"id"`
	Host    string    `json:"host"`
	PID     int       `json:"pid"`
	Created time.Time `json:"created"`
	// Refreshed is when the writer last wrote the lease; Expires is
	// Refreshed plus the writer's TTL.
	Refreshed time.Time `json:"refreshed"`
	Expires   time.Time `json:"expires"`

	Key string `json:"-"` // the lease's object key
}

func (l Lease) String() string {
	return fmt.Sprintf("%s lease of host %s pid %d (until %s)", l.Kind, l.Host, l.PID, l.Expires.Format(time.RFC3339))
}

// Leases lists the leases that have not expired.
//
// A lease counts as live while its Expires (the writer's clock) or its
// object's modification time plus the writer's TTL (the store's clock) lies
// in the future, so a writer whose clock runs behind is not declared dead
// early.
// An unreadable lease object counts as live until its modification time
// says otherwise: when in doubt, a lease protects.
func (r *Repository) Leases(ctx context.Context) ([]Lease, error) {
	live, _, err := r.listLeases(ctx)
	return live, err
}

// listLeases returns the live leases and the keys of the expired ones.
func (r *Repository) listLeases(ctx context.Context) (live []Lease, expired []string, err error) {
	var objs []storage.ObjectInfo
	if err := r.store.List(ctx, locksPrefix, func(o storage.ObjectInfo) error {
		objs = append(objs, o)
		return nil
	}); err != nil {
		return nil, nil, fmt.Errorf("list leases: %w", err)
	}
	now := time.Now()
	for _, o := range objs {
		b, err := r.getAll(ctx, o.Key, 1<<16)
		if errors.Is(err, storage.ErrNotExist) {
			continue // released meanwhile
		}
		var l Lease
		if err != nil || json.Unmarshal(b, &l) != nil {
			if now.Before(o.ModTime.Add(LeaseTTL)) {
				kind, _, _ := strings.Cut(strings.TrimPrefix(o.Key, locksPrefix), "-")
				live = append(live, Lease{Kind: kind, Host: "?", Expires: o.ModTime.Add(LeaseTTL), Key: o.Key})
			} else {
				expired = append(expired, o.Key)
			}
			continue
		}
		l.Key = o.Key
		ttl := l.Expires.Sub(l.Refreshed)
		if ttl <= 0 || ttl > LeaseTTL {
			ttl = LeaseTTL
		}
		if now.Before(l.Expires) || now.Before(o.ModTime.Add(ttl)) {
			live = append(live, l)
		} else {
			expired = append(expired, o.Key)
		}
	}
	return live, expired, nil
}

// lease is a held lease, refreshed in the background until released.
type lease struct {
	r   *Repository
	key string
	ttl time.Duration
	obj Lease // what is written; only refresh touches it

	mu       sync.Mutex
	lastGood time.Time // when the last write was started that succeeded
	lapsed   bool      // a gap between good writes was long enough for others to see it expired

	stop chan struct{}
	wg   sync.WaitGroup
	once sync.Once
}

// takeLease writes a lease object and keeps it fresh until release.
func (r *Repository) takeLease(ctx context.Context, kind string) (*lease, error) {
	host, _ := os.Hostname()
	l := Lease{Kind: kind, ID: randomID(8), Host: host, PID: os.Getpid(), Created: time.Now().UTC()}
	h := &lease{r: r, key: locksPrefix + kind + "-" + l.ID, ttl: leaseTTL, obj: l, stop: make(chan struct{})}
	if err := h.refresh(ctx); err != nil {
		return nil, fmt.Errorf("take %s lease: %w", kind, err)
	}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		t := time.NewTicker(h.ttl / 3)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				// Bounded: a hung store must not hold up the next refresh.
				wctx, cancel := context.WithTimeout(context.Background(), h.ttl/3)
				err := h.refresh(wctx)
				cancel()
				if err != nil {
					r.log.Warn("cannot refresh lease", "lease", h.key, "error", err)
				}
			case <-h.stop:
				return
			}
		}
	}()
	return h, nil
}

// refresh writes the lease object with a new expiry. Called by takeLease
// and then only by the refresh goroutine.
func (h *lease) refresh(ctx context.Context) error {
	started := time.Now()
	h.obj.Refreshed, h.obj.Expires = started.UTC(), started.Add(h.ttl).UTC()
	b, _ := json.Marshal(h.obj)
	if err := h.r.store.Put(ctx, h.key, bytes.NewReader(b), int64(len(b))); err != nil {
		return err
	}
	h.mu.Lock()
	// Once others may have seen the lease expired (and a prune may have
	// deleted what this holder relies on), a later good write does not
	// make it whole again.
	if !h.lastGood.IsZero() && started.Sub(h.lastGood) > h.lostAfter() {
		h.lapsed = true
	}
	h.lastGood = started
	h.mu.Unlock()
	return nil
}

// lostAfter is how long without a good refresh the lease counts as lost:
// the ttl, less a margin for the time a check's result is acted on.
func (h *lease) lostAfter() time.Duration { return h.ttl - h.ttl/6 }

// check fails with ErrLeaseLost when the lease may have expired in the
// eyes of others, now or at any time since it was taken.
func (h *lease) check() error {
	h.mu.Lock()
	last, lapsed := h.lastGood, h.lapsed
	h.mu.Unlock()
	if lapsed {
		return fmt.Errorf("%s: %w (it went unrefreshed for longer than its ttl)", h.key, ErrLeaseLost)
	}
	if age := time.Since(last); age > h.lostAfter() {
		return fmt.Errorf("%s: %w (last refreshed %s ago)", h.key, ErrLeaseLost, age.Round(time.Second))
	}
	return nil
}

// release stops refreshing and deletes the lease object. Safe to call
// more than once.
func (h *lease) release() {
	h.once.Do(func() {
		close(h.stop)
		h.wg.Wait()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := h.r.store.Delete(ctx, h.key); err != nil {
			h.r.log.Warn("cannot delete lease; it expires by itself", "lease", h.key, "error", err)
		}
	})
}

// backupLease takes a shared backup lease, refusing while a prune holds its
// exclusive one (prune deletes packs a backup might reuse). The backup
// then calls LoadIndex, which drops an in-memory index a prune has
// rewritten since it was loaded, so the backup never deduplicates against
// a chunk in a pack that is gone.
func (r *Repository) backupLease(ctx context.Context) (*lease, error) {
	if err := r.refuseIfPruning(ctx); err != nil {
		return nil, err
	}
	h, err := r.takeLease(ctx, LeaseBackup)
	if err != nil {
		return nil, err
	}
	// A prune that started between the check and our lease sees ours and
	// backs off, or we see its lease now: one of the two always yields.
	if err := r.refuseIfPruning(ctx); err != nil {
		h.release()
		return nil, err
	}
	return h, nil
}

func (r *Repository) refuseIfPruning(ctx context.Context) error {
	leases, err := r.Leases(ctx)
	if err != nil {
		return fmt.Errorf("check leases: %w", err)
	}
	for _, l := range leases {
		if l.Kind == LeasePrune {
			return fmt.Errorf("%s: a prune is running (%s); retry later: %w", r.store, l, ErrLocked)
		}
	}
	return nil
}

// pruneLease takes the exclusive prune lease: none while any backup or
// other prune holds a live lease. Two prunes starting together both see
// each other and both yield.
func (r *Repository) pruneLease(ctx context.Context) (*lease, error) {
	busy := func(self string) error {
		leases, err := r.Leases(ctx)
		if err != nil {
			return fmt.Errorf("check leases: %w", err)
		}
		for _, l := range leases {
			if l.Key != self {
				return fmt.Errorf("%s: %s is live, prune deletes nothing while it runs; retry later: %w", r.store, l, ErrLocked)
			}
		}
		return nil
	}
	if err := busy(""); err != nil {
		return nil, err
	}
	h, err := r.takeLease(ctx, LeasePrune)
	if err != nil {
		return nil, err
	}
	if err := busy(h.key); err != nil {
		h.release()
		return nil, err
	}
	return h, nil
}

// reloadIndex replaces the in-memory index with what the index objects
// objs (all there are, just listed) say, skipping damaged ones with a
// warning as LoadIndex does.
func (r *Repository) reloadIndex(ctx context.Context, objs []storage.ObjectInfo) error {
	return r.setIndex(func(add func(key string, f *indexFile)) error {
		bad, err := r.eachIndex(ctx, objs, nil, add)
		if err == nil {
			r.warnDamaged(bad)
		}
		return err
	})
}

// setIndex replaces the in-memory index with the index objects fill adds.
// The new index is built aside and swapped in, so lookups never see a
// half-loaded one.
func (r *Repository) setIndex(fill func(add func(key string, f *indexFile)) error) error {
	fresh := &Repository{index: map[ChunkID]BlobRef{}}
	loaded := map[string]bool{}
	if err := fill(func(key string, f *indexFile) {
		fresh.addIndex(f)
		loaded[key] = true
	}); err != nil {
		return err
	}
	r.mu.Lock()
	r.index, r.indexes = fresh.index, loaded
	r.mu.Unlock()
	return nil
}

// readIndexes reads every index object in the store; a damaged one fails
// it. Prune needs this: the packs only a damaged object lists would look
// unindexed, and prune deletes unindexed packs.
func (r *Repository) readIndexes(ctx context.Context) (map[string]*indexFile, error) {
	idx, bad, err := r.readIndexesTolerant(ctx)
	if err != nil {
		return nil, err
	}
	for key, e := range bad {
		return nil, fmt.Errorf("index %s: %w", key, e)
	}
	return idx, nil
}

// readIndexesTolerant reads every index object, returning the good ones
// and the error of each damaged one (ErrCorrupt). Any other failure (to
// list, to read: a network error, an unsupported version) is err: such an
// object is not known to be damaged, so nobody may delete it as such.
func (r *Repository) readIndexesTolerant(ctx context.Context) (good map[string]*indexFile, bad map[string]error, err error) {
	objs, err := r.listObjects(ctx, indexPrefix, "index")
	if err != nil {
		return nil, nil, err
	}
	good = map[string]*indexFile{}
	bad, err = r.eachIndex(ctx, objs, nil, func(key string, f *indexFile) { good[key] = f })
	if err != nil {
		return nil, nil, err
	}
	return good, bad, nil
}

package snapshot

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/lifeboat/lifeboat/supervisor/storage"
)

// DefaultPruneGrace is how old an unreferenced pack (or tree) must be
// before prune deletes it. Leases keep prune away from running backups;
// the grace period is the second line: it covers a backup that lost its
// lease while still writing, and clocks that disagree.
const DefaultPruneGrace = 6 * time.Hour

// PruneOptions tune Prune.
type PruneOptions struct {
	// DryRun computes and reports everything but changes nothing, and
	// takes no lease (it never blocks a backup).
	DryRun bool
	// Grace protects unreferenced packs and trees younger than it; 0 means
	// DefaultPruneGrace, a negative value means none.
	Grace time.Duration
}

// PruneResult reports what a prune did (or, dry, would do).
type PruneResult struct {
	DryRun    bool
	Decisions []Decision // every snapshot, newest first
	Kept      int
	Forgotten []string // ids of forgotten snapshots

	PacksKept        int
	PacksInGrace     int // unreferenced, but younger than the grace period
	PacksDeleted     int
	BytesKept        int64
	BytesDeleted     int64
	IndexesDeleted   int
	IndexesWritten   int
	TreesDeleted     int
	LeasesDeleted    int // expired leases of crashed writers
	StaleIndexBlobs  int // index entries of packs that no longer exist, dropped
	Duration         time.Duration
	UnreferencedKept int64 // bytes of unreferenced blobs in packs kept for their referenced ones
}

// Prune forgets the snapshots policy does not keep, then deletes what no
// remaining snapshot references: packs (older than the grace period),
// trees of forgotten or never-committed snapshots, expired leases; and
// rewrites the index to list only surviving packs.
//
// It holds the exclusive prune lease: while any backup holds a live lease
// it deletes nothing and fails with ErrLocked. The order of deletions keeps
// the repository valid if prune is killed at any point: manifests of
// forgotten snapshots first (a manifest never outlives its chunks), then
// the new index is written before the old index objects are deleted, and
// packs last. Before deleting index objects and packs it lists the
// snapshots again and stops if one appeared that it has not accounted for.
//
// A pack is deleted whole or not at all: packs that hold some referenced
// chunks are kept with their unreferenced ones (at most one pack size of
// waste per such pack; the result reports the bytes).
//
// Memory: the set of chunk ids the remaining snapshots reference (about
// 100 bytes per chunk) plus the index.
func Prune(ctx context.Context, r *Repository, policy KeepPolicy, opts PruneOptions) (*PruneResult, error) {
	start := time.Now()
	if err := policy.Validate(); err != nil {
		return nil, err
	}
	grace := opts.Grace
	if grace == 0 {
		grace = DefaultPruneGrace
	} else if grace < 0 {
		grace = 0
	}
	res := &PruneResult{DryRun: opts.DryRun}
	var h *lease
	if !opts.DryRun {
		var err error
		if h, err = r.pruneLease(ctx); err != nil {
			return nil, err
		}
		// Releasing is all that is left to do when ctx is cancelled (a
		// backup waits for it). The in-memory index may now name deleted
		// packs; the next backup notices the vanished index objects and
		// reloads it (backupLease).
		defer h.release()
	}

	// 1. Every manifest must be readable: one we cannot read references
	// chunks we cannot know, and deleting them would destroy it.
	snaps, err := r.listManifests(ctx, true) // unlike Snapshots, an unreadable one is an error
	if err != nil {
		return nil, fmt.Errorf("prune: %w; run lifeboat verify, and remove or repair the object before pruning", err)
	}
	res.Decisions = ApplyPolicy(snaps, policy)
	var keep, forget []*Manifest
	for _, d := range res.Decisions {
		if d.Keep {
			keep = append(keep, d.Snapshot)
		} else {
			forget = append(forget, d.Snapshot)
			res.Forgotten = append(res.Forgotten, d.Snapshot.ID)
		}
	}
	res.Kept = len(keep)

	// 2. What the kept snapshots reference.
	used, err := r.referencedChunks(ctx, keep)
	if err != nil {
		return nil, fmt.Errorf("prune: %w", err)
	}
	keptTrees, forgotTrees := map[string]bool{}, map[string]bool{}
	for _, m := range keep {
		keptTrees[m.TreeKey] = true
	}
	for _, m := range forget {
		forgotTrees[m.TreeKey] = true
	}

	// 3. Index and packs as stored now.
	indexes, err := r.readIndexes(ctx)
	if err != nil {
		return nil, fmt.Errorf("prune: %w; run lifeboat verify before pruning", err)
	}
	stored, err := r.storedPacks(ctx)
	if err != nil {
		return nil, fmt.Errorf("prune: %w", err)
	}

	// A pack is needed when it holds a referenced chunk. Every referenced
	// chunk must be found in a pack that exists, or the repository is
	// already damaged and prune refuses to touch it.
	found := make(map[ChunkID]bool, len(used))
	needed := map[string]bool{}
	indexed := map[string]indexPack{}
	for _, f := range indexes {
		for _, p := range f.Packs {
			if _, ok := stored[p.ID]; !ok {
				res.StaleIndexBlobs += len(p.Blobs)
				continue
			}
			indexed[p.ID] = p
			for _, b := range p.Blobs {
				if used[b.ID] {
					found[b.ID] = true
					needed[p.ID] = true
				}
			}
		}
	}
	if len(found) != len(used) {
		missing := 0
		var example ChunkID
		for id := range used {
			if !found[id] {
				missing++
				example = id
			}
		}
		return nil, fmt.Errorf("prune: %d chunks the kept snapshots reference are in no stored pack (e.g. %s): %w; run lifeboat verify, prune changes nothing more", missing, example, ErrCorrupt)
	}

	cutoff := time.Now().Add(-grace)
	var doomed []string
	for id, o := range stored {
		switch {
		case needed[id]:
			res.PacksKept++
			res.BytesKept += o.Size
			p := indexed[id]
			for _, b := range p.Blobs {
				if !used[b.ID] {
					res.UnreferencedKept += int64(b.Length)
				}
			}
		case o.ModTime.After(cutoff):
			res.PacksInGrace++
			res.PacksKept++
			res.BytesKept += o.Size
		default:
			doomed = append(doomed, id)
			res.PacksDeleted++
			res.BytesDeleted += o.Size
		}
	}
	sort.Strings(doomed)

	// Trees with no kept manifest: of forgotten snapshots, or of backups
	// that died between tree and manifest (after the grace period).
	var orphanTrees []string
	if err := r.store.List(ctx, treesPrefix, func(o storage.ObjectInfo) error {
		if !keptTrees[o.Key] && (!o.ModTime.After(cutoff) || forgotTrees[o.Key]) {
			orphanTrees = append(orphanTrees, o.Key)
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("prune: list trees: %w", err)
	}
	res.TreesDeleted = len(orphanTrees)

	_, expiredLeases, err := r.listLeases(ctx)
	if err != nil {
		return nil, fmt.Errorf("prune: %w", err)
	}
	res.LeasesDeleted = len(expiredLeases)

	// The new index lists every surviving indexed pack once.
	var survivors []indexPack
	for id, p := range indexed {
		if !containsSorted(doomed, id) {
			survivors = append(survivors, p)
		}
	}
	sort.Slice(survivors, func(i, j int) bool { return survivors[i].ID < survivors[j].ID })
	rewrite := len(doomed) > 0 || res.StaleIndexBlobs > 0 || len(indexes) > 1
	if rewrite {
		res.IndexesDeleted = len(indexes)
		res.IndexesWritten = len(splitIndex(survivors))
	}
	if opts.DryRun {
		res.Duration = time.Since(start)
		return res, nil
	}

	// A prune whose lease lapsed (a partition longer than its ttl) may
	// have been taken for dead: backups may have started meanwhile and
	// reuse chunks it decided to delete. It deletes nothing then.
	if err := h.check(); err != nil {
		return nil, fmt.Errorf("prune: %w (nothing was deleted)", err)
	}

	// 4. Forget: manifests first, so a crash later never leaves a listed
	// snapshot whose chunks were deleted.
	for _, m := range forget {
		if err := r.store.Delete(ctx, m.Key); err != nil {
			return nil, fmt.Errorf("prune: forget snapshot %s: %w", m.ID, err)
		}
	}
	if len(forget) > 0 {
		r.log.Info("snapshots forgotten", "count", len(forget), "kept", len(keep), "policy", policy.String())
	}

	// 5. New index first, then the old index objects, then packs.
	if rewrite {
		if err := r.writeIndexes(ctx, survivors, nil); err != nil {
			return nil, fmt.Errorf("prune: %w", err)
		}
	}
	if err := r.noNewSnapshots(ctx, snaps); err != nil {
		return nil, fmt.Errorf("prune: %w", err)
	}
	if err := h.check(); err != nil {
		return nil, fmt.Errorf("prune: %w (snapshots were forgotten, no data was deleted)", err)
	}
	if rewrite {
		for key := range indexes {
			if err := r.store.Delete(ctx, key); err != nil {
				return nil, fmt.Errorf("prune: delete old index %s: %w", key, err)
			}
		}
	}
	if err := parallel(ctx, r.conc, doomed, func(ctx context.Context, id string) error {
		if err := r.store.Delete(ctx, packKey(id)); err != nil {
			return fmt.Errorf("delete pack %s: %w", id, err)
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("prune: %w", err)
	}
	for _, key := range orphanTrees {
		if err := r.store.Delete(ctx, key); err != nil {
			return nil, fmt.Errorf("prune: delete tree %s: %w", key, err)
		}
	}
	for _, key := range expiredLeases {
		if err := r.store.Delete(ctx, key); err != nil {
			return nil, fmt.Errorf("prune: delete expired lease %s: %w", key, err)
		}
	}
	res.Duration = time.Since(start)
	r.log.Info("prune done", "snapshots_kept", res.Kept, "snapshots_forgotten", len(res.Forgotten),
		"packs_deleted", res.PacksDeleted, "bytes_deleted", res.BytesDeleted, "packs_in_grace", res.PacksInGrace,
		"duration", res.Duration.Round(time.Millisecond).String())
	return res, nil
}

func containsSorted(list []string, s string) bool {
	i := sort.SearchStrings(list, s)
	return i < len(list) && list[i] == s
}

// referencedChunks reads the trees of list and collects every chunk they
// reference.
func (r *Repository) referencedChunks(ctx context.Context, list []*Manifest) (map[ChunkID]bool, error) {
	used := map[ChunkID]bool{}
	var mu sync.Mutex
	err := parallel(ctx, r.conc, list, func(ctx context.Context, m *Manifest) error {
		t, err := r.ReadTree(ctx, m)
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		for _, e := range t.Entries {
			for _, id := range e.Chunks {
				used[id] = true
			}
		}
		for _, s := range t.Streams {
			for _, id := range s.Chunks {
				used[id] = true
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return used, nil
}

// noNewSnapshots fails when a manifest appeared that prune did not read: a
// backup committed although prune holds the lease (its own lease was lost).
// Prune then stops before deleting index objects or packs.
func (r *Repository) noNewSnapshots(ctx context.Context, read []*Manifest) error {
	known := map[string]bool{}
	for _, m := range read {
		known[m.Key] = true
	}
	var unknown []string
	if err := r.store.List(ctx, snapshotsPrefix, func(o storage.ObjectInfo) error {
		if !known[o.Key] {
			unknown = append(unknown, o.Key)
		}
		return nil
	}); err != nil {
		return fmt.Errorf("list snapshots: %w", err)
	}
	if len(unknown) > 0 {
		return fmt.Errorf("snapshot %s was committed while prune held the lease; stopped before deleting packs, run prune again: %w",
			strings.Join(unknown, ", "), ErrLocked)
	}
	return nil
}

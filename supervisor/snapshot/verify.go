package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lifeboat/lifeboat/supervisor/storage"
)

// VerifyOptions tune Verify.
type VerifyOptions struct {
	// ReadDataPercent is the share of packs (0-100) downloaded in full and
	// checked blob by blob: decrypted, decompressed, hashed against its id,
	// and the pack's trailer compared with the index. 0 checks structure
	// only; 100 reads everything. A sample picks packs at random, at least
	// one when the percentage is above 0.
	ReadDataPercent float64
	// MaxProblems caps the problems reported (0 means 1000); the counts
	// stay exact.
	MaxProblems int
}

// Problem is one thing wrong in the repository.
type Problem struct {
	Object string `json:"object"` // the object key, or "" for the repository
	Error  string `json:"error"`
}

func (p Problem) String() string {
	if p.Object == "" {
		return p.Error
	}
	return p.Object + ": " + p.Error
}

// VerifyReport is what Verify found.
type VerifyReport struct {
	Snapshots   int   `json:"snapshots"`
	Indexes     int   `json:"indexes"`
	Packs       int   `json:"packs"`         // packs stored
	Blobs       int   `json:"blobs"`         // blobs indexed
	PacksRead   int   `json:"packs_read"`    // downloaded in full
	BytesRead   int64 `json:"bytes_read"`    // downloaded
	BlobsRead   int   `json:"blobs_read"`    // decrypted, decompressed and hashed
	ProblemsAll int   `json:"problem_count"` // every problem, also beyond MaxProblems
	// Problems make the repository (or a snapshot) unreadable or wrong.
	Problems []Problem `json:"problems,omitempty"`
	// Notes are harmless findings: garbage an interrupted backup left
	// (prune collects it), unreferenced packs.
	Notes    []string      `json:"notes,omitempty"`
	Duration time.Duration `json:"duration"`

	mu  sync.Mutex
	max int
}

// OK reports whether no problem was found.
func (rep *VerifyReport) OK() bool { return rep.ProblemsAll == 0 }

// Err summarises the problems as one error wrapping ErrCorrupt, or nil.
func (rep *VerifyReport) Err() error {
	if rep.OK() {
		return nil
	}
	first := rep.Problems[0].String()
	if rep.ProblemsAll == 1 {
		return fmt.Errorf("verify: %s: %w", first, ErrCorrupt)
	}
	return fmt.Errorf("verify: %d problems, the first: %s: %w", rep.ProblemsAll, first, ErrCorrupt)
}

func (rep *VerifyReport) problem(object string, format string, args ...any) {
	rep.mu.Lock()
	defer rep.mu.Unlock()
	rep.ProblemsAll++
	if len(rep.Problems) < rep.max {
		rep.Problems = append(rep.Problems, Problem{Object: object, Error: fmt.Sprintf(format, args...)})
	}
}

func (rep *VerifyReport) note(format string, args ...any) {
	rep.mu.Lock()
	defer rep.mu.Unlock()
	if len(rep.Notes) < rep.max {
		rep.Notes = append(rep.Notes, fmt.Sprintf(format, args...))
	}
}

// Verify checks the repository and reports every problem it finds (it
// never stops at the first). The structure check reads the config, every
// index object, every manifest and tree; it checks that every pack an
// index lists exists with the listed size, that every tree is safe to
// restore and every chunk it references is indexed. With ReadDataPercent
// it downloads packs and checks every blob in them.
//
// The returned error is for failures to run at all (listing the store);
// what is wrong with the repository is in the report (see OK and Err).
// Verify takes no lease and changes nothing. It runs safely beside backups
// and prunes: objects they add or delete while it runs are never reported
// as problems (at most noted as garbage not yet indexed or collected).
//
// Memory: the index, plus one whole pack per concurrent download.
func Verify(ctx context.Context, r *Repository, opts VerifyOptions) (*VerifyReport, error) {
	start := time.Now()
	rep := &VerifyReport{max: opts.MaxProblems}
	if rep.max <= 0 {
		rep.max = 1000
	}
	if opts.ReadDataPercent < 0 || opts.ReadDataPercent > 100 {
		return nil, fmt.Errorf("verify: read-data percentage %g must be between 0 and 100", opts.ReadDataPercent)
	}

	// Config: the stored one must still decode (Open read it once).
	if b, err := r.getAll(ctx, configKey, 1<<20); err != nil {
		rep.problem(configKey, "cannot read: %v", err)
	} else if _, err := decodeConfig(b); err != nil {
		rep.problem(configKey, "%v", err)
	}

	// Listing order matters while backups and prunes run: a backup writes
	// packs, then its index, then its manifest, so listing manifests, then
	// index objects, then packs sees everything a listed manifest needs.
	// What a concurrent prune deletes meanwhile is recognised below by its
	// index object or manifest being gone too.
	mkeys, err := r.listKeys(ctx, snapshotsPrefix, "snapshots")
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}

	// Every index object decodes; every pack it lists exists with its
	// size, and the blobs it lists tile the pack's data area.
	good, bad, err := r.readIndexesTolerant(ctx)
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}

	// Packs as stored.
	stored, err := r.storedPacks(ctx)
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	rep.Packs = len(stored)

	rep.Indexes = len(good) + len(bad)
	for key, e := range bad {
		rep.problem(key, "%s", strings.TrimPrefix(e.Error(), key+": "))
	}
	index := map[ChunkID]BlobRef{}
	indexed := map[string]indexPack{}
	keys := make([]string, 0, len(good))
	for k := range good {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, key := range keys {
		for _, p := range good[key].Packs {
			if _, dup := indexed[p.ID]; dup {
				continue // listed by two index objects (a prune was interrupted): harmless
			}
			indexed[p.ID] = p
			o, ok := stored[p.ID]
			switch {
			case !ok:
				if gone(ctx, r, key) {
					continue // a prune replaced this index and deleted the pack meanwhile
				}
				rep.problem(packKey(p.ID), "listed in %s but missing from the store", key)
			case o.Size != p.Size:
				rep.problem(packKey(p.ID), "stored size %d, index %s says %d (truncated or replaced)", o.Size, key, p.Size)
			}
			var off int64
			for _, b := range p.Blobs {
				if b.Offset != off { // sizes and flags: checked when the index was decoded
					rep.problem(packKey(p.ID), "index %s: blob %s at offset %d length %d is not where the previous one ends (%d)", key, b.ID, b.Offset, b.Length, off)
				}
				off = b.Offset + int64(b.Length)
				index[b.ID] = BlobRef{Pack: p.ID, Offset: b.Offset, Length: b.Length, Raw: b.Raw, Flags: b.Flags}
				rep.Blobs++
			}
			if off+packFooterSize > p.Size {
				rep.problem(packKey(p.ID), "index %s: blobs end at %d, past the pack's data (size %d)", key, off, p.Size)
			}
		}
	}
	unindexed := 0
	for id := range stored {
		if _, ok := indexed[id]; !ok {
			unindexed++
		}
	}
	if unindexed > 0 {
		rep.note("%d packs are in no index: left by interrupted backups (or one running now); prune deletes them after its grace period", unindexed)
	}
	// Every manifest decodes, its tree matches, is safe, and every chunk
	// it references is indexed.
	var usedMu sync.Mutex
	used := map[ChunkID]bool{}
	trees := map[string]bool{}
	var snapshots atomic.Int64
	if err := parallel(ctx, r.conc, mkeys, func(ctx context.Context, key string) error {
		m, err := r.readManifest(ctx, key)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if !errors.Is(err, storage.ErrNotExist) { // else forgotten by a prune meanwhile
				rep.problem(key, "%v", err)
			}
			return nil
		}
		t, err := r.ReadTree(ctx, m)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if !gone(ctx, r, key) {
				rep.problem(key, "%v", err)
			}
			return nil
		}
		snapshots.Add(1)
		if err := checkPaths(t); err != nil {
			rep.problem(key, "tree %s: %v", m.TreeKey, err)
		}
		missing := 0
		var example string
		count := func(ids []ChunkID, where string) {
			for _, id := range ids {
				if _, ok := index[id]; !ok {
					if missing == 0 {
						example = fmt.Sprintf("%s needs chunk %s", where, id)
					}
					missing++
				}
			}
		}
		for _, e := range t.Entries {
			count(e.Chunks, e.Path)
		}
		for _, s := range t.Streams {
			count(s.Chunks, "stream "+s.Name)
		}
		if missing > 0 && !gone(ctx, r, key) {
			rep.problem(key, "snapshot %s references %d chunks that are in no index (%s)", m.ID, missing, example)
		}
		usedMu.Lock()
		trees[m.TreeKey] = true
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
		usedMu.Unlock()
		return nil
	}); err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	rep.Snapshots = int(snapshots.Load())
	orphans := 0
	if err := r.store.List(ctx, treesPrefix, func(o storage.ObjectInfo) error {
		if !trees[o.Key] {
			orphans++
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("verify: list trees: %w", err)
	}
	if orphans > 0 {
		rep.note("%d trees belong to no snapshot: left by interrupted backups (or one committing now); prune deletes them", orphans)
	}
	unused := 0
	for id, p := range indexed {
		if _, ok := stored[id]; !ok {
			continue
		}
		needed := false
		for _, b := range p.Blobs {
			if used[b.ID] {
				needed = true
				break
			}
		}
		if !needed {
			unused++
		}
	}
	if unused > 0 {
		rep.note("%d indexed packs hold no chunk of any snapshot: prune deletes them", unused)
	}

	// Read data: whole packs, every blob checked.
	if opts.ReadDataPercent > 0 && len(stored) > 0 {
		ids := make([]string, 0, len(stored))
		for id := range stored {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		if opts.ReadDataPercent < 100 {
			rand.Shuffle(len(ids), func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })
			n := int(float64(len(ids))*opts.ReadDataPercent/100 + 0.5)
			ids = ids[:max(1, n)]
		}
		var packsRead, blobsRead atomic.Int64
		var bytesRead atomic.Int64
		if err := parallel(ctx, r.conc, ids, func(ctx context.Context, id string) error {
			n, nb, err := r.verifyPack(ctx, id, stored[id].Size, indexed[id], rep)
			bytesRead.Add(n)
			blobsRead.Add(int64(nb))
			if err != nil {
				return err
			}
			packsRead.Add(1)
			return nil
		}); err != nil {
			return nil, fmt.Errorf("verify: %w", err)
		}
		rep.PacksRead, rep.BlobsRead, rep.BytesRead = int(packsRead.Load()), int(blobsRead.Load()), bytesRead.Load()
	}
	rep.Duration = time.Since(start)
	return rep, nil
}

// verifyPack downloads one pack and checks its trailer against the index
// and every blob. Problems go into rep; the error is for a cancelled ctx.
func (r *Repository) verifyPack(ctx context.Context, id string, size int64, ip indexPack, rep *VerifyReport) (int64, int, error) {
	key := packKey(id)
	rc, err := r.store.Get(ctx, key)
	if err != nil {
		if ctx.Err() != nil {
			return 0, 0, ctx.Err()
		}
		if errors.Is(err, storage.ErrNotExist) {
			return 0, 0, nil // listed a moment ago: a prune deleted it meanwhile
		}
		rep.problem(key, "cannot download: %v", err)
		return 0, 0, nil
	}
	// Sized up front (one byte more, to see a pack longer than listed):
	// growing a buffer would allocate several times the pack's size.
	data := make([]byte, size+1)
	got, err := io.ReadFull(rc, data)
	rc.Close()
	data = data[:got]
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		err = nil // shorter than size+1, as it should be; parsePack checks the rest
	}
	if err != nil {
		if ctx.Err() != nil {
			return int64(len(data)), 0, ctx.Err()
		}
		if !errors.Is(err, storage.ErrNotExist) { // else deleted by a prune while read
			rep.problem(key, "download: %v", err)
		}
		return int64(len(data)), 0, nil
	}
	n := int64(len(data))
	entries, err := r.parsePack(data)
	if err != nil {
		rep.problem(key, "%v", err)
		return n, 0, nil
	}
	if ip.ID != "" {
		same := len(entries) == len(ip.Blobs)
		for i := 0; same && i < len(entries); i++ {
			b := ip.Blobs[i]
			same = entries[i].ID == b.ID && entries[i].Length == b.Length && entries[i].Raw == b.Raw && entries[i].Flags == b.Flags
		}
		if !same {
			rep.problem(key, "trailer lists %d blobs that differ from the index's %d", len(entries), len(ip.Blobs))
		}
	}
	var off int64
	var buf []byte
	bad, checked := 0, 0
	var firstErr error
	for _, e := range entries {
		ref := BlobRef{Pack: id, Offset: off, Length: e.Length, Raw: e.Raw, Flags: e.Flags}
		if _, err := r.openBlob(&buf, e.ID, ref, data[off:off+int64(e.Length)]); err != nil {
			if bad == 0 {
				firstErr = err
			}
			bad++
		}
		checked++
		off += int64(e.Length)
	}
	if bad > 0 {
		rep.problem(key, "%d of %d blobs fail their check, the first: %v", bad, len(entries), firstErr)
	}
	return n, checked, nil
}

// parsePack splits a whole pack into its trailer entries, checking the
// footer and that the blobs fill the data area exactly.
func (r *Repository) parsePack(data []byte) ([]packEntry, error) {
	size := int64(len(data))
	if size < packFooterSize {
		return nil, fmt.Errorf("pack: %w: truncated (%d bytes)", ErrCorrupt, size)
	}
	tlen, err := trailerLength(data[size-packFooterSize:], size)
	if err != nil {
		return nil, fmt.Errorf("pack: %w", err)
	}
	entries, err := r.decodeTrailer(data[size-packFooterSize-tlen : size-packFooterSize])
	if err == nil {
		err = checkCover(entries, size-packFooterSize-tlen)
	}
	if err != nil {
		return nil, fmt.Errorf("pack: %w", err)
	}
	return entries, nil
}

// RepairResult reports what RepairIndex did.
type RepairResult struct {
	PacksIndexed   int      `json:"packs_indexed"`   // packs in no readable index, indexed from their trailers
	BadPacks       []string `json:"bad_packs"`       // packs whose trailer cannot be read: left alone
	IndexesDeleted []string `json:"indexes_deleted"` // unreadable index objects removed
}

// RepairIndex rebuilds the index from the packs themselves: every stored
// pack that no readable index object lists is indexed from its trailer,
// then index objects that cannot be read are deleted (every pack they
// could have listed is now indexed again). It holds a backup lease (it only
// adds to the repository, like a backup) and leaves the repository's
// in-memory index reloaded. Packs of a crashed backup become indexed
// garbage, which prune collects as usual.
func RepairIndex(ctx context.Context, r *Repository) (*RepairResult, error) {
	h, err := r.backupLease(ctx)
	if err != nil {
		return nil, err
	}
	defer h.release()
	good, bad, err := r.readIndexesTolerant(ctx)
	if err != nil {
		return nil, fmt.Errorf("repair index: %w", err)
	}
	indexed := map[string]bool{}
	for _, f := range good {
		for _, p := range f.Packs {
			indexed[p.ID] = true
		}
	}
	stored, err := r.storedPacks(ctx)
	if err != nil {
		return nil, fmt.Errorf("repair index: %w", err)
	}
	var missing []storage.ObjectInfo
	for id, o := range stored {
		if !indexed[id] {
			missing = append(missing, o)
		}
	}
	res := &RepairResult{}
	var mu sync.Mutex
	var packs []indexPack
	if err := parallel(ctx, r.conc, missing, func(ctx context.Context, o storage.ObjectInfo) error {
		id := packIDFromKey(o.Key)
		entries, err := r.readTrailerEntries(ctx, id, o.Size)
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			r.log.Warn("pack trailer unreadable; pack left out of the index", "pack", o.Key, "error", err)
			res.BadPacks = append(res.BadPacks, o.Key)
			return nil
		}
		ip := indexPack{ID: id, Size: o.Size}
		var off int64
		for _, e := range entries {
			ip.Blobs = append(ip.Blobs, indexBlob{ID: e.ID, Offset: off, Length: e.Length, Raw: e.Raw, Flags: e.Flags})
			off += int64(e.Length)
		}
		packs = append(packs, ip)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("repair index: %w", err)
	}
	sort.Slice(packs, func(i, j int) bool { return packs[i].ID < packs[j].ID })
	written := map[string][]indexPack{}
	if len(packs) > 0 {
		if err := r.writeIndexes(ctx, packs, func(key string, group []indexPack) { written[key] = group }); err != nil {
			return nil, fmt.Errorf("repair index: %w", err)
		}
		res.PacksIndexed = len(packs)
	}
	for key := range bad {
		if err := r.store.Delete(ctx, key); err != nil {
			return nil, fmt.Errorf("repair index: delete unreadable %s: %w", key, err)
		}
		res.IndexesDeleted = append(res.IndexesDeleted, key)
	}
	sort.Strings(res.IndexesDeleted)
	sort.Strings(res.BadPacks)
	// The index is now what was read and what was written: it need not
	// be downloaded again. (Objects other backups wrote meanwhile are
	// not loaded, so LoadIndex reads them.)
	r.setIndex(func(add func(key string, f *indexFile)) error {
		for key, f := range good {
			add(key, f)
		}
		for key, group := range written {
			add(key, &indexFile{Version: 1, Packs: group})
		}
		return nil
	})
	r.log.Info("index repaired", "packs_indexed", res.PacksIndexed, "bad_packs", len(res.BadPacks), "indexes_deleted", len(res.IndexesDeleted))
	return res, nil
}

// gone reports whether key no longer exists: an object verify read a
// moment ago was deleted by a concurrent prune, so what it said no longer
// counts. Any other answer (also an error) counts as present.
func gone(ctx context.Context, r *Repository, key string) bool {
	_, err := r.store.Stat(ctx, key)
	return errors.Is(err, storage.ErrNotExist)
}

package snapshot

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/lifeboat/lifeboat/supervisor/storage"
	"golang.org/x/sync/semaphore"
)

// An index object lists packs and the blobs in them. Each backup writes
// one for the packs it uploaded, after the packs and before its manifest.
type indexFile struct {
	Version int         `json:"version"`
	Packs   []indexPack `json:"packs"`
}

type indexPack struct {
	ID    string      `json:"id"`
	Size  int64       `json:"size"`
	Blobs []indexBlob `json:"blobs"`
}

type indexBlob struct {
	ID     ChunkID `json:"id"`
	Offset int64   `json:"offset"`
	Length int     `json:"length"`
	Raw    int     `json:"raw"`
	Flags  uint8   `json:"flags,omitempty"`
}

// MarshalText writes ids as hex.
func (id ChunkID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText reads hex ids.
func (id *ChunkID) UnmarshalText(b []byte) error {
	if len(b) != 64 {
		return fmt.Errorf("chunk id %q: want 64 hex digits", b)
	}
	_, err := hex.Decode(id[:], b)
	return err
}

// maxIndexBytes bounds one index object.
const maxIndexBytes = 256 << 20

// LoadIndex reads index objects not loaded yet (all of them at Open), so
// chunks other writers stored since are known. When an object it was
// loaded from is gone, a prune rewrote the index and may have deleted
// packs the stale entries point to: then the whole index is reloaded.
func (r *Repository) LoadIndex(ctx context.Context) error {
	return r.loadIndex(ctx, nil)
}

// loadIndex is LoadIndex; unlocked is as for eachIndex.
func (r *Repository) loadIndex(ctx context.Context, unlocked func() error) error {
	listed, err := r.listObjects(ctx, indexPrefix, "index")
	if err != nil {
		return err
	}
	present := map[string]bool{}
	for _, o := range listed {
		present[o.Key] = true
	}
	var unread []storage.ObjectInfo
	stale := false
	r.mu.RLock()
	for k := range r.indexes {
		stale = stale || !present[k]
	}
	for _, o := range listed {
		if !r.indexes[o.Key] {
			unread = append(unread, o)
		}
	}
	r.mu.RUnlock()
	if stale {
		r.log.Info("index was rewritten by a prune; reloading it")
		return r.reloadIndex(ctx, listed)
	}
	bad, err := r.eachIndex(ctx, unread, unlocked, func(key string, f *indexFile) {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.addIndex(f)
		r.indexes[key] = true
	})
	r.warnDamaged(bad)
	return err
}

// warnDamaged logs the index objects eachIndex found damaged. One damaged
// object must not make the whole repository unreadable (restore of
// snapshots whose chunks are indexed elsewhere, verify, repair). Its
// chunks are simply unknown: a backup uploads them again; a restore that
// needs them fails naming the chunk. Verify reports the object.
func (r *Repository) warnDamaged(bad map[string]error) {
	for key, err := range bad {
		r.log.Warn("skipping a damaged index object; run lifeboat verify", "object", key, "error", err)
	}
}

// listKeys lists the keys of the objects under prefix (what names them
// in the error).
func (r *Repository) listKeys(ctx context.Context, prefix, what string) ([]string, error) {
	objs, err := r.listObjects(ctx, prefix, what)
	if err != nil {
		return nil, err
	}
	keys := make([]string, len(objs))
	for i, o := range objs {
		keys[i] = o.Key
	}
	return keys, nil
}

// listObjects lists the objects under prefix, with their sizes; what
// names them in the error.
func (r *Repository) listObjects(ctx context.Context, prefix, what string) ([]storage.ObjectInfo, error) {
	var objs []storage.ObjectInfo
	if err := r.store.List(ctx, prefix, func(o storage.ObjectInfo) error {
		objs = append(objs, o)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("list %s: %w", what, err)
	}
	return objs, nil
}

// Index objects are read up to indexReads at a time, and at most
// indexReadBytes of them (as stored) at once. Each backup writes one,
// usually of a few KiB, and every Open reads them all: through a store
// 10 ms away, 152 of them read 8 at a time took most of a restore's
// 0.8 s. One may also hold 250,000 blobs (tens of MiB), so the bytes are
// bounded too; an object larger than the bound is read alone.
const (
	indexReads     = 32
	indexReadBytes = 64 << 20
)

// eachIndex reads the index objects objs (see indexReads) and hands
// each good one to add, one call at a time. The error of each damaged one
// (ErrCorrupt) is returned in bad; an object deleted since it was listed
// (a prune rewrote the index) is left out. Any other failure (to read: a
// network error; an unsupported version) is err: such an object is not
// known to be damaged, so nobody may treat it as such. When unlocked is
// set, each object's bytes are downloaded before it is called and decoded
// only after it returned nil, so Open can derive the keys meanwhile.
func (r *Repository) eachIndex(ctx context.Context, objs []storage.ObjectInfo, unlocked func() error, add func(key string, f *indexFile)) (bad map[string]error, err error) {
	bad = map[string]error{}
	var mu sync.Mutex
	budget := semaphore.NewWeighted(indexReadBytes)
	err = parallel(ctx, max(r.conc, indexReads), objs, func(ctx context.Context, o storage.ObjectInfo) error {
		w := min(max(o.Size, 1), indexReadBytes)
		if err := budget.Acquire(ctx, w); err != nil {
			return err
		}
		defer budget.Release(w)
		key := o.Key
		b, err := r.getAll(ctx, key, maxIndexBytes)
		var f *indexFile
		if err != nil {
			err = fmt.Errorf("read %s: %w", key, err)
		} else {
			if unlocked != nil {
				if err := unlocked(); err != nil {
					return err
				}
			}
			f, err = r.decodeIndex(key, b)
		}
		mu.Lock()
		defer mu.Unlock()
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, storage.ErrNotExist):
			return nil
		case errors.Is(err, ErrCorrupt):
			bad[key] = err
			return nil
		case err != nil:
			return err
		}
		add(key, f)
		return nil
	})
	return bad, err
}

func (r *Repository) decodeIndex(key string, b []byte) (*indexFile, error) {
	var idx indexFile
	if err := r.decodeObject("index", b, &idx); err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	if idx.Version != 1 {
		return nil, fmt.Errorf("%s: index version %d not supported", key, idx.Version)
	}
	for _, p := range idx.Packs {
		if !validPackID(p.ID) {
			return nil, fmt.Errorf("%s: %w: pack id %q", key, ErrCorrupt, p.ID)
		}
		for _, b := range p.Blobs {
			if !r.blobFits(b.Length, b.Raw, b.Flags) || b.Offset < 0 || b.Offset > p.Size-int64(b.Length) {
				return nil, fmt.Errorf("%s: %w: blob %s in pack %s: offset %d, length %d, size %d, flags %d do not fit the pack (%d bytes) or the chunk limit",
					key, ErrCorrupt, b.ID, p.ID, b.Offset, b.Length, b.Raw, b.Flags, p.Size)
			}
		}
	}
	return &idx, nil
}

// addIndex merges idx; r.mu must be held.
func (r *Repository) addIndex(idx *indexFile) {
	for _, p := range idx.Packs {
		for _, b := range p.Blobs {
			r.index[b.ID] = BlobRef{Pack: p.ID, Offset: b.Offset, Length: b.Length, Raw: b.Raw, Flags: b.Flags}
		}
	}
}

// writeIndex stores the index of a backup's new packs and adds each
// object to the in-memory index as soon as it is stored (one that failed
// after others leaves those known).
func (r *Repository) writeIndex(ctx context.Context, packs []indexPack) error {
	return r.writeIndexes(ctx, packs, func(key string, group []indexPack) {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.addIndex(&indexFile{Version: 1, Packs: group})
		r.indexes[key] = true
	})
}

// maxBlobsPerIndex splits an index into objects of bounded size (about 150
// bytes of JSON per blob before compression), well below maxIndexBytes.
var maxBlobsPerIndex = 250_000 // a var for the test of the split

// splitIndex cuts packs into groups of at most maxBlobsPerIndex blobs.
func splitIndex(packs []indexPack) [][]indexPack {
	var out [][]indexPack
	var cur []indexPack
	n := 0
	for _, p := range packs {
		if n > 0 && n+len(p.Blobs) > maxBlobsPerIndex {
			out = append(out, cur)
			cur, n = nil, 0
		}
		cur = append(cur, p)
		n += len(p.Blobs)
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}

// writeIndexes stores packs as new index objects, split by splitIndex;
// stored, when set, is told each one as soon as it is stored.
func (r *Repository) writeIndexes(ctx context.Context, packs []indexPack, stored func(key string, group []indexPack)) error {
	for _, group := range splitIndex(packs) {
		b, err := r.encodeObject("index", &indexFile{Version: 1, Packs: group})
		if err != nil {
			return err
		}
		key := indexPrefix + randomID(16)
		if err := r.store.PutIfAbsent(ctx, key, bytes.NewReader(b), int64(len(b))); err != nil {
			return fmt.Errorf("write index %s: %w", key, err)
		}
		if stored != nil {
			stored(key, group)
		}
	}
	return nil
}

// lookup finds a chunk.
func (r *Repository) lookup(id ChunkID) (BlobRef, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	ref, ok := r.index[id]
	return ref, ok
}

func packIDFromKey(key string) string {
	return key[strings.LastIndex(key, "/")+1:]
}

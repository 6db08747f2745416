package snapshot

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// TestTamperedBlobCannotInflate feeds the blob reader a zstd frame that
// inflates to 256 MiB under an index entry claiming a small chunk (what a
// tampered pack in an unencrypted repository looks like): it must be
// refused as corrupt without allocating anywhere near the inflated size.
func TestTamperedBlobCannotInflate(t *testing.T) {
	r := openRepo(t, fileStore(t), nil)
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBestCompression))
	bomb := enc.EncodeAll(make([]byte, 256<<20), nil)
	t.Logf("bomb: %d bytes stored", len(bomb))

	for _, raw := range []int{4096, r.maxBlob()} {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		var buf []byte
		_, err := r.openBlob(&buf, ChunkID{}, BlobRef{Pack: "p", Raw: raw, Length: len(bomb), Flags: blobFlagZstd}, bomb)
		runtime.ReadMemStats(&after)
		if !errors.Is(err, ErrCorrupt) {
			t.Errorf("raw %d: err = %v, want ErrCorrupt", raw, err)
		}
		if grew := after.TotalAlloc - before.TotalAlloc; grew > 64<<20 {
			t.Errorf("raw %d: reading the bomb allocated %d MiB", raw, grew>>20)
		}
	}
	var buf []byte
	if _, err := r.openBlob(&buf, ChunkID{}, BlobRef{Pack: "p", Raw: r.maxBlob() + 1}, nil); !errors.Is(err, ErrCorrupt) {
		t.Errorf("oversized raw: err = %v, want ErrCorrupt", err)
	}
}

// TestHostileIndexEntriesAreRefused: an index entry whose offset, length,
// size or flags cannot describe a blob of its pack (what a tampered index
// in an unencrypted repository looks like) makes the index object corrupt
// when it is decoded: no reader ever sizes a download or slices a buffer
// with it. A restore of the stream it describes is an error, not a panic.
func TestHostileIndexEntriesAreRefused(t *testing.T) {
	ctx := context.Background()
	s := fileStore(t)
	r := openRepo(t, s, nil)
	m, err := r.Backup(ctx, BackupRequest{Streams: []StreamSource{{Name: "db", Reader: bytes.NewReader(randBytes(3 << 20))}}})
	if err != nil {
		t.Fatal(err)
	}
	key, idx := onlyIndex(t, r)
	size := idx.Packs[0].Size
	for name, bad := range map[string]func(b *indexBlob){
		"negative length":      func(b *indexBlob) { b.Length = -1 },
		"huge length":          func(b *indexBlob) { b.Length = 1 << 40 },
		"negative offset":      func(b *indexBlob) { b.Offset = -5 },
		"offset past the pack": func(b *indexBlob) { b.Offset = size },
		"overflowing offset":   func(b *indexBlob) { b.Offset = 1<<63 - 10 },
		"zero size":            func(b *indexBlob) { b.Raw = 0 },
		"size over the limit":  func(b *indexBlob) { b.Raw = r.maxBlob() + 1 },
		"unknown flag":         func(b *indexBlob) { b.Flags = 4 },
	} {
		t.Run(name, func(t *testing.T) {
			evil := *idx
			evil.Packs = []indexPack{idx.Packs[0]}
			evil.Packs[0].Blobs = slices.Clone(idx.Packs[0].Blobs)
			bad(&evil.Packs[0].Blobs[len(evil.Packs[0].Blobs)-1])
			b, err := r.encodeObject("index", &evil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := r.decodeIndex(key, b); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("decode: err = %v, want ErrCorrupt", err)
			}
			if err := s.Put(ctx, key, bytes.NewReader(b), int64(len(b))); err != nil {
				t.Fatal(err)
			}
			r2, err := Open(ctx, s, Options{})
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			_, err = r2.Restore(ctx, RestoreRequest{Snapshot: m.ID, Streams: map[string]StreamSink{"db": {Writer: &out}}})
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("restore: err = %v, want ErrCorrupt", err)
			}
		})
	}
}

// TestOverlappingBlobsAreRefused: an index that gives two chunks the same
// bytes of a pack (each entry fits the pack on its own, so the index
// decodes) makes a tree restore fail as corrupt, without the completion
// marker. The restore reads a span of a pack blob by blob, in order.
func TestOverlappingBlobsAreRefused(t *testing.T) {
	ctx := context.Background()
	s := fileStore(t)
	r := openRepo(t, s, nil)
	src := t.TempDir()
	for _, name := range []string{"a", "b"} {
		if err := os.WriteFile(filepath.Join(src, name), randBytes(64<<10), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.Backup(ctx, BackupRequest{Dir: src}); err != nil {
		t.Fatal(err)
	}
	key, idx := onlyIndex(t, r)
	blobs := idx.Packs[0].Blobs
	if len(blobs) != 2 {
		t.Fatalf("%d blobs, want 2", len(blobs))
	}
	blobs[1].Offset = blobs[0].Offset + int64(blobs[0].Length)/2
	b, err := r.encodeObject("index", idx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put(ctx, key, bytes.NewReader(b), int64(len(b))); err != nil {
		t.Fatal(err)
	}
	r2, err := Open(ctx, s, Options{})
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "restored")
	_, err = r2.Restore(ctx, RestoreRequest{Target: dst})
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "overlap") {
		t.Fatalf("restore: err = %v, want ErrCorrupt for overlapping blobs", err)
	}
	if _, ok := RestoredFrom(dst); ok || !RestoreIncomplete(dst) {
		t.Errorf("a failed restore must stay marked incomplete")
	}
}

// onlyIndex reads the repository's one index object.
func onlyIndex(t *testing.T, r *Repository) (string, *indexFile) {
	t.Helper()
	ctx := context.Background()
	keys, err := r.listKeys(ctx, indexPrefix, "index")
	if err != nil || len(keys) != 1 {
		t.Fatalf("index objects: %v (%v), want one", keys, err)
	}
	idx, err := r.readIndex(ctx, keys[0])
	if err != nil {
		t.Fatal(err)
	}
	return keys[0], idx
}

// TestDeeplyNestedObjectIsRefused: a stored object (what anyone who can
// write to an unencrypted repository's bucket controls) nesting a few
// million arrays under a name the reader does not know is corrupt, not a
// stack overflow that takes the process down.
func TestDeeplyNestedObjectIsRefused(t *testing.T) {
	s := fileStore(t)
	r := openRepo(t, s, nil)
	const depth = 4 << 20
	js := `{"version":1,"unknown":` + strings.Repeat("[", depth) + strings.Repeat("]", depth) + `}`
	b := append(append(append([]byte{}, envelopeMagic...), flagZstd), r.zenc.EncodeAll([]byte(js), nil)...)
	for kind, v := range map[string]any{"tree": new(Tree), "manifest": new(Manifest), "index": new(indexFile)} {
		if err := r.decodeObject(kind, b, v); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: err = %v, want ErrCorrupt", kind, err)
		}
	}
}

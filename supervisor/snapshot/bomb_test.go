package snapshot

import (
	"context"
	"errors"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/lifeboat/lifeboat/supervisor/storage"
)

// TestTamperedBlobCannotInflate feeds the blob reader a zstd frame that
// inflates to 256 MiB under an index entry claiming a small chunk (what a
// tampered pack in an unencrypted repository looks like): it must be
// refused as corrupt without allocating anywhere near the inflated size.
func TestTamperedBlobCannotInflate(t *testing.T) {
	s, err := storage.OpenFile(filepath.Join(t.TempDir(), "store"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := Open(context.Background(), s, Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBestCompression))
	bomb := enc.EncodeAll(make([]byte, 256<<20), nil)
	t.Logf("bomb: %d bytes stored", len(bomb))

	for _, raw := range []int{4096, r.maxBlob()} {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		var buf []byte
		_, err = r.openBlob(&buf, ChunkID{}, BlobRef{Pack: "p", Raw: raw, Length: len(bomb), Flags: blobFlagZstd}, bomb)
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

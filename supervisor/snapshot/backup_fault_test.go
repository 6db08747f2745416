package snapshot

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lifeboat/lifeboat/supervisor/storage"
)

var errInjected = errors.New("injected upload failure")

// failingStore fails every pack upload after the first n: a store that
// breaks in the middle of a backup, which a real server does only by
// chance. The round-trip tests beside it back up to a real MinIO.
type failingStore struct {
	storage.Store
	n     int64
	count atomic.Int64
}

func (f *failingStore) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	if strings.HasPrefix(key, packPrefix) && f.count.Add(1) > f.n {
		return errInjected
	}
	return f.Store.Put(ctx, key, r, size)
}

// TestUploadFailureEndsBackup: a pack upload that fails in the middle of
// one large file, or of a stream, fails the backup with that error,
// promptly, whatever the sealers hold at that moment, and commits nothing.
func TestUploadFailureEndsBackup(t *testing.T) {
	dir, in := t.TempDir(), filepath.Join(t.TempDir(), "stream")
	if err := os.WriteFile(filepath.Join(dir, "big"), randBytes(96<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(in, randBytes(96<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, req := range map[string]BackupRequest{
		"file":   {Dir: dir},
		"stream": {Streams: []StreamSource{{Name: "db", Command: []string{"cat", in}}}},
	} {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			base := fileStore(t)
			// The default concurrency: several uploads fail at once.
			r, err := Open(ctx, &failingStore{Store: base, n: 1}, Options{Create: true})
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() {
				_, err := r.Backup(ctx, req)
				done <- err
			}()
			select {
			case err := <-done:
				if !errors.Is(err, errInjected) {
					t.Fatalf("backup with a failing upload: %v, want the upload's error", err)
				}
			case <-time.After(time.Minute):
				t.Fatal("the backup hung after an upload failed")
			}
			if list, err := r.Snapshots(ctx); err != nil || len(list) != 0 {
				t.Fatalf("after a failed backup: %d snapshots (%v), want none", len(list), err)
			}
		})
	}
}

package snapshot

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestHungStreamCommandsHonourCancel: a stream command that hangs (no
// output, never exits; or a restore command that never reads its stdin)
// must not hold a backup or restore past its context, and must be killed
// with its whole process group.
func TestHungStreamCommandsHonourCancel(t *testing.T) {
	s := fileStore(t)
	r := openRepo(t, s, nil)
	pidFile := filepath.Join(t.TempDir(), "child.pid")

	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	// The shell's child sleeps too: the whole group must die.
	_, err := r.Backup(ctx, BackupRequest{Streams: []StreamSource{{Name: "db", Command: []string{"sh", "-c", "sleep 60 & echo $! > " + pidFile + "; wait"}}}})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("hung backup stream: err = %v, want deadline exceeded", err)
	}
	if d := time.Since(t0); d > 10*time.Second {
		t.Fatalf("hung backup stream returned after %v", d)
	}
	assertDead(t, pidFile)
	// Output closed, but the command never exits.
	ctx1, cancel1 := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel1()
	t0 = time.Now()
	_, err = r.Backup(ctx1, BackupRequest{Streams: []StreamSource{{Name: "db", Command: []string{"sh", "-c", "echo data; exec >&- 2>&-; sleep 60"}}}})
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(t0) > 10*time.Second {
		t.Fatalf("stream command that closed its output and hangs: err = %v after %v", err, time.Since(t0))
	}
	if list, _ := r.Snapshots(context.Background()); len(list) != 0 {
		t.Fatalf("a cancelled backup was committed")
	}

	in := filepath.Join(t.TempDir(), "in")
	os.WriteFile(in, randBytes(4<<20), 0o600) // far more than a pipe holds
	m, err := r.Backup(context.Background(), BackupRequest{Streams: []StreamSource{{Name: "db", Command: []string{"cat", in}}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel2()
	t0 = time.Now()
	_, err = r.Restore(ctx2, RestoreRequest{Snapshot: m.ID, Streams: map[string]StreamSink{"db": {Command: []string{"sh", "-c", "sleep 60 & echo $! > " + pidFile + "; wait"}}}})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("hung restore command: err = %v, want deadline exceeded", err)
	}
	if d := time.Since(t0); d > 10*time.Second {
		t.Fatalf("hung restore command returned after %v", d)
	}
	assertDead(t, pidFile)
}

func assertDead(t *testing.T, pidFile string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, err := os.ReadFile(pidFile)
		if err == nil && len(b) > 0 {
			st, err := os.ReadFile("/proc/" + strings.TrimSpace(string(b)) + "/stat")
			// Gone, or a zombie waiting for its parent (init) to reap it.
			if err != nil || containsState(st, 'Z') {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the stream command's child (pid file %s: %q) still runs", pidFile, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// containsState reports whether /proc/PID/stat shows state c.
func containsState(stat []byte, c byte) bool {
	for i := len(stat) - 1; i > 0; i-- {
		if stat[i] == ')' && i+2 < len(stat) {
			return stat[i+2] == c
		}
	}
	return false
}

// TestCorruptStreamNeverEndsCleanly: when a stream's chunk fails its check
// mid-restore, the restore command is killed, never handed a clean end of
// input (a mysql or psql would apply the truncated dump and exit 0).
func TestCorruptStreamNeverEndsCleanly(t *testing.T) {
	ctx := context.Background()
	s := fileStore(t)
	r := openRepo(t, s, nil)
	m, tree := backupCatStream(t, r, randBytes(6<<20)) // several chunks, incompressible
	// Damage the stream's last chunk, so the earlier ones reach the command.
	ids := tree.Streams[0].Chunks
	ref, _ := r.lookup(ids[len(ids)-1])
	rc, err := s.Get(ctx, packKey(ref.Pack))
	if err != nil {
		t.Fatal(err)
	}
	pack, _ := io.ReadAll(rc)
	rc.Close()
	pack[ref.Offset+10] ^= 0xff
	if err := s.Put(ctx, packKey(ref.Pack), bytes.NewReader(pack), int64(len(pack))); err != nil {
		t.Fatal(err)
	}
	done := filepath.Join(t.TempDir(), "applied")
	_, err = r.Restore(ctx, RestoreRequest{Snapshot: m.ID, Streams: map[string]StreamSink{"db": {Command: []string{"sh", "-c", "cat > /dev/null && touch " + done}}}})
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("restore of a damaged stream: %v, want ErrCorrupt", err)
	}
	if _, err := os.Stat(done); err == nil {
		t.Fatal("the restore command saw a clean end of its input and finished")
	}
}

package trigger

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func write(t *testing.T, name, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(name, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func startWatch(t *testing.T, opts WatchOptions) (*Watcher, *recorder) {
	t.Helper()
	rec := &recorder{}
	w, err := Watch(context.Background(), opts, rec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	return w, rec
}

// nth waits for the n-th request (1-based) and returns it.
func nth(t *testing.T, rec *recorder, n int) (Request, time.Time) {
	t.Helper()
	eventually(t, "a watch request", func() bool { return rec.count() >= n })
	reqs, at := rec.get()
	return reqs[n-1], at[n-1]
}

func TestWatchDebounce(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "a/b/existing.txt"), "v1")
	w, rec := startWatch(t, WatchOptions{Dir: dir, Debounce: 300 * time.Millisecond, MaxDelay: 10 * time.Second})
	if w.Dirs() != 3 {
		t.Fatalf("watching %d dirs, want 3 (., a, a/b)", w.Dirs())
	}

	t0 := time.Now()
	write(t, filepath.Join(dir, "a/b/existing.txt"), "v2")
	req, at := nth(t, rec, 1)
	if req.Source != SourceWatch || req.Reason != "1 path changed: a/b/existing.txt" {
		t.Fatalf("request %+v", req)
	}
	if d := at.Sub(t0); d < 300*time.Millisecond {
		t.Fatalf("asked after %s, before the 300ms quiet period", d)
	}

	// A burst is one request.
	for i := range 5 {
		write(t, filepath.Join(dir, "burst", string(rune('a'+i))), "x")
	}
	req, _ = nth(t, rec, 2)
	if !strings.HasPrefix(req.Reason, "6 paths changed: burst, burst/a, burst/b, ...") {
		t.Fatalf("burst gave %q", req.Reason)
	}
}

func TestWatchNewSubdirectories(t *testing.T) {
	dir := t.TempDir()
	_, rec := startWatch(t, WatchOptions{Dir: dir, Debounce: 100 * time.Millisecond})
	if err := os.MkdirAll(filepath.Join(dir, "new/x/y"), 0o755); err != nil {
		t.Fatal(err)
	}
	req, _ := nth(t, rec, 1)
	if !strings.Contains(req.Reason, "new") {
		t.Fatalf("request %+v", req)
	}
	// The new directories are watched now, down to the deepest.
	write(t, filepath.Join(dir, "new/x/y/deep.txt"), "x")
	req, _ = nth(t, rec, 2)
	if req.Reason != "1 path changed: new/x/y/deep.txt" {
		t.Fatalf("change in a new subdirectory: %+v", req)
	}
	// A renamed directory keeps being watched under its new name.
	if err := os.Rename(filepath.Join(dir, "new"), filepath.Join(dir, "moved")); err != nil {
		t.Fatal(err)
	}
	nth(t, rec, 3)
	write(t, filepath.Join(dir, "moved/x/y/after.txt"), "x")
	req, _ = nth(t, rec, 4)
	if req.Reason != "1 path changed: moved/x/y/after.txt" {
		t.Fatalf("change in a renamed directory: %+v", req)
	}
}

func TestWatchIgnoresExcludedAndOwnFiles(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "cache/old"), "x")
	write(t, filepath.Join(dir, "tmp/keep.txt"), "x")
	write(t, filepath.Join(dir, "lost+found/#12"), "x")
	w, rec := startWatch(t, WatchOptions{Dir: dir, Debounce: 100 * time.Millisecond,
		Exclude: []string{"*.tmp", "cache", "tmp/*", "logs"}})
	if w.Dirs() != 2 {
		t.Fatalf("watching %d dirs, want 2 (., tmp): excluded dirs are not watched", w.Dirs())
	}
	for _, name := range []string{"x.tmp", "sub/y.tmp", "cache/inner", "cache/deeper/z", "tmp/t1",
		"logs/app.log", "lost+found/#13", ".lifeboat-restoring", ".lifeboat-restored", ".lifeboat.sock", ".lb-0123abcd.sock"} {
		write(t, filepath.Join(dir, name), "ignored")
	}
	write(t, filepath.Join(dir, "real.txt"), "counted")
	req, _ := nth(t, rec, 1)
	// "sub" itself is a real change: the directory appeared.
	if req.Reason != "2 paths changed: real.txt, sub" {
		t.Fatalf("request %+v: ignored paths counted", req)
	}
}

func TestWatchMaxDelay(t *testing.T) {
	dir := t.TempDir()
	_, rec := startWatch(t, WatchOptions{Dir: dir, Debounce: 200 * time.Millisecond, MaxDelay: 500 * time.Millisecond})

	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // a busy app: never quiet for 200ms
		defer wg.Done()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
				os.WriteFile(filepath.Join(dir, "busy"), []byte{byte(i)}, 0o644)
			}
		}
	}()
	t0 := time.Now()
	_, first := nth(t, rec, 1)
	_, second := nth(t, rec, 2)
	close(stop)
	wg.Wait()
	if d := first.Sub(t0); d > 1500*time.Millisecond {
		t.Fatalf("first request after %s of constant activity, max_delay 500ms", d)
	}
	if d := second.Sub(first); d < 400*time.Millisecond || d > 1500*time.Millisecond {
		t.Fatalf("requests %s apart under constant activity, max_delay 500ms", d)
	}
}

func TestWatchStopsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	w, err := Watch(ctx, WatchOptions{Dir: t.TempDir()}, &recorder{})
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case <-w.done:
	case <-time.After(10 * time.Second):
		t.Fatal("watch goroutine still running after its context ended")
	}
	w.Stop() // again: fine

	if _, err := Watch(context.Background(), WatchOptions{Dir: filepath.Join(t.TempDir(), "missing")}, &recorder{}); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("missing dir: %v", err)
	}
	if _, err := Watch(context.Background(), WatchOptions{Dir: t.TempDir(), Exclude: []string{"[bad"}}, &recorder{}); err == nil {
		t.Fatal("bad exclude pattern accepted")
	}
}

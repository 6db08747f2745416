package trigger

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func waitFor(t *testing.T, w *Waiter) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	snap, err := w.Wait(ctx)
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil {
		t.Fatal("waiter never answered")
	}
	return snap, err
}

// TestStorm: 1,000 requests from several goroutines while each backup
// takes ~50ms give a handful of backups; every request is answered by a
// backup that started after it; the last backup covers the last request.
func TestStorm(t *testing.T) {
	var started, concurrent, maxConcurrent atomic.Int64
	var mu sync.Mutex
	covered := 0
	loop := New(Options{Run: func(ctx context.Context, b Batch) (string, error) {
		n := started.Add(1)
		if c := concurrent.Add(1); c > maxConcurrent.Load() {
			maxConcurrent.Store(c)
		}
		defer concurrent.Add(-1)
		mu.Lock()
		covered += len(b.Requests)
		mu.Unlock()
		time.Sleep(50 * time.Millisecond) // the backup's work
		return fmt.Sprintf("snap-%d", n), nil
	}})
	loop.Start()
	defer loop.Stop(context.Background())

	const goroutines, per = 8, 125
	type ticket struct {
		startedBefore int64 // backups started before the request was made
		w             *Waiter
	}
	tickets := make([][]ticket, goroutines)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range per {
				sb := started.Load()
				tickets[g] = append(tickets[g], ticket{sb, loop.Trigger(Request{Source: SourceNotify, Reason: fmt.Sprintf("g%d-%d", g, i)})})
			}
		}()
	}
	wg.Wait()
	lastBefore := started.Load()
	last := loop.Trigger(Request{Source: SourceNotify, Reason: "last"})

	for _, ts := range tickets {
		for _, tk := range ts {
			snap, err := waitFor(t, tk.w)
			if err != nil {
				t.Fatal(err)
			}
			var n int64
			fmt.Sscanf(snap, "snap-%d", &n)
			if n <= tk.startedBefore {
				t.Fatalf("request made after %d backups started was answered by %s, which started before it", tk.startedBefore, snap)
			}
		}
	}
	snap, err := waitFor(t, last)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "the loop to go idle", func() bool { st := loop.Status(); return !st.Running && !st.Pending })
	runs := started.Load()
	if want := fmt.Sprintf("snap-%d", runs); snap != want {
		t.Fatalf("last request answered by %s, but the last backup was %s", snap, want)
	}
	var n int64
	fmt.Sscanf(snap, "snap-%d", &n)
	if n <= lastBefore {
		t.Fatalf("last request answered by a backup that started before it")
	}
	if runs > 10 {
		t.Fatalf("%d backups for 1,001 requests: not coalesced", runs)
	}
	if maxConcurrent.Load() != 1 {
		t.Fatalf("%d backups ran at once", maxConcurrent.Load())
	}
	mu.Lock()
	defer mu.Unlock()
	if covered != goroutines*per+1 {
		t.Fatalf("backups covered %d requests, want %d", covered, goroutines*per+1)
	}
	t.Logf("%d requests -> %d backups", goroutines*per+1, runs)
}

func TestBatchReasons(t *testing.T) {
	var b Batch
	for i := range 1000 {
		b.Requests = append(b.Requests, Request{Source: SourceNotify, Reason: "push refs/heads/main"},
			Request{Source: SourceWatch}, Request{Source: SourceNotify, Reason: fmt.Sprintf("r%d", i)})
	}
	got := b.Reasons()
	if len(got) != MaxReasons+1 || got[0] != "push refs/heads/main" || got[1] != "r0" ||
		got[MaxReasons] != fmt.Sprintf("... and %d more", 1001-MaxReasons) {
		t.Fatalf("reasons %q", got)
	}
	if fmt.Sprint(b.Sources()) != "[notify watch]" {
		t.Fatalf("sources %v", b.Sources())
	}
}

// TestRetryBackoff: failures are retried on their own with growing waits,
// visible in status and metrics; a success resets them.
func TestRetryBackoff(t *testing.T) {
	reg := prometheus.NewRegistry()
	var mu sync.Mutex
	var starts []time.Time
	var batches []Batch
	loop := New(Options{RetryInitial: 40 * time.Millisecond, RetryMax: 100 * time.Millisecond, Registerer: reg,
		Run: func(ctx context.Context, b Batch) (string, error) {
			mu.Lock()
			defer mu.Unlock()
			starts = append(starts, time.Now())
			batches = append(batches, b)
			if len(starts) <= 4 {
				return "", fmt.Errorf("store unreachable (%d)", len(starts))
			}
			return "snap-ok", nil
		}})
	loop.Start()
	defer loop.Stop(context.Background())

	_, err := waitFor(t, loop.Trigger(Request{Source: SourceNotify}))
	if err == nil || !strings.Contains(err.Error(), "store unreachable (1)") {
		t.Fatalf("the first waiter gets the first backup's error, got %v", err)
	}
	eventually(t, "a successful retry", func() bool { return loop.Status().Backups == 1 })
	mu.Lock()
	defer mu.Unlock()
	if len(starts) != 5 {
		t.Fatalf("%d backups, want 4 failures and 1 success", len(starts))
	}
	for i, want := range []time.Duration{40, 80, 100, 100} { // doubling, capped at RetryMax
		want *= time.Millisecond
		if gap := starts[i+1].Sub(starts[i]); gap < want {
			t.Errorf("retry %d came after %s, want at least %s", i+1, gap, want)
		}
		if src := batches[i+1].Sources(); len(src) != 1 || src[0] != SourceRetry {
			t.Errorf("retry %d has sources %v", i+1, src)
		}
	}
	st := loop.Status()
	if st.ConsecutiveFailures != 0 || st.Failures != 4 || st.LastError != "" || st.LastSnapshot != "snap-ok" || st.NextRetry != "" || st.LastSuccess == "" {
		t.Fatalf("status after success %+v", st)
	}
	if v := testutil.ToFloat64(loop.m.result.WithLabelValues("failure")); v != 4 {
		t.Errorf("lifeboat_backups_total{result=failure} = %v", v)
	}
	if v := testutil.ToFloat64(loop.m.result.WithLabelValues("success")); v != 1 {
		t.Errorf("lifeboat_backups_total{result=success} = %v", v)
	}
	if v := testutil.ToFloat64(loop.m.failures); v != 0 {
		t.Errorf("lifeboat_backup_consecutive_failures = %v after a success", v)
	}
	if v := testutil.ToFloat64(loop.m.triggers.WithLabelValues(SourceNotify)); v != 1 {
		t.Errorf("lifeboat_backup_triggers_total{source=notify} = %v", v)
	}
	if v := testutil.ToFloat64(loop.m.lastSuccess); v < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Errorf("lifeboat_backup_last_success_timestamp_seconds = %v", v)
	}
	if n, err := testutil.GatherAndCount(reg); err != nil || n < 7 {
		t.Errorf("registry holds %d metric families (%v)", n, err)
	}
}

// TestStatusDuringBackoff: while a retry waits, status says when it comes,
// how many failures there were, and what the last error was; a request
// made meanwhile joins the retry.
func TestStatusDuringBackoff(t *testing.T) {
	reg := prometheus.NewRegistry()
	loop := New(Options{RetryInitial: time.Hour, Registerer: reg, Run: func(ctx context.Context, b Batch) (string, error) {
		return "", errors.New("bucket gone")
	}})
	loop.Start()
	if _, err := waitFor(t, loop.Trigger(Request{Source: SourceSchedule})); err == nil {
		t.Fatal("no error")
	}
	w := loop.Trigger(Request{Source: SourceNotify, Reason: "during backoff"})
	st := loop.Status()
	next, err := time.Parse(time.RFC3339, st.NextRetry)
	if err != nil || next.Before(time.Now().Add(59*time.Minute)) {
		t.Fatalf("next retry %q: %v", st.NextRetry, err)
	}
	if !st.Pending || st.Running || st.ConsecutiveFailures != 1 || st.Failures != 1 || st.LastError != "bucket gone" ||
		fmt.Sprint(st.PendingSources) != "[retry notify]" {
		t.Fatalf("status %+v", st)
	}
	if v := testutil.ToFloat64(loop.m.failures); v != 1 {
		t.Errorf("lifeboat_backup_consecutive_failures = %v", v)
	}
	if v := testutil.ToFloat64(loop.m.pending); v != 1 {
		t.Errorf("lifeboat_backup_pending = %v", v)
	}
	if err := loop.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := waitFor(t, w); !errors.Is(err, ErrStopped) {
		t.Fatalf("pending request at stop: %v", err)
	}
	if v := testutil.ToFloat64(loop.m.pending); v != 0 {
		t.Errorf("lifeboat_backup_pending = %v after stop", v)
	}
}

// gate is a backup that runs until released, reporting its start.
type gate struct {
	started  chan Batch
	release  chan struct{}
	canceled atomic.Bool
	n        atomic.Int64
}

func newGate() *gate {
	return &gate{started: make(chan Batch, 10), release: make(chan struct{})}
}

func (g *gate) run(ctx context.Context, b Batch) (string, error) {
	n := g.n.Add(1)
	g.started <- b
	select {
	case <-g.release:
		return fmt.Sprintf("snap-%d", n), nil
	case <-ctx.Done():
		g.canceled.Store(true)
		return "", ctx.Err()
	}
}

func (g *gate) waitStart(t *testing.T) Batch {
	t.Helper()
	select {
	case b := <-g.started:
		return b
	case <-time.After(10 * time.Second):
		t.Fatal("backup did not start")
		return Batch{}
	}
}

// TestStopLetsRunningBackupFinish: Stop answers pending requests at once,
// lets the running backup finish, and refuses new requests.
func TestStopLetsRunningBackupFinish(t *testing.T) {
	g := newGate()
	loop := New(Options{Run: g.run})
	loop.Start()
	running := loop.Trigger(Request{Source: SourceNotify})
	g.waitStart(t)
	pendingW := loop.Trigger(Request{Source: SourceWatch})

	stopped := make(chan error, 1)
	go func() { stopped <- loop.Stop(context.Background()) }()
	if _, err := waitFor(t, pendingW); !errors.Is(err, ErrStopped) {
		t.Fatalf("pending request: %v", err)
	}
	select {
	case err := <-stopped:
		t.Fatalf("Stop returned (%v) while the backup still ran", err)
	default:
	}
	if _, err := waitFor(t, loop.Trigger(Request{Source: SourceNotify})); !errors.Is(err, ErrStopped) {
		t.Fatalf("request after stop: %v", err)
	}
	close(g.release)
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	if snap, err := waitFor(t, running); err != nil || snap != "snap-1" || g.canceled.Load() {
		t.Fatalf("running backup: %q %v (canceled %v)", snap, err, g.canceled.Load())
	}
	if err := loop.Stop(context.Background()); err != nil {
		t.Fatal("second Stop:", err)
	}
	if _, err := loop.Final(context.Background(), "x"); !errors.Is(err, ErrStopped) {
		t.Fatal("Final after Stop:", err)
	}
}

// TestStopDeadlineCancels: a backup that outlives Stop's ctx is canceled.
func TestStopDeadlineCancels(t *testing.T) {
	g := newGate()
	loop := New(Options{Run: g.run})
	loop.Start()
	w := loop.Trigger(Request{Source: SourceNotify})
	g.waitStart(t)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := loop.Stop(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Stop: %v", err)
	}
	if _, err := waitFor(t, w); !errors.Is(err, context.Canceled) || !g.canceled.Load() {
		t.Fatalf("running backup after Stop's deadline: %v", err)
	}
	<-loop.done
}

// TestFinalAfterRunningBackup: Final lets the running backup finish, then
// takes one more that covers the pending requests and the final one.
func TestFinalAfterRunningBackup(t *testing.T) {
	reg := prometheus.NewRegistry()
	g := newGate()
	loop := New(Options{Run: g.run, Registerer: reg})
	loop.Start()
	running := loop.Trigger(Request{Source: SourceNotify, Reason: "first"})
	g.waitStart(t)
	pendingW := loop.Trigger(Request{Source: SourceWatch, Reason: "later write"})

	type result struct {
		snap string
		err  error
	}
	final := make(chan result, 1)
	go func() {
		snap, err := loop.Final(context.Background(), "shutdown")
		final <- result{snap, err}
	}()
	eventually(t, "Final to take the pending requests", func() bool {
		loop.mu.Lock()
		defer loop.mu.Unlock()
		return loop.stopping
	})
	g.release <- struct{}{} // lets exactly one backup finish: the running one
	if snap, err := waitFor(t, running); snap != "snap-1" || err != nil {
		t.Fatalf("running backup: %q %v", snap, err)
	}
	b := g.waitStart(t) // the final backup
	if fmt.Sprint(b.Sources()) != "[watch final]" || fmt.Sprint(b.Reasons()) != "[later write shutdown]" {
		t.Fatalf("final batch %v %v", b.Sources(), b.Reasons())
	}
	if !loop.Status().Running {
		t.Fatal("status does not show the final backup running")
	}
	close(g.release)
	r := <-final
	if r.err != nil || r.snap != "snap-2" {
		t.Fatalf("Final: %q %v", r.snap, r.err)
	}
	if snap, err := waitFor(t, pendingW); snap != "snap-2" || err != nil {
		t.Fatalf("pending request answered by %q %v, want the final backup", snap, err)
	}
	if g.canceled.Load() {
		t.Fatal("a backup was canceled")
	}
	if v := testutil.ToFloat64(loop.m.triggers.WithLabelValues(SourceFinal)); v != 1 {
		t.Errorf("lifeboat_backup_triggers_total{source=final} = %v", v)
	}
	if v := testutil.ToFloat64(loop.m.result.WithLabelValues("success")); v != 2 {
		t.Errorf("lifeboat_backups_total{result=success} = %v", v)
	}
	if st := loop.Status(); st.Running || st.Backups != 2 || st.LastSnapshot != "snap-2" {
		t.Fatalf("status after final %+v", st)
	}
}

// TestFinalDeadline: when the running backup outlives Final's ctx, it is
// canceled, no final backup runs, and pending requests get the error.
func TestFinalDeadline(t *testing.T) {
	g := newGate()
	loop := New(Options{Run: g.run})
	loop.Start()
	loop.Trigger(Request{Source: SourceNotify})
	g.waitStart(t)
	pendingW := loop.Trigger(Request{Source: SourceNotify})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := loop.Final(ctx, "shutdown"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Final: %v", err)
	}
	if _, err := waitFor(t, pendingW); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("pending request: %v", err)
	}
	<-loop.done
	if n := g.n.Load(); n != 1 {
		t.Fatalf("%d backups ran, want only the canceled one", n)
	}
}

// TestFinalWithoutStart: a loop that never started still takes the final
// backup, and Stop on it returns at once.
func TestFinalWithoutStart(t *testing.T) {
	loop := New(Options{Run: func(ctx context.Context, b Batch) (string, error) {
		return "snap-final:" + strings.Join(b.Sources(), ","), nil
	}})
	w := loop.Trigger(Request{Source: SourceSignal})
	snap, err := loop.Final(context.Background(), "shutdown")
	if err != nil || snap != "snap-final:signal,final" {
		t.Fatalf("Final: %q %v", snap, err)
	}
	if s, err := waitFor(t, w); s != snap || err != nil {
		t.Fatalf("request before Final: %q %v", s, err)
	}
	if err := New(Options{Run: func(context.Context, Batch) (string, error) { return "", nil }}).Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestSkippedIsNoFailure: a backup Run declines on purpose (ErrSkipped,
// e.g. a node that is no longer the leader) answers its waiter with the
// error but counts no failure and schedules no retry.
func TestSkippedIsNoFailure(t *testing.T) {
	var runs atomic.Int32
	loop := New(Options{RetryInitial: 10 * time.Millisecond, Run: func(ctx context.Context, b Batch) (string, error) {
		runs.Add(1)
		return "", fmt.Errorf("not the leader: %w", ErrSkipped)
	}})
	loop.Start()
	defer loop.Stop(context.Background())
	if _, err := waitFor(t, loop.Trigger(Request{Source: SourceNotify})); !errors.Is(err, ErrSkipped) {
		t.Fatalf("waiter got %v, want ErrSkipped", err)
	}
	// Long enough for several retries at 10ms if it were a failure.
	deadline := time.Now().Add(200 * time.Millisecond)
	for time.Now().Before(deadline) {
		if runs.Load() > 1 {
			t.Fatalf("a skipped backup was retried (%d runs)", runs.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if st := loop.Status(); st.Failures != 0 || st.ConsecutiveFailures != 0 || st.LastError != "" || st.NextRetry != "" {
		t.Fatalf("status after a skip: %+v", st)
	}
}

// Package trigger feeds backup requests from every source (notify over the
// control socket, a cron schedule, file-system activity, a signal) into one
// backup loop that runs at most one backup at a time and keeps at most one
// pending: requests that arrive while a backup runs are merged into the
// pending one, and every waiter gets the result of the backup that covered
// its request.
package trigger

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Sources of backup requests.
const (
	SourceNotify   = "notify"
	SourceSchedule = "schedule"
	SourceWatch    = "watch"
	SourceSignal   = "signal"
	SourceRetry    = "retry"
	SourceFinal    = "final"
)

// ErrStopped answers requests made after the loop stopped.
var ErrStopped = errors.New("the backup loop has stopped")

// ErrSkipped, wrapped in the error Run returns, says the backup was not
// taken on purpose (a node that is not the leader under only_leader): the
// waiters get the error, but it is no failure, so nothing is retried.
var ErrSkipped = errors.New("backup skipped")

// Request asks for a backup.
type Request struct {
	Source string
	Reason string
}

// Batch is the merged requests one backup covers.
type Batch struct {
	Requests []Request
}

// Sources lists the distinct sources in the batch, in arrival order.
func (b Batch) Sources() []string {
	var out []string
	seen := map[string]bool{}
	for _, r := range b.Requests {
		if !seen[r.Source] {
			seen[r.Source] = true
			out = append(out, r.Source)
		}
	}
	return out
}

// MaxReasons bounds Reasons: a storm of requests must not turn into an
// environment variable (LIFEBOAT_REASON) too long to exec a hook with.
const MaxReasons = 20

// Reasons lists the distinct non-empty reasons in the batch, in arrival
// order; past MaxReasons the rest is summed up as "... and N more".
func (b Batch) Reasons() []string {
	var out []string
	seen := map[string]bool{}
	more := 0
	for _, r := range b.Requests {
		if r.Reason == "" || seen[r.Reason] {
			continue
		}
		seen[r.Reason] = true
		if len(out) == MaxReasons {
			more++
			continue
		}
		out = append(out, r.Reason)
	}
	if more > 0 {
		out = append(out, fmt.Sprintf("... and %d more", more))
	}
	return out
}

// RunFunc takes one backup and returns its snapshot id.
type RunFunc func(ctx context.Context, b Batch) (snapshot string, err error)

// Options configure a Loop.
type Options struct {
	Run          RunFunc
	RetryInitial time.Duration // first wait after a failure; default 1s
	RetryMax     time.Duration // longest wait; default 5m
	Logger       *slog.Logger
	Registerer   prometheus.Registerer // nil: no metrics
}

// Status is the loop's state for `lifeboat status`.
type Status struct {
	Running             bool     `json:"running"`
	Pending             bool     `json:"pending"`
	PendingSources      []string `json:"pending_sources,omitempty"`
	LastSnapshot        string   `json:"last_snapshot,omitempty"`
	LastSuccess         string   `json:"last_success,omitempty"`
	LastDuration        string   `json:"last_duration,omitempty"`
	LastError           string   `json:"last_error,omitempty"`
	ConsecutiveFailures int      `json:"consecutive_failures"`
	NextRetry           string   `json:"next_retry,omitempty"`
	Backups             int      `json:"backups"`
	Failures            int      `json:"failures"`
}

// Waiter is a request's ticket: Wait returns the result of the backup that
// covered the request.
type Waiter struct {
	done     chan struct{}
	snapshot string
	err      error
}

// Wait blocks until the covering backup ends or ctx is done.
func (w *Waiter) Wait(ctx context.Context) (string, error) {
	select {
	case <-w.done:
		return w.snapshot, w.err
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

type pending struct {
	batch   Batch
	waiters []*Waiter
}

// Loop is the backup loop. Start it with Start, stop it with Stop or Final.
type Loop struct {
	opts Options
	log  *slog.Logger
	m    *loopMetrics

	mu        sync.Mutex
	pending   *pending
	running   bool
	stopping  bool
	status    Status
	notBefore time.Time // no backup before this (retry backoff)
	backoff   time.Duration

	started bool
	wake    chan struct{}
	quit    chan struct{} // closed by Stop or Final: the loop goroutine ends once idle
	done    chan struct{} // closed when the loop goroutine has ended
	// runCtx is what Run gets. Stop and Final do not cancel it: a running
	// backup may finish (it holds writes the final backup must not be the
	// first to see); only when their own ctx expires is it canceled.
	runCtx    context.Context
	cancelRun context.CancelFunc
}

// New creates a loop; Start runs it.
func New(opts Options) *Loop {
	if opts.RetryInitial <= 0 {
		opts.RetryInitial = time.Second
	}
	if opts.RetryMax < opts.RetryInitial {
		opts.RetryMax = max(5*time.Minute, opts.RetryInitial)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Loop{opts: opts, log: opts.Logger, m: newLoopMetrics(opts.Registerer),
		wake: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{}),
		runCtx: ctx, cancelRun: cancel}
}

// Start runs the loop until Stop or Final. Calls after the first, or after
// Stop or Final, do nothing.
func (l *Loop) Start() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.started || l.stopping {
		return
	}
	l.started = true
	go l.run()
}

// Trigger asks for a backup; it never blocks. The waiter reports the
// result of the backup that covers this request: the pending one (a
// running backup may have started before the change the caller wants
// saved, so it never counts).
func (l *Loop) Trigger(req Request) *Waiter {
	w := &Waiter{done: make(chan struct{})}
	l.m.triggers.WithLabelValues(req.Source).Inc()
	l.mu.Lock()
	if l.stopping {
		l.mu.Unlock()
		w.err = ErrStopped
		close(w.done)
		return w
	}
	if l.pending == nil {
		l.pending = &pending{}
	}
	l.pending.batch.Requests = append(l.pending.batch.Requests, req)
	l.pending.waiters = append(l.pending.waiters, w)
	l.m.pending.Set(1)
	l.mu.Unlock()
	l.poke()
	return w
}

func (l *Loop) poke() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// Status returns the loop's state.
func (l *Loop) Status() Status {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.status
	st.Running = l.running
	st.Pending = l.pending != nil
	if l.pending != nil {
		st.PendingSources = l.pending.batch.Sources()
	}
	if !l.notBefore.IsZero() && time.Now().Before(l.notBefore) {
		st.NextRetry = l.notBefore.UTC().Format(time.RFC3339)
	}
	return st
}

func (l *Loop) run() {
	defer close(l.done)
	for {
		l.mu.Lock()
		wait := time.Until(l.notBefore)
		var p *pending
		if l.pending != nil && wait <= 0 {
			p, l.pending = l.pending, nil
			l.running = true
			l.m.pending.Set(0)
			l.m.running.Set(1)
		}
		l.mu.Unlock()
		if p == nil {
			var timer <-chan time.Time
			if wait > 0 {
				timer = time.After(wait)
			}
			select {
			case <-l.wake:
			case <-timer:
			case <-l.quit:
				return
			}
			continue
		}
		l.runBatch(l.runCtx, p)
	}
}

// runBatch runs one backup and answers its waiters.
func (l *Loop) runBatch(ctx context.Context, p *pending) (string, error) {
	t0 := time.Now()
	snap, err := l.opts.Run(ctx, p.batch)
	d := time.Since(t0)
	answer(p, snap, err)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.running = false
	l.m.running.Set(0)
	l.status.LastDuration = d.Round(time.Millisecond).String()
	if errors.Is(err, ErrSkipped) {
		l.log.Info("backup skipped", "reason", err, "sources", p.batch.Sources())
		return snap, err
	}
	if err != nil {
		l.status.Failures++
		l.status.ConsecutiveFailures++
		l.status.LastError = err.Error()
		if l.backoff == 0 {
			l.backoff = l.opts.RetryInitial
		} else {
			l.backoff = min(2*l.backoff, l.opts.RetryMax)
		}
		l.notBefore = time.Now().Add(l.backoff)
		l.m.result.WithLabelValues("failure").Inc()
		l.m.failures.Set(float64(l.status.ConsecutiveFailures))
		if l.stopping {
			l.log.Error("backup failed", "error", err, "sources", p.batch.Sources(), "consecutive_failures", l.status.ConsecutiveFailures)
			return snap, err
		}
		l.log.Error("backup failed; will retry", "error", err, "sources", p.batch.Sources(), "retry_in", l.backoff, "consecutive_failures", l.status.ConsecutiveFailures)
		// The failure is retried even if nothing else asks for a backup.
		if l.pending == nil {
			l.pending = &pending{}
			l.m.pending.Set(1)
		}
		l.pending.batch.Requests = append(l.pending.batch.Requests, Request{Source: SourceRetry})
		return snap, err
	}
	l.status.Backups++
	l.status.ConsecutiveFailures = 0
	l.status.LastError = ""
	l.status.LastSnapshot = snap
	l.status.LastSuccess = time.Now().UTC().Format(time.RFC3339)
	l.backoff, l.notBefore = 0, time.Time{}
	l.m.result.WithLabelValues("success").Inc()
	l.m.failures.Set(0)
	l.m.lastSuccess.SetToCurrentTime()
	l.m.duration.Set(d.Seconds())
	return snap, nil
}

// Stop stops accepting requests and answers the pending ones with
// ErrStopped at once. A backup that is running may finish: Stop waits for
// it until ctx is done, then cancels it (Run's context) and returns an
// error without waiting further. Stop after Stop or Final does nothing.
func (l *Loop) Stop(ctx context.Context) error {
	p, started, first := l.beginStop()
	if !first {
		return nil
	}
	defer l.cancelRun()
	answer(p, "", ErrStopped)
	if !started {
		return nil
	}
	select {
	case <-l.done:
		return nil
	case <-ctx.Done():
		l.cancelRun()
		return fmt.Errorf("a backup was still running at stop and was canceled: %w", ctx.Err())
	}
}

// Final stops the loop and then takes one last backup covering every
// pending request (the shutdown backup), bounded by ctx. A backup still
// running is allowed to finish first; the final one always starts after
// it, so it sees the app's last writes. When ctx ends before the running
// backup does, that one is canceled, no final backup is taken, and the
// pending requests get the error. Final after Stop or Final returns
// ErrStopped.
func (l *Loop) Final(ctx context.Context, reason string) (string, error) {
	p, started, first := l.beginStop()
	if !first {
		return "", ErrStopped
	}
	defer l.cancelRun()
	if started {
		select {
		case <-l.done:
		case <-ctx.Done():
			l.cancelRun()
			err := fmt.Errorf("final backup: a running backup did not finish in time: %w", ctx.Err())
			answer(p, "", err)
			return "", err
		}
	}
	if p == nil {
		p = &pending{}
	}
	p.batch.Requests = append(p.batch.Requests, Request{Source: SourceFinal, Reason: reason})
	l.m.triggers.WithLabelValues(SourceFinal).Inc()
	l.mu.Lock()
	l.running = true
	l.m.running.Set(1)
	l.mu.Unlock()
	return l.runBatch(ctx, p)
}

// beginStop refuses new requests, takes the pending ones and tells the
// loop goroutine to end; first is false when the loop was stopped before.
func (l *Loop) beginStop() (p *pending, started, first bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopping {
		return nil, false, false
	}
	l.stopping = true
	p, l.pending = l.pending, nil
	l.m.pending.Set(0)
	close(l.quit)
	return p, l.started, true
}

// answer gives every waiter of p the result.
func answer(p *pending, snapshot string, err error) {
	if p == nil {
		return
	}
	for _, w := range p.waiters {
		w.snapshot, w.err = snapshot, err
		close(w.done)
	}
}

type loopMetrics struct {
	triggers    *prometheus.CounterVec
	result      *prometheus.CounterVec
	pending     prometheus.Gauge
	running     prometheus.Gauge
	failures    prometheus.Gauge
	lastSuccess prometheus.Gauge
	duration    prometheus.Gauge
}

func newLoopMetrics(reg prometheus.Registerer) *loopMetrics {
	m := &loopMetrics{
		triggers: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lifeboat_backup_triggers_total",
			Help: "Backup requests by source (notify, schedule, watch, signal, retry, final)."}, []string{"source"}),
		result: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lifeboat_backups_total",
			Help: "Backups taken, by result (success, failure)."}, []string{"result"}),
		pending:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "lifeboat_backup_pending", Help: "1 while a backup request waits to run."}),
		running:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "lifeboat_backup_running", Help: "1 while a backup runs."}),
		failures:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "lifeboat_backup_consecutive_failures", Help: "Backups failed in a row; 0 after a success."}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{Name: "lifeboat_backup_last_success_timestamp_seconds", Help: "Unix time of the last successful backup."}),
		duration:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "lifeboat_backup_last_duration_seconds", Help: "How long the last successful backup took."}),
	}
	if reg != nil {
		reg.MustRegister(m.triggers, m.result, m.pending, m.running, m.failures, m.lastSuccess, m.duration)
	}
	return m
}

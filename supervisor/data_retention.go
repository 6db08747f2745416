package supervisor

// Retention and garbage collection after successful backups: the
// backup.keep policy forgets old snapshots and prune deletes what nothing
// references. It runs in the background so it never delays a trigger, and
// it gives way to the next backup: prune takes the repository's exclusive
// lease, and a backup waiting for it would stretch the RPO. Prune is safe
// to interrupt at any point (it deletes manifests first, packs last), and
// runs again after the next successful backup.

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/lifeboat/lifeboat/supervisor/config"
	"github.com/lifeboat/lifeboat/supervisor/snapshot"
)

// RetentionStatus is the retention part of `lifeboat status`.
type RetentionStatus struct {
	Policy       string `json:"policy"` // "keep everything" when backup.keep is empty
	Running      bool   `json:"running"`
	LastRun      string `json:"last_run,omitempty"`
	LastDuration string `json:"last_duration,omitempty"`
	LastError    string `json:"last_error,omitempty"`
	Forgotten    int    `json:"last_forgotten"`
	DeletedBytes int64  `json:"last_deleted_bytes"`
}

// retention runs prune in the background, one at a time.
type retention struct {
	mu      sync.Mutex
	cancel  context.CancelFunc // of the running prune; nil when none runs
	done    chan struct{}      // closed when the running prune has returned
	st      RetentionStatus
	stopped bool
}

// KeepPolicy is backup.keep as the snapshot engine's policy, for the
// retention after backups and for lifeboat prune alike.
func KeepPolicy(b *config.Backup) snapshot.KeepPolicy {
	k := b.Keep
	return snapshot.KeepPolicy{Last: k.Last, Hourly: k.Hourly, Daily: k.Daily, Weekly: k.Weekly, Monthly: k.Monthly, Yearly: k.Yearly}
}

// kick starts a prune after a successful backup unless one runs already or
// the policy keeps everything.
func (r *retention) kick(s *Supervisor) {
	policy := KeepPolicy(s.cfg.Backup)
	if policy.Empty() {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cancel != nil || r.stopped {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel, r.done = cancel, make(chan struct{})
	r.st.Running = true
	done := r.done
	go func() {
		defer close(done)
		t0 := time.Now()
		res, err := snapshot.Prune(ctx, s.data.repo, policy, snapshot.PruneOptions{})
		r.mu.Lock()
		defer r.mu.Unlock()
		r.cancel = nil
		r.st.Running = false
		r.st.LastRun = t0.UTC().Format(time.RFC3339)
		r.st.LastDuration = time.Since(t0).Round(time.Millisecond).String()
		switch {
		case err != nil && ctx.Err() != nil:
			// Gave way to a backup or to shutdown: not a failure.
			r.st.LastError = ""
			s.data.m.retention.WithLabelValues("interrupted").Inc()
			s.log.Debug("retention interrupted; it runs again after the next backup")
		case err != nil:
			r.st.LastError = err.Error()
			s.data.m.retention.WithLabelValues("failure").Inc()
			if errors.Is(err, snapshot.ErrLocked) {
				s.log.Info("retention skipped: another writer holds the repository; it runs again after the next backup", "error", err)
			} else {
				s.log.Warn("retention failed; it runs again after the next backup", "error", err)
			}
		default:
			r.st.LastError = ""
			r.st.Forgotten, r.st.DeletedBytes = len(res.Forgotten), res.BytesDeleted
			s.data.m.retention.WithLabelValues("success").Inc()
			s.data.m.forgotten.Add(float64(len(res.Forgotten)))
			s.data.m.deletedBytes.Add(float64(res.BytesDeleted))
			if len(res.Forgotten) > 0 || res.PacksDeleted > 0 {
				s.log.Info("retention done", "policy", policy.String(), "forgotten", len(res.Forgotten), "kept", res.Kept,
					"packs_deleted", res.PacksDeleted, "bytes_deleted", res.BytesDeleted, "duration", r.st.LastDuration)
			}
		}
	}()
}

// pause interrupts a running prune and waits for it to return, so the
// backup about to start can take its lease at once.
func (r *retention) pause() {
	r.mu.Lock()
	cancel, done := r.cancel, r.done
	r.mu.Unlock()
	if cancel == nil {
		return
	}
	cancel()
	<-done
}

// stop ends retention for good; a running prune is interrupted (it is
// safe to interrupt) so shutdown is not held up by garbage collection.
func (r *retention) stop() {
	r.mu.Lock()
	r.stopped = true
	r.mu.Unlock()
	r.pause()
}

func (r *retention) status(policy snapshot.KeepPolicy) RetentionStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.st
	st.Policy = "keep everything"
	if !policy.Empty() {
		st.Policy = policy.String()
	}
	return st
}

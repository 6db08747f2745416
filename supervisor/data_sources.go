package supervisor

// The backup loop's sources besides notify: a signal to lifeboat
// (backup.signal), a schedule (backup.schedule) and file-system activity in
// the data directory (backup.watch).

import (
	"context"
	"time"

	"github.com/lifeboat/lifeboat/supervisor/config"
	"github.com/lifeboat/lifeboat/supervisor/trigger"
	"golang.org/x/sys/unix"
)

// backupSignal handles backup.signal: it reports whether sig is the
// configured backup signal (then it is not forwarded to the app).
func (s *Supervisor) backupSignal(sig unix.Signal) bool {
	if !s.data.enabled || s.cfg.Backup.Signal == "" {
		return false
	}
	want, err := config.ParseSignal(s.cfg.Backup.Signal)
	if err != nil || want != sig {
		return false
	}
	if s.triggerBackup(trigger.SourceSignal, "signal "+unix.SignalName(sig)) == nil {
		s.log.Info("backup signal ignored: backups are not running here", "signal", unix.SignalName(sig))
	}
	return true
}

// gate hands requests of the schedule and the watch to the loop, unless
// this node must leave backups to the leader (backup.only_leader).
type gate struct{ s *Supervisor }

func (g gate) Trigger(req trigger.Request) *trigger.Waiter {
	w := g.s.triggerBackup(req.Source, req.Reason)
	if w == nil {
		g.s.log.Debug("backup request ignored: this node does not take backups now", "source", req.Source)
	}
	return w
}

// SourcesStatus is what the schedule and the watch are doing.
type SourcesStatus struct {
	Schedule     string `json:"schedule,omitempty"`
	NextSchedule string `json:"next_schedule,omitempty"`
	WatchDirs    int    `json:"watch_dirs,omitempty"` // directories watched, with backup.watch
}

// startBackupSources starts the schedule and the watch. A source that
// cannot start (e.g. the inotify limit is reached) is logged and left out:
// the app is already running, and notify and the final backup still work.
func (s *Supervisor) startBackupSources() {
	b := s.cfg.Backup
	ctx := context.Background()
	if b.Schedule != "" {
		sc, err := trigger.Schedule(ctx, b.Schedule, gate{s}, s.log)
		if err != nil {
			s.log.Error("backup.schedule not started", "schedule", b.Schedule, "error", err)
		} else {
			s.mu.Lock()
			s.data.schedule = sc
			s.mu.Unlock()
		}
	}
	if w := b.Watch; w != nil && w.Enabled != nil && *w.Enabled {
		wt, err := trigger.Watch(ctx, trigger.WatchOptions{Dir: s.cfg.Data.Path, Exclude: s.cfg.Data.Exclude,
			Debounce: config.Dur(w.Debounce), MaxDelay: config.Dur(w.MaxDelay), Logger: s.log}, gate{s})
		if err != nil {
			s.log.Error("backup.watch not started; backups on notify, schedule and at shutdown go on", "error", err)
		} else {
			s.mu.Lock()
			s.data.watch = wt
			s.mu.Unlock()
		}
	}
}

// sourcesStatus is the schedule and watch part of the status; s.mu held.
func (s *Supervisor) sourcesStatus() *SourcesStatus {
	if s.data.schedule == nil && s.data.watch == nil {
		return nil
	}
	st := &SourcesStatus{}
	if sc := s.data.schedule; sc != nil {
		st.Schedule = sc.Spec()
		if next := sc.Next(); !next.IsZero() {
			st.NextSchedule = next.UTC().Format(time.RFC3339)
		}
	}
	if w := s.data.watch; w != nil {
		st.WatchDirs = w.Dirs()
	}
	return st
}

package supervisor

// The data lifecycle: the store and snapshot repository, the restore phase
// before the app starts, the backup loop while it runs (notify, signal,
// schedule, watch), and the final backup at shutdown. The snapshot engine
// and the trigger loop know nothing of each other; this file joins them
// and maps the data, store and backup blocks to their options.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/lifeboat/lifeboat/hooks"
	"github.com/lifeboat/lifeboat/supervisor/config"
	"github.com/lifeboat/lifeboat/supervisor/control"
	"github.com/lifeboat/lifeboat/supervisor/process"
	"github.com/lifeboat/lifeboat/supervisor/snapshot"
	"github.com/lifeboat/lifeboat/supervisor/storage"
	"github.com/lifeboat/lifeboat/supervisor/trigger"
)

// EnvEncryptionKey holds the repository key; it wins over
// store.encryption_key and store.encryption_key_file.
const EnvEncryptionKey = "LIFEBOAT_ENCRYPTION_KEY"

// Tuning of the data lifecycle.
const (
	// DefaultTransferConcurrency bounds parallel uploads and downloads.
	DefaultTransferConcurrency = 8
	// storeOpenTimeout bounds opening the store and the repository before
	// the restore, retries included; the restore itself is bounded only by
	// a stop request.
	storeOpenTimeout = 2 * time.Minute
	// Backoff between attempts to open an unreachable store.
	storeRetryInitial = 500 * time.Millisecond
	storeRetryMax     = 10 * time.Second
)

// Restore outcomes shown in status.
const (
	RestoreRestored = "restored" // a snapshot was restored
	RestoreFresh    = "fresh"    // no snapshot yet: started empty (init hook ran)
	RestoreKept     = "kept"     // the data dir holds data and restore = if-empty
	RestoreSkipped  = "skipped"  // restore = never
	RestoreFailed   = "failed"   // the app was not started
)

// errNotLeader answers backup requests on a node that must leave backups
// to the leader (backup.only_leader).
var errNotLeader = fmt.Errorf("%w: this node is not the leader and backup.only_leader is set", control.ErrRejected)

// dataPart holds the store, the repository and the backup loop.
type dataPart struct {
	enabled bool
	store   storage.Store
	repo    *snapshot.Repository
	loop    *trigger.Loop
	m       *dataMetrics

	// isLeader says whether this node takes backups when
	// backup.only_leader is set; nil means yes. The election part sets it.
	isLeader func() bool
	// fencingToken is the leader's fencing token stored in each snapshot;
	// nil means 0. The election part sets it.
	fencingToken func() uint64

	// backupCtx is what every backup runs under: it is cancelled only when
	// the final backup's time is up, so a SIGTERM never cuts a running
	// backup short (the loop's own stop would).
	backupCtx    context.Context
	backupCancel context.CancelFunc

	schedule *trigger.Scheduler // set under s.mu once started; stopped at shutdown
	watch    *trigger.Watcher

	// stopRequested is set when lifeboat was asked to stop (SIGTERM,
	// SIGINT): the app's exit status then says nothing about its data.
	stopRequested atomic.Bool

	retention retention

	restore *RestoreStatus // guarded by s.mu
	last    *BackupResult  // guarded by s.mu
}

// DataStatus is the data part of `lifeboat status`.
type DataStatus struct {
	Path      string          `json:"path"`
	Store     string          `json:"store"`
	Restore   *RestoreStatus  `json:"restore,omitempty"`
	Backup    *BackupStatus   `json:"backup,omitempty"`
	Sources   *SourcesStatus  `json:"sources,omitempty"`
	Retention RetentionStatus `json:"retention"`
}

// RestoreStatus is what the restore phase did.
type RestoreStatus struct {
	Mode     string   `json:"mode"`
	Outcome  string   `json:"outcome"`
	Snapshot string   `json:"snapshot,omitempty"`
	Time     string   `json:"snapshot_time,omitempty"`
	Files    int      `json:"files,omitempty"`
	Bytes    int64    `json:"bytes,omitempty"`
	Duration string   `json:"duration,omitempty"`
	Skipped  []string `json:"skipped_corrupt,omitempty"` // newer snapshots that failed verification
	Error    string   `json:"error,omitempty"`
}

// BackupStatus is the backup loop's state plus the last backup's numbers.
type BackupStatus struct {
	trigger.Status
	Last *BackupResult `json:"last,omitempty"`
}

// BackupResult describes the last successful backup.
type BackupResult struct {
	Snapshot    string   `json:"snapshot"`
	Time        string   `json:"time"`
	Sources     []string `json:"sources"`
	Duration    string   `json:"duration"`
	Files       int      `json:"files"`
	Bytes       int64    `json:"bytes"`
	NewBytes    int64    `json:"new_bytes"`
	StoredBytes int64    `json:"stored_bytes"`
}

// dataEnabled reports whether lifeboat manages the data directory: a store
// was chosen (store.url, --store or LIFEBOAT_STORE other than the built-in
// default), or the default store directory exists (a mounted volume).
// Without one, lifeboat is a plain init and never touches data.path.
func (s *Supervisor) dataEnabled() bool {
	if s.cfg.Store == nil || s.cfg.Data == nil {
		return false
	}
	if s.cfg.Store.URL != config.DefaultStoreURL {
		return true
	}
	fi, err := os.Stat(strings.TrimPrefix(config.DefaultStoreURL, "file://"))
	return err == nil && fi.IsDir()
}

// openData opens the store and the repository (created on first use),
// retrying with backoff for up to storeOpenTimeout while the store cannot
// be reached: an object store restarting beside the app must not make the
// container crash-loop. Config mistakes and a wrong key fail at once.
func (s *Supervisor) openData(ctx context.Context) error {
	key, err := EncryptionKey(s.cfg.Store)
	if err != nil {
		return usageError{err}
	}
	ctx, cancel := context.WithTimeout(ctx, storeOpenTimeout)
	defer cancel()
	err = retryUntil(ctx, s.log, "cannot open the store; retrying", storeRetryInitial, storeRetryMax,
		func(err error) bool { return !retryableOpen(err) },
		func() error { return s.openDataOnce(ctx, key) })
	if err != nil && retryableOpen(err) {
		return fmt.Errorf("gave up after %s: %w", storeOpenTimeout, err)
	}
	return err
}

// retryUntil calls try until it returns nil or an error final accepts, or
// ctx ends (then try's last error is returned), waiting between attempts
// from initial, doubling up to maxBackoff, and logging each failure with msg.
func retryUntil(ctx context.Context, log *slog.Logger, msg string, initial, maxBackoff time.Duration, final func(error) bool, try func() error) error {
	backoff := initial
	for {
		err := try()
		if err == nil || final(err) || ctx.Err() != nil {
			return err
		}
		log.Warn(msg, "error", err, "retry_in", backoff.String())
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// retryableOpen tells a store that may come back from a mistake that
// will not go away by waiting.
func retryableOpen(err error) bool {
	return !IsConfigError(err) && !errors.Is(err, snapshot.ErrCorrupt)
}

func (s *Supervisor) openDataOnce(ctx context.Context, key []byte) error {
	st := s.cfg.Store
	store, err := OpenStore(ctx, st)
	if err != nil {
		return err
	}
	repo, err := snapshot.Open(ctx, store, snapshot.Options{Key: key, Create: true, Logger: s.log,
		Starter: process.CodeStarter{Reaper: s.reaper}, Concurrency: DefaultTransferConcurrency})
	if err != nil {
		store.Close()
		err = fmt.Errorf("open repository in %s: %w", config.RedactURL(st.URL), err)
		if errors.Is(err, snapshot.ErrWrongKey) {
			return usageError{err} // the key in the settings, not the store
		}
		return err
	}
	s.mu.Lock()
	s.data.store, s.data.repo = store, repo
	s.mu.Unlock()
	return nil
}

// OpenStore opens the store block's store, for lifeboat run and the
// snapshot commands alike. A mistake in the settings (IsConfigError) is
// told apart from a store that cannot be reached.
func OpenStore(ctx context.Context, st *config.Store) (storage.Store, error) {
	store, err := storage.Open(ctx, st.URL, storeOptions(st))
	if err != nil {
		err = fmt.Errorf("open store %s: %w", config.RedactURL(st.URL), err)
		if storage.IsConfigError(err) {
			return nil, usageError{err}
		}
		return nil, err
	}
	return store, nil
}

// storeOptions maps the store block to the backend's options.
func storeOptions(st *config.Store) storage.Options {
	return storage.Options{
		AccessKey: st.AccessKey, SecretKey: st.SecretKey, SessionToken: st.SessionToken,
		Region: st.Region, CAFile: st.CAFile, PathStyle: st.PathStyle,
		CreateBucket: st.CreateBucket != nil && *st.CreateBucket,
	}
}

// EncryptionKey is the repository key, the same for lifeboat run and the
// snapshot commands (the environment wins over the file, as everywhere in
// lifeboat): LIFEBOAT_ENCRYPTION_KEY, store.encryption_key (possibly from
// Vault), or the file store.encryption_key_file names, one trailing
// newline dropped (`echo KEY > file` must give the same key as KEY). nil
// means an unencrypted repository. Every error is a config mistake.
func EncryptionKey(st *config.Store) ([]byte, error) {
	switch {
	case os.Getenv(EnvEncryptionKey) != "":
		return []byte(os.Getenv(EnvEncryptionKey)), nil
	case st.EncryptionKey != "":
		return []byte(st.EncryptionKey), nil
	case st.EncryptionKeyFile != "":
		b, err := os.ReadFile(st.EncryptionKeyFile)
		if err != nil {
			return nil, fmt.Errorf("store.encryption_key_file: %w", err)
		}
		k := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
		if k == "" {
			return nil, fmt.Errorf("store.encryption_key_file %s is empty", st.EncryptionKeyFile)
		}
		return []byte(k), nil
	}
	return nil, nil
}

// restoreIgnore names entries of the data dir that are lifeboat's own and
// neither count against "empty" nor are removed by a restore.
var restoreIgnore = []string{control.DataDirSocketName}

// restoreData is the restore phase: open the store and bring the data
// directory to the state data.restore asks for. A non-nil error means the
// app must not start.
func (s *Supervisor) restoreData(ctx context.Context) error {
	if !s.dataEnabled() {
		return nil
	}
	m := newDataMetrics(s.registry)
	s.mu.Lock() // the control socket reads them already
	s.data.enabled, s.data.m = true, m
	s.mu.Unlock()
	done := s.phaseStart(PhaseRestore)
	st, err := s.restore(ctx)
	if err != nil {
		st.Outcome, st.Error = RestoreFailed, err.Error()
	}
	s.mu.Lock()
	s.data.restore = st
	s.mu.Unlock()
	done(err)
	return err
}

func (s *Supervisor) restore(ctx context.Context) (*RestoreStatus, error) {
	d := s.cfg.Data
	st := &RestoreStatus{Mode: d.Restore}
	if err := s.openData(ctx); err != nil {
		return st, err
	}
	dir := d.Path
	incomplete := snapshot.RestoreIncomplete(dir)
	switch d.Restore {
	case "never":
		if incomplete {
			return st, fmt.Errorf("data directory %s holds an interrupted restore (%s) and data.restore = never: remove its contents or set data.restore = if-empty", dir, snapshot.RestoringMarker)
		}
		st.Outcome = RestoreSkipped
		s.log.Info("restore skipped: data.restore = never", "data", dir)
		return st, os.MkdirAll(dir, 0o700)
	case "if-empty":
		if !incomplete {
			empty, err := snapshot.DirIsEmpty(dir, restoreIgnore...)
			if err != nil {
				return st, fmt.Errorf("data directory %s: %w", dir, err)
			}
			if !empty {
				st.Outcome = RestoreKept
				if id, ok := snapshot.RestoredFrom(dir); ok {
					st.Snapshot = id
				}
				s.log.Info("data directory holds data; not restoring (data.restore = if-empty)", "data", dir)
				return st, nil
			}
		}
	}
	if incomplete {
		s.log.Warn("data directory holds an interrupted restore; wiping it and restoring again", "data", dir)
	}

	list, err := s.data.repo.Snapshots(ctx)
	if err != nil {
		return st, err
	}
	cands := snapshot.ByPreference(list)
	if len(cands) == 0 {
		return st, s.startFresh(ctx, dir, incomplete, st)
	}
	for i, m := range cands {
		res, err := s.restoreOne(ctx, m)
		if err == nil {
			st.Outcome = RestoreRestored
			st.Snapshot, st.Time = m.ID, m.Time.UTC().Format(time.RFC3339)
			st.Files, st.Bytes, st.Duration = res.Files, res.Bytes, res.Duration.Round(time.Millisecond).String()
			s.data.m.restoreBytes.Set(float64(res.Bytes))
			return st, nil
		}
		if !isCorrupt(err) || ctx.Err() != nil {
			return st, fmt.Errorf("restore snapshot %s into %s: %w", m.ID, dir, err)
		}
		s.data.m.restoreCorrupt.Inc()
		if s.cfg.Data.OnCorrupt == "fail" {
			s.log.Error("SNAPSHOT FAILED VERIFICATION: not starting the app (data.on_corrupt = fail)",
				"snapshot", m.ID, "snapshot_time", m.Time, "error", err)
			return st, fmt.Errorf("snapshot %s failed verification and data.on_corrupt = fail: %w; restore an older one with `lifeboat restore --snapshot ID`, or set data.on_corrupt = previous", m.ID, err)
		}
		st.Skipped = append(st.Skipped, m.ID)
		if i == len(cands)-1 {
			return st, fmt.Errorf("every snapshot in the store failed verification (newest %s): %w", cands[0].ID, err)
		}
		s.log.Error("SNAPSHOT FAILED VERIFICATION: falling back to the previous snapshot; data written after it is lost unless the bad snapshot is repaired",
			"snapshot", m.ID, "snapshot_time", m.Time, "previous", cands[i+1].ID, "previous_time", cands[i+1].Time, "error", err)
	}
	return st, errors.New("no snapshot could be restored") // not reached: the last candidate returns
}

// isCorrupt tells a snapshot that cannot be trusted (bad or missing
// objects) from a failure of the path to the store (network, credentials),
// which must never make lifeboat fall back to older data.
func isCorrupt(err error) bool {
	return errors.Is(err, snapshot.ErrCorrupt) || errors.Is(err, snapshot.ErrHostile) || errors.Is(err, storage.ErrNotExist)
}

// restoreOne restores m into the data dir with the restore hooks around
// it. The in-progress marker stays until post_restore has succeeded, so a
// crash in post_restore also counts as a half restore.
func (s *Supervisor) restoreOne(ctx context.Context, m *snapshot.Manifest) (*snapshot.RestoreResult, error) {
	dir := s.cfg.Data.Path
	vars := s.hookVars(hookPreRestore, "", m.ID)
	if _, err := s.runHook(ctx, hookPreRestore, vars, m.Meta); err != nil {
		return nil, err
	}
	sinks := map[string]snapshot.StreamSink{}
	for _, sc := range s.cfg.Backup.Streams {
		if len(sc.RestoreCommand) == 0 {
			continue
		}
		sinks[sc.Name] = snapshot.StreamSink{Command: sc.RestoreCommand, Dir: dir,
			Env: envList(s.hookVars("restore", "", m.ID), m.Meta)}
	}
	s.log.Info("restoring", "snapshot", m.ID, "snapshot_time", m.Time, "data", dir)
	postRestore := s.hook(hookPostRestore) != nil
	res, err := s.data.repo.Restore(ctx, snapshot.RestoreRequest{Manifest: m, Target: dir, Force: true,
		Ignore: restoreIgnore, Streams: sinks, Unfinished: postRestore})
	if err != nil {
		return nil, err
	}
	if postRestore {
		// Opened before the hook writes, so that a disk error under its
		// writes cannot go unreported (see snapshot.Finisher).
		fin, err := snapshot.NewFinisher(dir)
		if err != nil {
			return nil, fmt.Errorf("finish the restore: %w", err)
		}
		defer fin.Close()
		if _, err := s.runHook(ctx, hookPostRestore, s.hookVars(hookPostRestore, "", m.ID), m.Meta); err != nil {
			return nil, err
		}
		if err := fin.Finish(); err != nil {
			return nil, fmt.Errorf("finish the restore after post_restore: %w", err)
		}
	}
	s.log.Info("restored", "snapshot", m.ID, "files", res.Files, "bytes", res.Bytes, "duration", res.Duration.Round(time.Millisecond).String())
	return res, nil
}

// startFresh handles an empty store: the init hook prepares a new data dir.
func (s *Supervisor) startFresh(ctx context.Context, dir string, incomplete bool, st *RestoreStatus) error {
	st.Outcome = RestoreFresh
	if incomplete {
		// The snapshot it came from is gone; what is there is half of it.
		if err := snapshot.ClearDir(dir, restoreIgnore...); err != nil {
			return fmt.Errorf("clear interrupted restore in %s: %w", dir, err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create data directory: %w", err)
	}
	s.log.Info("no snapshot in the store: starting fresh", "data", dir, "store", config.RedactURL(s.cfg.Store.URL))
	_, err := s.runHook(ctx, hookInit, s.hookVars(hookInit, "", ""), nil)
	return err
}

// setBackupRole is the election's hook into the data lifecycle: isLeader
// says whether this node is the leader now (with backup.only_leader, only
// the leader takes backups, and the final backup runs only there);
// fencingToken is the current term's token, stored in every snapshot so a
// deposed leader's late snapshot never becomes the latest. Call it in the
// elect phase, before the restore; hooks then get LIFEBOAT_ROLE and
// LIFEBOAT_FENCING_TOKEN.
func (s *Supervisor) setBackupRole(isLeader func() bool, fencingToken func() uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.data.isLeader, s.data.fencingToken = isLeader, fencingToken
}

// backupAllowed reports whether this node takes backups now.
func (s *Supervisor) backupAllowed() bool {
	if !*s.cfg.Backup.OnlyLeader || s.data.isLeader == nil {
		return true
	}
	return s.data.isLeader()
}

// serveData starts the backup loop and its sources once the app runs.
func (s *Supervisor) serveData() {
	if !s.data.enabled {
		return
	}
	b := s.cfg.Backup
	s.data.backupCtx, s.data.backupCancel = context.WithCancel(context.Background())
	loop := trigger.New(trigger.Options{Run: s.runBackup, RetryInitial: config.Dur(b.Retry.Initial),
		RetryMax: config.Dur(b.Retry.Max), Logger: s.log, Registerer: s.registry})
	loop.Start()
	s.mu.Lock()
	s.data.loop = loop
	s.mu.Unlock()
	s.startBackupSources()
}

// triggerBackup asks the loop for a backup from source; nil when backups
// are off here.
func (s *Supervisor) triggerBackup(source, reason string) *trigger.Waiter {
	s.mu.Lock()
	loop := s.data.loop
	s.mu.Unlock()
	if loop == nil || !s.backupAllowed() {
		return nil
	}
	return loop.Trigger(trigger.Request{Source: source, Reason: reason})
}

// notifyBackup answers `lifeboat notify backup`.
func (s *Supervisor) notifyBackup(ctx context.Context, req control.NotifyRequest) (control.NotifyResponse, error) {
	resp := control.NotifyResponse{Event: "backup"}
	s.mu.Lock()
	enabled, loop, phase := s.data.enabled, s.data.loop, s.phase
	s.mu.Unlock()
	if !enabled {
		return resp, errNoBackups
	}
	if !*s.cfg.Backup.Notify {
		return resp, fmt.Errorf("%w: backup.notify = false in the config", control.ErrRejected)
	}
	if loop == nil {
		return resp, fmt.Errorf("%w: the app is not running yet (phase %s); backups start with it", control.ErrUnavailable, phase)
	}
	if !s.backupAllowed() {
		return resp, errNotLeader
	}
	running := loop.Status().Running
	w := loop.Trigger(trigger.Request{Source: trigger.SourceNotify, Reason: req.Reason})
	if !req.Wait {
		if running {
			resp.Message = "queued after the running backup"
		}
		return resp, nil
	}
	id, err := w.Wait(ctx)
	if err != nil {
		if errors.Is(err, trigger.ErrStopped) {
			return resp, fmt.Errorf("%w: lifeboat is shutting down; the final backup covers this request only when backup.final is set", control.ErrUnavailable)
		}
		return resp, fmt.Errorf("backup failed: %w", err)
	}
	resp.Snapshot = id
	return resp, nil
}

// runBackup is the loop's RunFunc: pre_backup, the snapshot (data dir and
// streams, with the hook's metadata), post_backup with the result, then
// retention in the background.
func (s *Supervisor) runBackup(_ context.Context, batch trigger.Batch) (string, error) {
	// Not the loop's ctx: stopping the loop must not cut a running backup
	// short; backupCtx ends only when the final backup's time is up.
	ctx := s.data.backupCtx
	if !s.backupAllowed() {
		// Declined, not failed: the loop must not retry it while this
		// node follows.
		return "", fmt.Errorf("%w (%w)", errNotLeader, trigger.ErrSkipped)
	}
	s.data.retention.pause() // prune's exclusive lease would refuse this backup
	meta, err := s.runHook(ctx, hookPreBackup, s.backupVars(hookPreBackup, batch), nil)
	var m *snapshot.Manifest
	if err == nil {
		m, err = s.takeSnapshot(ctx, batch, meta)
	}
	post := s.backupVars(hookPostBackup, batch)
	if err != nil {
		post[hooks.VarBackupError] = err.Error()
	} else {
		post[hooks.VarSnapshot] = m.ID
	}
	if _, perr := s.runHook(ctx, hookPostBackup, post, meta); perr != nil {
		// The snapshot is committed; a failing post_backup is reported,
		// not turned into a failed backup that would be retried.
		s.log.Warn("post_backup hook failed", "error", perr)
	}
	if err != nil {
		return "", err
	}
	s.data.retention.kick(s)
	return m.ID, nil
}

// takeSnapshot backs up the data dir and the configured streams.
func (s *Supervisor) takeSnapshot(ctx context.Context, batch trigger.Batch, meta map[string]string) (*snapshot.Manifest, error) {
	// The manifest's reason says what asked and why: "notify, schedule:
	// before migration".
	reason := strings.Join(batch.Sources(), ", ")
	if reasons := strings.Join(batch.Reasons(), "; "); reasons != "" {
		reason += ": " + reasons
	}
	b := s.cfg.Backup
	var streams []snapshot.StreamSource
	// Stream commands get the rendered env block like the app (a
	// mariadb-backup needs the password the app got from Vault).
	env := append(s.secretsEnv(), envList(s.backupVars("backup", batch), meta)...)
	for _, sc := range b.Streams {
		streams = append(streams, snapshot.StreamSource{Name: sc.Name, Command: sc.Command, Env: env})
	}
	host, _ := os.Hostname()
	var token uint64
	if s.data.fencingToken != nil {
		token = s.data.fencingToken()
	}
	t0 := time.Now()
	m, err := s.data.repo.Backup(ctx, snapshot.BackupRequest{Dir: s.cfg.Data.Path, Exclude: s.cfg.Data.Exclude,
		Streams: streams, Tags: b.Tags, Reason: reason, Host: host, Meta: meta, FencingToken: token})
	if err != nil {
		return nil, err
	}
	r := &BackupResult{Snapshot: m.ID, Time: m.Time.UTC().Format(time.RFC3339Nano), Sources: batch.Sources(),
		Duration: time.Since(t0).Round(time.Millisecond).String(), Files: m.Stats.Files, Bytes: m.Stats.Bytes,
		NewBytes: m.Stats.NewBytes, StoredBytes: m.Stats.StoredBytes}
	s.mu.Lock()
	s.data.last = r
	s.mu.Unlock()
	s.data.m.backupBytes.Set(float64(m.Stats.Bytes))
	s.data.m.newBytes.Add(float64(m.Stats.NewBytes))
	s.data.m.storedBytes.Add(float64(m.Stats.StoredBytes))
	return m, nil
}

// shutdownData ends the backup loop: the final backup when backup.final is
// set and the app stopped cleanly (exit 0, or stopped because lifeboat was
// asked to stop), bounded by backup.final_timeout. A backup running at
// that moment finishes first, so the final one sees the app's last writes.
func (s *Supervisor) shutdownData(exit process.Exit, startErr error) {
	s.mu.Lock()
	loop := s.data.loop
	s.mu.Unlock()
	if loop == nil {
		s.closeData()
		return
	}
	s.mu.Lock()
	schedule, watch := s.data.schedule, s.data.watch
	s.mu.Unlock()
	if schedule != nil {
		schedule.Stop()
	}
	if watch != nil {
		watch.Stop()
	}
	// No prune from here on: one the final backup started would only
	// take its exclusive lease and be cancelled, before the handover.
	s.data.retention.stop()
	b := s.cfg.Backup
	timeout := config.Dur(b.FinalTimeout)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	// Bound the backup that may be running as well as the final one.
	stopBound := context.AfterFunc(ctx, s.data.backupCancel)
	defer stopBound()

	clean := startErr == nil && (exit.Status() == 0 || s.data.stopRequested.Load())
	final := false
	switch {
	case !*b.Final:
	case !clean:
		s.log.Warn("no final backup: the app did not stop cleanly; the last snapshot stays the latest", "exit", exit.String())
	case !s.backupAllowed():
		s.log.Info("no final backup: this node is not the leader")
	default:
		final = true
	}
	if !final {
		if err := loop.Stop(ctx); err != nil {
			s.log.Warn("backup loop stop", "error", err)
		}
	} else {
		s.log.Info("final backup", "timeout", timeout.String())
		t0 := time.Now()
		id, err := finalWithin(ctx, loop)
		if err != nil {
			s.data.m.finalResult.WithLabelValues("failure").Inc()
			s.log.Error("final backup failed; the last writes since the previous snapshot are not in the store", "error", err, "duration", time.Since(t0).Round(time.Millisecond).String())
			if errors.Is(err, errFinalAbandoned) {
				// The abandoned backup may still hold the store.
				s.data.backupCancel()
				return
			}
		} else {
			s.data.m.finalResult.WithLabelValues("success").Inc()
			s.log.Info("final backup done", "snapshot", id, "duration", time.Since(t0).Round(time.Millisecond).String())
		}
	}
	s.data.backupCancel()
	s.closeData()
}

// errFinalAbandoned: the final backup did not return in time.
var errFinalAbandoned = errors.New("final backup abandoned")

// finalGrace is how long shutdown waits past backup.final_timeout for a
// cancelled backup to return before lifeboat exits without it.
const finalGrace = 3 * time.Second

// finalWithin runs the final backup and gives up finalGrace after ctx is
// done: cancellation stops a backup between reads, but a stream command
// that hangs without writing keeps its read blocked, and the exit must not
// wait for it. The abandoned backup ends with the process (commits are
// atomic: nothing half is left in the store).
func finalWithin(ctx context.Context, loop *trigger.Loop) (string, error) {
	type result struct {
		id  string
		err error
	}
	ch := make(chan result, 1)
	go func() { // owned by the process: it exits right after shutdown
		id, err := loop.Final(ctx, "shutdown")
		ch <- result{id, err}
	}()
	select {
	case r := <-ch:
		return r.id, r.err
	case <-ctx.Done():
	}
	t := time.NewTimer(finalGrace)
	defer t.Stop()
	select {
	case r := <-ch:
		return r.id, r.err
	case <-t.C:
		return "", fmt.Errorf("%w: still running %s after backup.final_timeout", errFinalAbandoned, finalGrace)
	}
}

// closeData closes the store.
func (s *Supervisor) closeData() {
	if s.data.store != nil {
		s.data.store.Close()
	}
}

// dataStatus is the status section; nil when the data lifecycle is off.
func (s *Supervisor) dataStatus() *DataStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.data.enabled {
		return nil
	}
	st := &DataStatus{Path: s.cfg.Data.Path, Store: config.RedactURL(s.cfg.Store.URL), Restore: s.data.restore,
		Retention: s.data.retention.status(KeepPolicy(s.cfg.Backup))}
	if s.data.loop != nil {
		st.Backup = &BackupStatus{Status: s.data.loop.Status(), Last: s.data.last}
	}
	st.Sources = s.sourcesStatus()
	return st
}

// hookVars is the LIFEBOAT_* environment of a data hook (phase is the
// hook's name or "backup"/"restore" for stream commands).
func (s *Supervisor) hookVars(phase, reason, snap string) map[string]string {
	if p, ok := hookPhase[phase]; ok {
		phase = p
	}
	v := map[string]string{
		hooks.VarPhase: phase,
		hooks.VarData:  s.cfg.Data.Path,
	}
	if s.data.isLeader != nil { // with an election only
		v[hooks.VarRole] = "follower"
		if s.data.isLeader() {
			v[hooks.VarRole] = "leader"
		}
	}
	if reason != "" {
		v[hooks.VarReason] = reason
	}
	if snap != "" {
		v[hooks.VarSnapshot] = snap
	}
	if s.data.fencingToken != nil {
		v[hooks.VarFencingToken] = strconv.FormatUint(s.data.fencingToken(), 10)
	}
	return v
}

// backupVars is hookVars for a backup of batch: the hooks and the stream
// commands get the same LIFEBOAT_TRIGGER and LIFEBOAT_REASON.
func (s *Supervisor) backupVars(phase string, batch trigger.Batch) map[string]string {
	v := s.hookVars(phase, strings.Join(batch.Reasons(), "; "), "")
	v[hooks.VarTrigger] = strings.Join(batch.Sources(), ",")
	return v
}

// envList flattens vars and metadata (as LIFEBOAT_META_KEY) for commands
// that take an environment list.
func envList(vars, meta map[string]string) []string {
	var out []string
	for k, v := range vars {
		out = append(out, k+"="+v)
	}
	for k, v := range meta {
		out = append(out, hooks.MetaEnvName(k)+"="+v)
	}
	return out
}

package trigger

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Defaults of WatchOptions; they match backup.watch's defaults.
const (
	// DefaultDebounce is the quiet period after the last change before a
	// backup is asked for.
	DefaultDebounce = time.Second
	// DefaultMaxDelay bounds how long a continuously busy directory waits:
	// a backup is asked for at the latest this long after the first change
	// not yet covered.
	DefaultMaxDelay = time.Minute
	// maxTrackedPaths bounds the set of changed paths kept for the reason.
	maxTrackedPaths = 1000
)

// ownFiles are lifeboat's own files in the data directory (restore
// markers, the control socket and its temporary names): changes to them are
// not the app's activity.
var ownFiles = []string{".lifeboat-*", ".lifeboat.sock", ".lifeboat.sock~", ".lb-*.sock"}

// WatchOptions configure Watch.
type WatchOptions struct {
	Dir string // the data directory; watched recursively
	// Exclude are globs (as data.exclude) matched against the path relative
	// to Dir and against its base name; changes there are ignored, and
	// matching directories are not watched.
	Exclude  []string
	Debounce time.Duration // 0: DefaultDebounce
	MaxDelay time.Duration // 0: DefaultMaxDelay
	Logger   *slog.Logger
}

// Watcher asks for a backup after file-system activity in a directory.
type Watcher struct {
	opts WatchOptions
	t    Triggerer
	log  *slog.Logger
	fsw  *fsnotify.Watcher

	stop    chan struct{}
	done    chan struct{}
	once    sync.Once
	stopCtx func() bool
}

// Watch watches opts.Dir and every directory below it (new ones as they
// appear) and asks t for a backup (Source "watch") once changes have been
// quiet for Debounce, or MaxDelay after the first change not yet covered,
// whichever comes first. It runs until ctx is done or Stop is called.
func Watch(ctx context.Context, opts WatchOptions, t Triggerer) (*Watcher, error) {
	if opts.Debounce <= 0 {
		opts.Debounce = DefaultDebounce
	}
	if opts.MaxDelay <= 0 {
		opts.MaxDelay = DefaultMaxDelay
	}
	if opts.MaxDelay < opts.Debounce {
		opts.MaxDelay = opts.Debounce
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", opts.Dir, err)
	}
	opts.Dir = dir
	for _, p := range opts.Exclude {
		if _, err := path.Match(p, ""); err != nil {
			return nil, fmt.Errorf("watch: exclude pattern %q: %w", p, err)
		}
	}
	fsw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", dir, err)
	}
	w := &Watcher{opts: opts, t: t, log: opts.Logger.With("source", SourceWatch), fsw: fsw,
		stop: make(chan struct{}), done: make(chan struct{})}
	if err := w.addTree(dir, nil); err != nil {
		fsw.Close()
		return nil, err
	}
	go w.run()
	w.stopCtx = context.AfterFunc(ctx, w.Stop)
	w.log.Info("watching the data directory for changes", "dir", dir, "dirs", w.Dirs(),
		"debounce", opts.Debounce, "max_delay", opts.MaxDelay)
	return w, nil
}

// Dirs is how many directories are watched.
func (w *Watcher) Dirs() int {
	return len(w.fsw.WatchList())
}

// Stop ends the watch; changes not yet asked for are dropped (the final
// backup covers them). Safe to call more than once.
func (w *Watcher) Stop() {
	w.once.Do(func() {
		if w.stopCtx != nil {
			w.stopCtx()
		}
		close(w.stop)
		<-w.done
		w.fsw.Close()
	})
}

// ignored reports whether rel (relative to Dir, slash-separated) is one of
// lifeboat's files, excluded, or inside an excluded directory or the
// volume's lost+found (fsck's, not the app's, and never backed up).
func (w *Watcher) ignored(rel string) bool {
	if rel == "." || rel == "" {
		return false
	}
	if rel == "lost+found" || strings.HasPrefix(rel, "lost+found/") {
		return true
	}
	for p := rel; p != "." && p != "/"; p = path.Dir(p) {
		base := path.Base(p)
		for _, g := range ownFiles {
			if ok, _ := path.Match(g, base); ok {
				return true
			}
		}
		for _, g := range w.opts.Exclude {
			if ok, _ := path.Match(g, p); ok {
				return true
			}
			if ok, _ := path.Match(g, base); ok {
				return true
			}
		}
	}
	return false
}

func (w *Watcher) rel(name string) (string, bool) {
	r, err := filepath.Rel(w.opts.Dir, name)
	if err != nil || r == ".." || strings.HasPrefix(r, "../") {
		return "", false
	}
	return filepath.ToSlash(r), true
}

// addTree watches root and every directory below it that is not excluded.
// Symlinks are not followed. A directory that vanished meanwhile is fine.
// found, when not nil, is told every path met below root: in a directory
// that just appeared, files may have been written before its watch was
// added, and they are changes too.
func (w *Watcher) addTree(root string, found func(rel string)) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && p != w.opts.Dir {
				return nil
			}
			return fmt.Errorf("watch %s: %w", p, err)
		}
		rel, ok := w.rel(p)
		if ok && w.ignored(rel) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if found != nil && ok && p != root {
			found(rel)
		}
		if !d.IsDir() {
			return nil
		}
		if err := w.fsw.Add(p); err != nil {
			if errors.Is(err, fs.ErrNotExist) && p != w.opts.Dir {
				return filepath.SkipDir
			}
			if errors.Is(err, syscall.ENOSPC) {
				return fmt.Errorf("watch %s: the inotify watch limit is reached; raise fs.inotify.max_user_watches on the host or exclude directories (data.exclude): %w", p, err)
			}
			return fmt.Errorf("watch %s: %w", p, err)
		}
		return nil
	})
}

// forgetTree drops the watches of a directory that was renamed or moved
// away: inotify would go on reporting its changes under the old name. If it
// moved within the tree, its Create event adds it again under the new one.
func (w *Watcher) forgetTree(old string) {
	prefix := old + string(filepath.Separator)
	for _, p := range w.fsw.WatchList() {
		if p == old || strings.HasPrefix(p, prefix) {
			_ = w.fsw.Remove(p)
		}
	}
}

// run collects changes and asks for a backup when they settle.
func (w *Watcher) run() {
	defer close(w.done)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var (
		first, last time.Time
		changed     = map[string]bool{}
		untracked   int
	)
	note := func(rel string) {
		now := time.Now()
		if first.IsZero() {
			first = now
		}
		last = now
		switch {
		case changed[rel]:
		case len(changed) < maxTrackedPaths:
			changed[rel] = true
		default:
			untracked++
		}
		fireAt := last.Add(w.opts.Debounce)
		if limit := first.Add(w.opts.MaxDelay); limit.Before(fireAt) {
			fireAt = limit
		}
		timer.Reset(time.Until(fireAt))
	}
	for {
		select {
		case <-w.stop:
			return
		case ev, ok := <-w.fsw.Events:
			if !ok {
				return
			}
			rel, ok := w.rel(ev.Name)
			if !ok || rel == "." || w.ignored(rel) {
				continue
			}
			if ev.Has(fsnotify.Rename) {
				w.forgetTree(ev.Name)
			}
			if ev.Has(fsnotify.Create) {
				if fi, err := os.Lstat(ev.Name); err == nil && fi.IsDir() {
					if err := w.addTree(ev.Name, note); err != nil {
						w.log.Warn("cannot watch a new directory; changes below it do not trigger backups", "error", err)
					}
				}
			}
			note(rel)
		case err, ok := <-w.fsw.Errors:
			if !ok {
				return
			}
			if errors.Is(err, fsnotify.ErrEventOverflow) {
				// Changes were lost: assume the worst, something changed.
				w.log.Warn("file-system event queue overflowed; asking for a backup anyway", "error", err)
				note("(event overflow)")
				continue
			}
			w.log.Warn("watch error", "error", err)
		case <-timer.C:
			if first.IsZero() {
				continue
			}
			reason := describeChanges(changed, untracked)
			w.log.Info("data directory changed; asking for a backup", "reason", reason,
				"waited", time.Since(first).Round(time.Millisecond))
			w.t.Trigger(Request{Source: SourceWatch, Reason: reason})
			first, last, untracked = time.Time{}, time.Time{}, 0
			clear(changed)
		}
	}
}

// describeChanges is a short reason: how many paths changed and a few of
// them.
func describeChanges(changed map[string]bool, untracked int) string {
	n := len(changed) + untracked
	names := make([]string, 0, len(changed))
	for p := range changed {
		names = append(names, p)
	}
	sort.Strings(names)
	more := ""
	if len(names) > 3 {
		names, more = names[:3], ", ..."
	}
	noun := "paths"
	if n == 1 {
		noun = "path"
	}
	return fmt.Sprintf("%d %s changed: %s%s", n, noun, strings.Join(names, ", "), more)
}

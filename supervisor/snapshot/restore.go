package snapshot

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// StreamSink receives a stream at restore: piped into Command's stdin, or
// written to Writer.
type StreamSink struct {
	Command []string
	Env     []string
	Dir     string
	Writer  io.Writer
}

// RestoreRequest describes one restore.
type RestoreRequest struct {
	Snapshot string    // "latest" (or ""), an id or an id prefix
	Manifest *Manifest // instead of Snapshot
	Tree     *Tree     // Manifest's tree when the caller has read it already; nil reads it
	Target   string    // directory to restore into; "" restores streams only
	// Force restores into a non-empty target by first removing everything
	// in it (the directory itself stays: it may be a mount point).
	Force bool
	// Ignore names entries of the target that do not count against "empty"
	// and are left alone by Force (lost+found is always ignored).
	Ignore   []string
	Streams  map[string]StreamSink // streams without a sink are skipped
	Progress func(Progress)
	// Unfinished leaves RestoringMarker in place after the data and
	// RestoredMarker are on disk: the caller has more to do before the
	// directory may be used (a post_restore hook) and ends the restore
	// with a Finisher.
	Unfinished bool
}

// RestoreResult reports a finished restore.
type RestoreResult struct {
	Manifest *Manifest
	Files    int
	Bytes    int64
	Duration time.Duration
}

// ErrNotEmpty means the restore target holds data and Force was not given.
var ErrNotEmpty = errors.New("restore target is not empty")

// ErrHostile means a manifest tried to write outside the target.
var ErrHostile = errors.New("snapshot refused: it would write outside the target")

// Restore writes a snapshot into req.Target. Every chunk is verified before
// it is written; RestoredMarker is written last, after the data is synced,
// and RestoringMarker marks a restore in progress, so a half restore is
// always recognisable.
func (r *Repository) Restore(ctx context.Context, req RestoreRequest) (*RestoreResult, error) {
	start := time.Now()
	m := req.Manifest
	if m == nil {
		var err error
		if m, err = r.FindSnapshot(ctx, req.Snapshot); err != nil {
			return nil, err
		}
	}
	tree := req.Tree
	if tree == nil {
		var err error
		if tree, err = r.ReadTree(ctx, m); err != nil {
			return nil, err
		}
	}
	if err := r.checkTree(tree); err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", m.ID, err)
	}
	res := &RestoreResult{Manifest: m}
	defer procsForWorkers(r.conc)()
	prog := startProgress(req.Progress)
	defer prog.finish()
	var fl *flusher
	if req.Target != "" {
		root, err := prepareTarget(req, m)
		if err != nil {
			return nil, err
		}
		if fl, err = startFlusher(root); err != nil {
			return nil, err
		}
		defer fl.close()
		if err := r.restoreTree(ctx, root, fl, tree, prog, res); err != nil {
			return nil, err
		}
	}
	for _, st := range tree.Streams {
		sink, ok := req.Streams[st.Name]
		if !ok {
			r.log.Info("stream not restored: no restore command for it", "stream", st.Name, "snapshot", m.ID)
			continue
		}
		if err := r.restoreStream(ctx, st, sink, prog); err != nil {
			return nil, fmt.Errorf("snapshot %s: stream %s: %w", m.ID, st.Name, err)
		}
		res.Bytes += st.Size
	}
	if req.Target != "" {
		if err := finishMarkers(fl, req.Target, m, !req.Unfinished); err != nil {
			return nil, err
		}
	}
	res.Duration = time.Since(start)
	return res, nil
}

// procsForWorkers gives the Go scheduler at least n processors (Ps) until
// the returned func restores the default, so that each of a restore's n
// download workers has one. A worker that blocks in a file system call
// (a create waiting for a directory block that the background syncfs is
// writing, a write waiting for the lock of a file another worker writes)
// keeps its P until the runtime's monitor takes it back, 20 µs to 10 ms
// later; with one P per core, the other workers' decompression and
// hashing wait meanwhile while the core idles. On 2 cores a 1 GiB restore
// idled 0.64 of its 3.4 core-seconds with 2 Ps and 0.43 with 8, and took
// 5% less time. GOMAXPROCS from the environment is left alone.
func procsForWorkers(n int) (restore func()) {
	if set, err := strconv.Atoi(os.Getenv("GOMAXPROCS")); err == nil && set > 0 {
		return func() {} // as the runtime reads it
	}
	procs.Lock()
	defer procs.Unlock()
	procs.running++
	if runtime.GOMAXPROCS(0) < n {
		runtime.GOMAXPROCS(n)
		procs.raised = true
	}
	return func() {
		procs.Lock()
		defer procs.Unlock()
		if procs.running--; procs.running == 0 && procs.raised {
			procs.raised = false
			runtime.SetDefaultGOMAXPROCS() // lifeboat sets it nowhere else
		}
	}
}

// procs counts the restores running, and whether one of them raised
// GOMAXPROCS.
var procs struct {
	sync.Mutex
	running int
	raised  bool
}

// checkTree refuses a tree that could write outside the target
// (checkPaths), and one that references chunks the repository does not
// have.
func (r *Repository) checkTree(t *Tree) error {
	if err := checkPaths(t); err != nil {
		return err
	}
	for _, e := range t.Entries {
		for _, id := range e.Chunks {
			if _, ok := r.lookup(id); !ok {
				return fmt.Errorf("%s references chunk %s, which the repository does not have: %w", e.Path, id, ErrCorrupt)
			}
		}
	}
	for _, st := range t.Streams {
		for _, id := range st.Chunks {
			if _, ok := r.lookup(id); !ok {
				return fmt.Errorf("stream %s references chunk %s, which the repository does not have: %w", st.Name, id, ErrCorrupt)
			}
		}
	}
	return nil
}

// checkPaths refuses a tree that could write outside the target: paths
// that are absolute, climb with "..", appear twice, or lie below anything
// but a directory entry before them (never through a symlink), hardlinks
// to anything but an earlier file, and kinds it does not know.
func checkPaths(t *Tree) error {
	seen := map[string]string{} // path -> kind
	for i, e := range t.Entries {
		if e.Path == "." {
			if i != 0 || e.Kind != KindDir {
				return fmt.Errorf("%w: misplaced root entry", ErrHostile)
			}
			continue
		}
		if !safeRelPath(e.Path) {
			return fmt.Errorf("%w: path %q", ErrHostile, e.Path)
		}
		if _, dup := seen[e.Path]; dup {
			return fmt.Errorf("%w: path %q appears twice", ErrHostile, e.Path)
		}
		if dir := path.Dir(e.Path); dir != "." && seen[dir] != KindDir {
			return fmt.Errorf("%w: %q is not inside a directory of the snapshot", ErrHostile, e.Path)
		}
		switch e.Kind {
		case KindDir, KindSymlink, KindFile:
		case KindHardlink:
			if seen[e.Target] != KindFile {
				return fmt.Errorf("%w: hardlink %q to %q, not an earlier file", ErrHostile, e.Path, e.Target)
			}
		default:
			return fmt.Errorf("%w: %q has unknown kind %q", ErrCorrupt, e.Path, e.Kind)
		}
		seen[e.Path] = e.Kind
	}
	return nil
}

func safeRelPath(p string) bool {
	if p == "" || strings.HasPrefix(p, "/") || strings.ContainsRune(p, 0) || strings.Contains(p, "\\") {
		return false
	}
	for _, el := range strings.Split(p, "/") {
		if el == "" || el == "." || el == ".." {
			return false
		}
	}
	return path.Clean(p) == p
}

// DirIsEmpty reports whether dir has no entries other than lost+found, the
// restore markers and the names in ignore. A missing dir is empty.
func DirIsEmpty(dir string, ignore ...string) (bool, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	for _, e := range ents {
		if !ignored(e.Name(), ignore) {
			return false, nil
		}
	}
	return true, nil
}

func ignored(name string, ignore []string) bool {
	if name == "lost+found" || name == RestoringMarker || name == RestoredMarker {
		return true
	}
	for _, i := range ignore {
		if name == i {
			return true
		}
	}
	return false
}

// RestoreIncomplete reports whether dir holds a restore that did not finish.
func RestoreIncomplete(dir string) bool {
	_, err := os.Lstat(filepath.Join(dir, RestoringMarker))
	return err == nil
}

// RestoredFrom returns the snapshot id a complete restore of dir came from.
func RestoredFrom(dir string) (string, bool) {
	b, err := os.ReadFile(filepath.Join(dir, RestoredMarker))
	if err != nil {
		return "", false
	}
	var mk struct{ Snapshot string }
	if json.Unmarshal(b, &mk) != nil || mk.Snapshot == "" {
		return "", false
	}
	return mk.Snapshot, true
}

// ClearDir removes everything in dir except lost+found and ignore, keeping
// dir itself (it may be a mount point).
func ClearDir(dir string, ignore ...string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if e.Name() == "lost+found" || (e.Name() != RestoringMarker && e.Name() != RestoredMarker && ignored(e.Name(), ignore)) {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

func writeMarker(p string, v any) error {
	b, _ := json.Marshal(v)
	f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// finishMarkers syncs the restored data (fl's last syncfs), then writes
// the completion marker and, when finish is set, removes the in-progress
// one.
func finishMarkers(fl *flusher, target string, m *Manifest, finish bool) error {
	if err := fl.sync(); err != nil {
		return fmt.Errorf("sync restored data: %w", err)
	}
	if err := writeMarker(filepath.Join(target, RestoredMarker), map[string]any{"snapshot": m.ID, "time": m.Time, "restored": time.Now().UTC()}); err != nil {
		return err
	}
	if finish {
		return markComplete(fl.dir, target)
	}
	return fl.dir.Sync()
}

// markComplete removes RestoringMarker from target, open as dir, and
// syncs the directory: from then on, the target counts as complete
// after a crash.
func markComplete(dir *os.File, target string) error {
	if err := os.Remove(filepath.Join(target, RestoringMarker)); err != nil {
		return err
	}
	return dir.Sync()
}

// flushEvery is how many bytes a restore writes between two of its
// background syncfs calls.
const flushEvery = 64 << 20

// flusher writes a restore's data to disk while the downloads go on: each
// time flushEvery bytes were written since its last syncfs began, it
// calls syncfs on the target's file system again, in the background. One
// syncfs writes the blocks of many files in a few large requests; the
// sync_file_range after each write that restore used before made one
// request per chunk and per small file, and that CPU, a seventh of the
// machine's during a restore, went to the download workers. The restore's
// last syncfs then waits for the last batch only. (syncfs writes out the
// whole file system, other writers' dirty data too; a restore runs before
// the app starts, and its last syncfs always did.)
//
// Its directory is opened before the first file is written, every syncfs
// goes through it, and the first error of a background one is kept: syncfs
// reports a writeback error once to each descriptor opened before the
// error was first reported, so the last syncfs is not told again, and one
// through a descriptor opened later would not be told at all.
type flusher struct {
	dir     *os.File
	written atomic.Int64
	kick    chan struct{}
	quit    func()        // ends run (once)
	done    chan struct{} // closed when run has returned
	err     error         // the first failed syncfs; read once done is closed
}

func startFlusher(dir string) (*flusher, error) {
	d, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	quit := make(chan struct{})
	f := &flusher{dir: d, kick: make(chan struct{}, 1), quit: sync.OnceFunc(func() { close(quit) }), done: make(chan struct{})}
	go f.run(quit)
	return f, nil
}

func (f *flusher) run(quit <-chan struct{}) {
	defer close(f.done)
	for {
		select {
		case <-quit:
			return
		case <-f.kick:
		}
		f.written.Store(0)
		if err := unix.Syncfs(int(f.dir.Fd())); err != nil && f.err == nil {
			f.err = err
		}
	}
}

// wrote counts n bytes written to the target.
func (f *flusher) wrote(n int) {
	if f.written.Add(int64(n)) >= flushEvery {
		select {
		case f.kick <- struct{}{}:
		default: // a syncfs is due already
		}
	}
}

// sync ends the background syncs and syncs the file system a last time.
// Its error is that of the first syncfs that failed.
func (f *flusher) sync() error {
	f.quit()
	<-f.done
	err := unix.Syncfs(int(f.dir.Fd()))
	if f.err != nil {
		err = f.err
	}
	return err
}

// close ends the background syncs and closes the directory once a
// syncfs still running has returned: a restore that failed or was
// cancelled does not wait for the disk.
func (f *flusher) close() {
	f.quit()
	go func() {
		<-f.done
		f.dir.Close()
	}()
}

// A Finisher ends a restore made with RestoreRequest.Unfinished. Open it
// before anything else writes to the target (a post_restore hook): its
// syncfs goes through the descriptor it opened, so a disk error under the
// hook's writes fails Finish even when somebody else's syncfs (another
// process on a shared file system) reported it first. syncfs tells an
// error only to descriptors opened before it was first reported.
type Finisher struct {
	target string
	dir    *os.File
}

// NewFinisher opens target for Finish.
func NewFinisher(target string) (*Finisher, error) {
	d, err := os.Open(target)
	if err != nil {
		return nil, err
	}
	return &Finisher{target: target, dir: d}, nil
}

// Finish syncs the target's file system, removes RestoringMarker and
// syncs the directory, so the target counts as complete after a crash
// only once this returned. It closes the Finisher.
func (f *Finisher) Finish() error {
	defer f.Close()
	if err := unix.Syncfs(int(f.dir.Fd())); err != nil {
		return fmt.Errorf("sync restored data: %w", err)
	}
	return markComplete(f.dir, f.target)
}

// Close releases a Finisher without finishing (the hook failed: the
// target stays a half restore).
func (f *Finisher) Close() {
	if f.dir != nil {
		f.dir.Close()
		f.dir = nil
	}
}

// target is one place a chunk's bytes go.
type target struct {
	file *outFile
	off  int64
}

// outFile is a regular file being restored. The download worker that
// writes its first chunk creates it (creating ten thousand files one after
// another before any download started was most of a restore's time); it
// stays open for its other chunks and is closed after its last. It is a
// raw descriptor, not an os.File: the runtime's poller registration and
// blocking-mode switches cost five system calls per file, as many as the
// file's own work; and its metadata is set through the descriptor, not
// by path.
type outFile struct {
	path      string
	entry     *Entry
	owners    bool // restore ownership (running as root)
	flush     *flusher
	once      sync.Once
	fd        int // -1 until open succeeded
	err       error
	holes     atomic.Bool  // an all-zero chunk was skipped, not written
	remaining atomic.Int64 // chunk writes still to come
}

// open creates the file (once), exclusively and never through a symlink.
func (o *outFile) open() error {
	o.once.Do(func() {
		fd, err := unix.Open(o.path, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			o.fd, o.err = -1, &os.PathError{Op: "open", Path: o.path, Err: err}
			return
		}
		o.fd = fd
	})
	return o.err
}

// write writes b at off.
func (o *outFile) write(b []byte, off int64) error {
	o.flush.wrote(len(b))
	for len(b) > 0 {
		w, err := unix.Pwrite(o.fd, b, off)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return &os.PathError{Op: "write", Path: o.path, Err: err}
		case w == 0:
			return &os.PathError{Op: "write", Path: o.path, Err: io.ErrShortWrite}
		}
		b, off = b[w:], off+int64(w)
	}
	return nil
}

// done counts one chunk written; after the last it closes the file and
// gives it its metadata.
func (o *outFile) done() error {
	if o.remaining.Add(-1) > 0 {
		return nil
	}
	return o.finish()
}

// finish sizes the file when skipped zero chunks left its end unwritten
// (a hole), applies its owner, xattrs, mode and times and closes it: in
// the download workers, in parallel, rather than in a serial pass at the
// end (a tenth of a restore of ten thousand files).
func (o *outFile) finish() error {
	err := o.setMeta()
	if cerr := unix.Close(o.fd); err == nil && cerr != nil {
		err = &os.PathError{Op: "close", Path: o.path, Err: cerr}
	}
	if err != nil {
		return fmt.Errorf("%s: %w", o.entry.Path, err)
	}
	return nil
}

func (o *outFile) setMeta() error {
	e := o.entry
	if o.holes.Load() {
		if err := unix.Ftruncate(o.fd, o.entry.Size); err != nil {
			return fmt.Errorf("truncate: %w", err)
		}
	}
	if o.owners {
		if err := unix.Fchown(o.fd, int(e.UID), int(e.GID)); err != nil {
			return fmt.Errorf("chown: %w", err)
		}
	}
	for name, val := range e.Xattrs {
		if err := unix.Fsetxattr(o.fd, name, val, 0); err != nil && !errors.Is(err, unix.ENOTSUP) && !errors.Is(err, unix.EPERM) {
			return fmt.Errorf("xattr %s: %w", name, err)
		}
	}
	// The mode after the owner: chown clears set-user-id bits.
	if err := unix.Fchmod(o.fd, unixMode(e.Mode)); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	ts := [2]unix.Timespec{unix.NsecToTimespec(e.MTime), unix.NsecToTimespec(e.MTime)}
	// utimensat(fd, NULL, ...), which x/sys/unix does not offer by name.
	if _, _, errno := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(o.fd), 0, uintptr(unsafe.Pointer(&ts)), 0, 0, 0); errno != 0 {
		return fmt.Errorf("set times: %w", errno)
	}
	return nil
}

// fetch is one blob to download and the places it goes.
type fetch struct {
	ref     BlobRef
	id      ChunkID
	targets []target
}

// prepareTarget makes req.Target an empty directory (clearing it when
// Force is set or it holds a half restore) marked as being restored, and
// returns its absolute path.
func prepareTarget(req RestoreRequest, m *Manifest) (string, error) {
	root, err := filepath.Abs(req.Target)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return "", err
	}
	if fi, err := os.Lstat(root); err != nil || !fi.IsDir() {
		return "", fmt.Errorf("restore target %s is not a directory", root)
	}
	empty, err := DirIsEmpty(root, req.Ignore...)
	if err != nil {
		return "", err
	}
	if !empty || RestoreIncomplete(root) {
		if !req.Force && !RestoreIncomplete(root) {
			return "", fmt.Errorf("%s: %w (use --force to replace its contents)", root, ErrNotEmpty)
		}
		if err := ClearDir(root, req.Ignore...); err != nil {
			return "", fmt.Errorf("clear %s: %w", root, err)
		}
	}
	os.Remove(filepath.Join(root, RestoredMarker))
	if err := writeMarker(filepath.Join(root, RestoringMarker), map[string]any{"snapshot": m.ID, "started": time.Now().UTC()}); err != nil {
		return "", fmt.Errorf("mark restore in progress: %w", err)
	}
	return root, nil
}

// restoreTree writes the tree t into root, its data through fl.
func (r *Repository) restoreTree(ctx context.Context, root string, fl *flusher, t *Tree, prog *progress, res *RestoreResult) error {
	// Directories first; files are created by the download workers as
	// their first chunk arrives (files without chunks afterwards).
	byPack := map[string]map[ChunkID]*fetch{}
	var files []*outFile
	defer func() {
		for _, o := range files { // on error: close what is still open
			if o.remaining.Load() > 0 && o.fd >= 0 {
				unix.Close(o.fd)
			}
		}
	}()
	owners := os.Geteuid() == 0
	for i, e := range t.Entries {
		abs := filepath.Join(root, filepath.FromSlash(e.Path))
		switch e.Kind {
		case KindDir:
			if e.Path != "." {
				if err := os.Mkdir(abs, 0o700); err != nil {
					return err
				}
			}
		case KindFile:
			out := &outFile{path: abs, entry: &t.Entries[i], owners: owners, flush: fl, fd: -1}
			out.remaining.Store(int64(len(e.Chunks)))
			files = append(files, out)
			res.Files++
			res.Bytes += e.Size
			prog.totalFiles.Add(1)
			prog.totalBytes.Add(e.Size)
			var off int64
			for _, id := range e.Chunks {
				ref, _ := r.lookup(id)
				if byPack[ref.Pack] == nil {
					byPack[ref.Pack] = map[ChunkID]*fetch{}
				}
				fe := byPack[ref.Pack][id]
				if fe == nil {
					fe = &fetch{ref: ref, id: id}
					byPack[ref.Pack][id] = fe
				}
				fe.targets = append(fe.targets, target{file: out, off: off})
				off += int64(ref.Raw)
			}
		}
	}
	if err := r.downloadPacks(ctx, byPack, prog); err != nil {
		return err
	}
	// Files without chunks (empty ones).
	var unopened []*outFile
	for _, o := range files {
		if len(o.entry.Chunks) == 0 {
			unopened = append(unopened, o)
		}
	}
	if err := parallel(ctx, r.conc, unopened, func(_ context.Context, o *outFile) error {
		if err := o.open(); err != nil {
			return err
		}
		return o.finish()
	}); err != nil {
		return err
	}
	// Links after the data, symlinks last: nothing is ever written through
	// a symlink the snapshot created.
	for _, e := range t.Entries {
		abs := filepath.Join(root, filepath.FromSlash(e.Path))
		switch e.Kind {
		case KindHardlink:
			if err := os.Link(filepath.Join(root, filepath.FromSlash(e.Target)), abs); err != nil {
				return err
			}
		case KindSymlink:
			if err := os.Symlink(e.Target, abs); err != nil {
				return err
			}
		case KindFile:
			prog.files.Add(1)
		}
	}
	// The rest of the metadata (files got theirs when they were closed),
	// deepest first so directory times survive their children.
	for i := len(t.Entries) - 1; i >= 0; i-- {
		e := t.Entries[i]
		if e.Kind == KindHardlink || e.Kind == KindFile {
			continue
		}
		if err := applyMeta(filepath.Join(root, filepath.FromSlash(e.Path)), e, owners); err != nil {
			return fmt.Errorf("%s: %w", e.Path, err)
		}
	}
	return nil
}

func applyMeta(abs string, e Entry, owners bool) error {
	if owners {
		if err := os.Lchown(abs, int(e.UID), int(e.GID)); err != nil {
			return err
		}
	}
	for name, val := range e.Xattrs {
		if err := unix.Lsetxattr(abs, name, val, 0); err != nil && !errors.Is(err, unix.ENOTSUP) && !errors.Is(err, unix.EPERM) {
			return fmt.Errorf("xattr %s: %w", name, err)
		}
	}
	if e.Kind != KindSymlink {
		if err := unix.Chmod(abs, unixMode(e.Mode)); err != nil {
			return &os.PathError{Op: "chmod", Path: abs, Err: err}
		}
	}
	ts := []unix.Timespec{unix.NsecToTimespec(e.MTime), unix.NsecToTimespec(e.MTime)}
	return unix.UtimesNanoAt(unix.AT_FDCWD, abs, ts, unix.AT_SYMLINK_NOFOLLOW)
}

// unixMode is the chmod(2) mode of an entry's mode (Go's fs.FileMode
// bits): permissions, set-user-id, set-group-id and sticky.
func unixMode(m uint32) uint32 {
	mode := m & uint32(fs.ModePerm)
	if m&uint32(fs.ModeSetuid) != 0 {
		mode |= unix.S_ISUID
	}
	if m&uint32(fs.ModeSetgid) != 0 {
		mode |= unix.S_ISGID
	}
	if m&uint32(fs.ModeSticky) != 0 {
		mode |= unix.S_ISVTX
	}
	return mode
}

// rangeGap merges blobs of a pack into one GET when less than this lies
// between them; maxRange caps one GET.
const (
	rangeGap = 1 << 20
	maxRange = 32 << 20
)

// downloadPacks fetches every needed blob with ranged GETs of merged
// neighbours, r.conc at a time, verifies each and writes it to its targets.
func (r *Repository) downloadPacks(ctx context.Context, byPack map[string]map[ChunkID]*fetch, prog *progress) error {
	type span struct {
		pack  string
		off   int64
		end   int64
		blobs []*fetch
	}
	var spans []span
	for pack, blobs := range byPack {
		list := make([]*fetch, 0, len(blobs))
		for _, f := range blobs {
			list = append(list, f)
		}
		sort.Slice(list, func(i, j int) bool { return list[i].ref.Offset < list[j].ref.Offset })
		var cur *span
		for _, f := range list {
			end := f.ref.Offset + int64(f.ref.Length)
			if cur != nil && f.ref.Offset-cur.end <= rangeGap && end-cur.off <= maxRange {
				cur.end = max(cur.end, end)
				cur.blobs = append(cur.blobs, f)
				continue
			}
			spans = append(spans, span{pack: pack, off: f.ref.Offset, end: end, blobs: []*fetch{f}})
			cur = &spans[len(spans)-1]
		}
	}
	// Big spans first: better overlap of the long downloads.
	sort.Slice(spans, func(i, j int) bool { return spans[i].end-spans[i].off > spans[j].end-spans[j].off })
	// A span is read blob by blob into one buffer per worker, and each
	// blob is opened and written while it is still in the CPU's cache: a
	// buffer of the whole span (up to 32 MiB per worker) went out to
	// memory and back, and faulted in fresh pages for every worker.
	bufPool := sync.Pool{New: func() any { return new(blobBufs) }}
	return parallel(ctx, r.conc, spans, func(ctx context.Context, sp span) error {
		sr, err := r.openSpanReader(ctx, sp.pack, sp.off, sp.end, prog)
		if err != nil {
			return err
		}
		defer sr.Close()
		bufs := bufPool.Get().(*blobBufs)
		defer bufPool.Put(bufs)
		for _, f := range sp.blobs {
			stored, err := sr.next(f.ref, &bufs.stored)
			if err != nil {
				return err
			}
			plain, err := r.openBlob(&bufs.plain, f.id, f.ref, stored)
			if err != nil {
				return err
			}
			zero := allZero(plain)
			for _, tg := range f.targets {
				if err := tg.file.open(); err != nil {
					return err
				}
				if zero {
					tg.file.holes.Store(true)
				} else if err := tg.file.write(plain, tg.off); err != nil {
					return err
				}
				if err := tg.file.done(); err != nil {
					return err
				}
				prog.bytes.Add(int64(len(plain)))
			}
		}
		return nil
	})
}

// blobBufs are a download worker's buffers: one blob as stored, and as
// decompressed.
type blobBufs struct{ stored, plain []byte }

// spanReader reads the blobs of one ranged GET of a pack in the order
// they are stored, skipping the bytes between them.
type spanReader struct {
	io.ReadCloser
	pack string
	pos  int64 // the pack offset the body is at
	prog *progress
}

// openSpanReader starts the GET of bytes [off, end) of pack.
func (r *Repository) openSpanReader(ctx context.Context, pack string, off, end int64, prog *progress) (*spanReader, error) {
	rc, err := r.store.GetRange(ctx, packKey(pack), off, end-off)
	if err != nil {
		return nil, fmt.Errorf("download pack %s: %w", pack, err)
	}
	return &spanReader{ReadCloser: rc, pack: pack, pos: off, prog: prog}, nil
}

// next reads the blob at ref into *buf, grown to exactly its length when
// too small. Blobs that overlap (only a tampered index says so) are
// corrupt; an object that ends early (a pack shorter than its index says)
// is too.
func (sr *spanReader) next(ref BlobRef, buf *[]byte) ([]byte, error) {
	if ref.Offset < sr.pos {
		return nil, fmt.Errorf("pack %s: %w: blobs at %d and before %d overlap", sr.pack, ErrCorrupt, ref.Offset, sr.pos)
	}
	if skip := ref.Offset - sr.pos; skip > 0 {
		if k, err := io.CopyN(io.Discard, sr, skip); err != nil {
			return nil, sr.shortRead(err, k, skip)
		}
	}
	if cap(*buf) < ref.Length {
		*buf = make([]byte, ref.Length)
	}
	b := (*buf)[:ref.Length]
	if k, err := io.ReadFull(sr, b); err != nil {
		return nil, sr.shortRead(err, int64(k), int64(ref.Length))
	}
	end := ref.Offset + int64(ref.Length)
	if sr.prog != nil {
		sr.prog.stored.Add(end - sr.pos) // with the bytes skipped
	}
	sr.pos = end
	return b, nil
}

// shortRead is the error of a read of want bytes that got n.
func (sr *spanReader) shortRead(err error, n, want int64) error {
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return fmt.Errorf("pack %s: %w: short read (%d of %d bytes)", sr.pack, ErrCorrupt, n, want)
	}
	return fmt.Errorf("download pack %s: %w", sr.pack, err)
}

// openBlob decrypts, decompresses and verifies one stored blob. It decrypts
// in place, so stored is consumed: a blob is opened once per buffer it was
// read into. The result lives in stored (uncompressed) or in *buf, which is
// reused across calls and never aliases stored.
func (r *Repository) openBlob(buf *[]byte, id ChunkID, ref BlobRef, stored []byte) ([]byte, error) {
	var err error
	if r.keys != nil {
		if stored, err = r.keys.openChunk(stored[:0], id, stored); err != nil {
			return nil, err
		}
	}
	plain := stored
	if ref.Raw < 0 || ref.Raw > r.maxBlob() {
		return nil, fmt.Errorf("chunk %s in pack %s: %w: size %d is outside the repository's chunk limit", id, ref.Pack, ErrCorrupt, ref.Raw)
	}
	if ref.Flags&blobFlagZstd != 0 {
		// The blob decoder stops at cap(dst) = the chunk's own size, so a
		// tampered blob that would inflate to far more cannot make restore
		// or verify allocate more than one chunk.
		dst := (*buf)[:0]
		if cap(dst) < ref.Raw {
			dst = make([]byte, 0, ref.Raw)
		}
		if plain, err = r.blobDec.DecodeAll(stored, dst); err != nil {
			return nil, fmt.Errorf("chunk %s in pack %s: %w: %v", id, ref.Pack, ErrCorrupt, err)
		}
		*buf = plain
	}
	if len(plain) != ref.Raw || r.hash.sum(plain) != id {
		return nil, fmt.Errorf("chunk %s in pack %s: %w: content does not match its id", id, ref.Pack, ErrCorrupt)
	}
	return plain, nil
}

func allZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// streamSpanMax caps a stream span's stored and its plain bytes: up to
// r.conc+1 spans are held at once.
const streamSpanMax = 8 << 20

// streamSpan is a run of a stream's chunks that lie one after another in
// one pack: one ranged GET.
type streamSpan struct {
	pack     string
	off, end int64
	raw      int // plain bytes
	blobs    []streamBlob
}

type streamBlob struct {
	id  ChunkID
	ref BlobRef
}

// streamSpans groups ids, in their order, into spans.
func (r *Repository) streamSpans(ids []ChunkID) ([]streamSpan, error) {
	var spans []streamSpan
	for _, id := range ids {
		ref, ok := r.lookup(id)
		if !ok {
			return nil, fmt.Errorf("chunk %s: %w: not in the index", id, ErrCorrupt)
		}
		end := ref.Offset + int64(ref.Length)
		if n := len(spans); n > 0 {
			sp := &spans[n-1]
			if sp.pack == ref.Pack && ref.Offset >= sp.end && ref.Offset-sp.end <= rangeGap &&
				end-sp.off <= streamSpanMax && sp.raw+ref.Raw <= streamSpanMax {
				sp.end = end
				sp.raw += ref.Raw
				sp.blobs = append(sp.blobs, streamBlob{id, ref})
				continue
			}
		}
		spans = append(spans, streamSpan{pack: ref.Pack, off: ref.Offset, end: end, raw: ref.Raw, blobs: []streamBlob{{id, ref}}})
	}
	return spans, nil
}

// ReadChunks streams the chunks in order into w, verifying each. Chunks
// stored next to each other come in one ranged GET, and r.conc GETs run
// ahead of the writer, so a stream restores at the store's speed and not
// at one round trip per chunk.
func (r *Repository) ReadChunks(ctx context.Context, ids []ChunkID, w io.Writer, prog *progress) error {
	spans, err := r.streamSpans(ids)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		plain []byte
		err   error
	}
	// The writer takes results in span order; the channel's capacity is
	// how far the downloads may run ahead.
	pending := make(chan chan result, r.conc)
	go func() {
		defer close(pending)
		for _, sp := range spans {
			done := make(chan result, 1)
			select {
			case pending <- done:
			case <-ctx.Done():
				return
			}
			go func() {
				plain, err := r.openSpan(ctx, sp, prog)
				done <- result{plain, err}
			}()
		}
	}()
	for done := range pending {
		res := <-done
		if res.err != nil {
			return res.err
		}
		if _, err := w.Write(res.plain); err != nil {
			return err
		}
		if prog != nil {
			prog.bytes.Add(int64(len(res.plain)))
		}
	}
	return ctx.Err()
}

// openSpan downloads a span and opens its chunks, in order, into one
// buffer of their plain size.
func (r *Repository) openSpan(ctx context.Context, sp streamSpan, prog *progress) ([]byte, error) {
	sr, err := r.openSpanReader(ctx, sp.pack, sp.off, sp.end, prog)
	if err != nil {
		return nil, err
	}
	defer sr.Close()
	var sbuf []byte
	out := make([]byte, 0, sp.raw)
	for _, b := range sp.blobs {
		stored, err := sr.next(b.ref, &sbuf)
		if err != nil {
			return nil, err
		}
		n := len(out)
		dst := out[n : n : n+b.ref.Raw]
		plain, err := r.openBlob(&dst, b.id, b.ref, stored)
		if err != nil {
			return nil, err
		}
		if b.ref.Flags&blobFlagZstd != 0 {
			out = out[:n+len(plain)] // decompressed in place, into dst
		} else {
			out = append(out, plain...)
		}
	}
	return out, nil
}

// restoreStream pipes a stream into its sink; a restore command that exits
// non-zero fails the restore.
func (r *Repository) restoreStream(ctx context.Context, st StreamEntry, sink StreamSink, prog *progress) error {
	if sink.Writer != nil {
		return r.ReadChunks(ctx, st.Chunks, sink.Writer, prog)
	}
	if len(sink.Command) == 0 {
		return errors.New("no restore command")
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	cmd := exec.Command(sink.Command[0], sink.Command[1:]...)
	cmd.Env = append(os.Environ(), sink.Env...)
	cmd.Dir = sink.Dir
	cmd.Stdin, cmd.Stdout, cmd.Stderr = pr, os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	wait, err := r.starter.Start(cmd)
	pr.Close()
	if err != nil {
		pw.Close()
		return fmt.Errorf("start %s: %w", sink.Command[0], err)
	}
	stop := killOnCancel(ctx, cmd.Process.Pid, pw)
	werr := r.ReadChunks(ctx, st.Chunks, pw, prog)
	if werr != nil {
		// Before the pipe closes: a closed pipe is a clean end of input,
		// and the command would take the truncated stream for all of it.
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	pw.Close()
	code, err := wait()
	stop()
	if ctx.Err() != nil {
		return fmt.Errorf("stream %s: %w", st.Name, ctx.Err())
	}
	if werr != nil {
		return werr
	}
	if err != nil || code != 0 {
		return fmt.Errorf("%s exited with status %d", sink.Command[0], code)
	}
	return nil
}

package snapshot

import (
	"bytes"
	"context"
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
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// Restore markers live in the restored directory; backups never include them.
const (
	// RestoringMarker exists while a restore is writing the directory.
	RestoringMarker = ".lifeboat-restoring"
	// RestoredMarker is written last by a complete restore.
	RestoredMarker = ".lifeboat-restored"
)

// StreamSource is a named stream to store in the snapshot: the stdout of
// Command (run with Env added to lifeboat's environment), or Reader.
type StreamSource struct {
	Name    string
	Command []string
	Env     []string
	Reader  io.Reader
}

// BackupRequest describes one backup.
type BackupRequest struct {
	Dir          string   // directory to back up; "" for streams only
	Exclude      []string // globs matched against the relative path and the base name
	Streams      []StreamSource
	Tags         []string
	Reason       string
	Host         string
	Meta         map[string]string
	FencingToken uint64
	// Parent is the snapshot to compare against ("" = the latest, "none" =
	// read everything). Unchanged files (size, mtime, ctime, inode) are not read.
	Parent   string
	Progress func(Progress) // called a few times a second and at the end
}

// Progress of a backup or restore.
type Progress struct {
	Files      int64
	TotalFiles int64
	Bytes      int64
	TotalBytes int64
	NewBytes   int64 // backup: raw bytes of new chunks
	Stored     int64 // backup: bytes uploaded; restore: bytes downloaded
	Elapsed    time.Duration
	Done       bool
}

// progress counts with atomics and reports on a ticker.
type progress struct {
	files, totalFiles, bytes, totalBytes, newBytes, stored atomic.Int64
	start                                                  time.Time
	fn                                                     func(Progress)
	stop                                                   chan struct{}
	wg                                                     sync.WaitGroup
}

func startProgress(fn func(Progress)) *progress {
	p := &progress{start: time.Now(), fn: fn, stop: make(chan struct{})}
	if fn != nil {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			t := time.NewTicker(250 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-t.C:
					fn(p.snapshot(false))
				case <-p.stop:
					return
				}
			}
		}()
	}
	return p
}

func (p *progress) snapshot(done bool) Progress {
	return Progress{Files: p.files.Load(), TotalFiles: p.totalFiles.Load(), Bytes: p.bytes.Load(), TotalBytes: p.totalBytes.Load(),
		NewBytes: p.newBytes.Load(), Stored: p.stored.Load(), Elapsed: time.Since(p.start), Done: done}
}

func (p *progress) finish() {
	close(p.stop)
	p.wg.Wait()
	if p.fn != nil {
		p.fn(p.snapshot(true))
	}
}

// session is the state of one backup.
type session struct {
	r      *Repository
	packer *packer
	prog   *progress

	mu      sync.Mutex
	claimed map[ChunkID]bool // chunks this backup stores
	stats   Stats

	// Chunks on their way from a chunker to a pack: the sealers hash,
	// compress and seal them, so one large file or stream uses every
	// core. A slot is held from the cut until the chunk is in a pack.
	sealq   chan *sealJob
	slots   chan struct{}
	jobs    sync.Pool
	sealers sync.WaitGroup
}

// sealJob is one cut chunk: a copy of its bytes, and once a sealer is
// done with it, its id and what goes into the pack.
type sealJob struct {
	data   []byte
	id     ChunkID
	hashed bool // id was known (and claimed) when it was cut
	store  bool // this backup stores the chunk
	stored []byte
	flags  uint8
	err    error
	done   chan struct{}
	zbuf   []byte
	sbuf   []byte
}

// startSealers starts n sealers, with 2n slots.
func (s *session) startSealers(n int) {
	s.slots = make(chan struct{}, 2*n)
	s.sealq = make(chan *sealJob, 2*n) // never full: a job holds a slot
	for range n {
		s.sealers.Add(1)
		go func() {
			defer s.sealers.Done()
			for j := range s.sealq {
				s.seal(j)
				j.done <- struct{}{}
			}
		}()
	}
}

// stopSealers ends the sealers; every reader has added its jobs by then.
func (s *session) stopSealers() {
	close(s.sealq)
	s.sealers.Wait()
}

// claim reports whether id must be stored by this backup: not in the
// repository and not already stored by this backup.
func (s *session) claim(id ChunkID) bool {
	if _, ok := s.r.lookup(id); ok {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.claimed[id] {
		return false
	}
	s.claimed[id] = true
	return true
}

// seal hashes and claims a job's chunk, and compresses and seals it when
// this backup stores it.
func (s *session) seal(j *sealJob) {
	r := s.r
	if !j.hashed {
		j.id = r.hash.sum(j.data)
		j.store = s.claim(j.id)
	}
	if !j.store {
		return
	}
	j.stored, j.flags = j.data, 0
	j.zbuf = r.blobEnc.EncodeAll(j.data, j.zbuf[:0])
	if len(j.zbuf) < len(j.data) {
		j.stored, j.flags = j.zbuf, blobFlagZstd
	}
	if r.keys != nil {
		if j.sbuf, j.err = r.keys.sealChunk(j.sbuf[:0], j.id, j.stored); j.err != nil {
			return
		}
		j.stored = j.sbuf
	}
}

// chunkWorker cuts files and streams into chunks; one per reading
// goroutine.
type chunkWorker struct {
	s    *session
	cbuf []byte // chunker buffer
}

// sealQueue is one chunker's jobs in the order they were cut; they go
// into packs, and their ids into ids, in that order.
type sealQueue struct {
	s    *session
	jobs []*sealJob
	ids  []ChunkID
}

// submit hands a copy of data to the sealers.
func (q *sealQueue) submit(ctx context.Context, data []byte, id ChunkID, hashed bool) error {
	if err := q.acquire(ctx); err != nil {
		return err
	}
	s := q.s
	j, _ := s.jobs.Get().(*sealJob)
	if j == nil {
		j = &sealJob{done: make(chan struct{}, 1)}
	}
	j.data = append(j.data[:0], data...)
	j.id, j.hashed, j.store, j.err = id, hashed, hashed, nil
	q.jobs = append(q.jobs, j)
	s.sealq <- j
	return nil
}

// acquire takes a slot. While none is free it puts its own oldest jobs
// into packs, so a chunker never waits for slots it holds itself.
func (q *sealQueue) acquire(ctx context.Context) error {
	for {
		select {
		case q.s.slots <- struct{}{}:
			return nil
		default:
		}
		if len(q.jobs) == 0 {
			select {
			case q.s.slots <- struct{}{}:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if err := q.addOldest(); err != nil {
			return err
		}
	}
}

// addOldest waits for the oldest job and puts its chunk into a pack.
func (q *sealQueue) addOldest() error {
	s, j := q.s, q.jobs[0]
	q.jobs = q.jobs[1:]
	<-j.done
	defer func() {
		<-s.slots
		s.jobs.Put(j)
	}()
	if j.err != nil {
		return j.err
	}
	q.ids = append(q.ids, j.id)
	if !j.store {
		return nil
	}
	s.prog.newBytes.Add(int64(len(j.data)))
	s.prog.stored.Add(int64(len(j.stored)))
	s.mu.Lock()
	s.stats.NewChunks++
	s.mu.Unlock()
	return s.packer.add(j.id, j.stored, len(j.data), j.flags)
}

// flush puts every job into a pack; after an error it still waits for
// them all, so none is left with the sealers.
func (q *sealQueue) flush() error {
	var first error
	for len(q.jobs) > 0 {
		if err := q.addOldest(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// knownChunk is a chunk of the previous version of a file.
type knownChunk struct {
	id  ChunkID
	len int
}

// knownChunks maps the offsets of a file's previous chunks to them, the
// last one left out: its cut may have been the end of the file.
func (r *Repository) knownChunks(prev []ChunkID) map[int64]knownChunk {
	if len(prev) < 2 {
		return nil
	}
	known := make(map[int64]knownChunk, len(prev)-1)
	var off int64
	for _, id := range prev[:len(prev)-1] {
		ref, ok := r.lookup(id)
		if !ok {
			return known
		}
		known[off] = knownChunk{id: id, len: ref.Raw}
		off += int64(ref.Raw)
	}
	return known
}

// storeStream chunks everything from rd. prev, the chunks of the file's
// previous version, lets it skip the cut for each stretch of the file that
// hashes to the previous chunk at the same offset (a file changed in place
// re-reads, but does not re-cut, what did not change); the chunks are the
// same as without it.
func (w *chunkWorker) storeStream(ctx context.Context, rd io.Reader, prev []ChunkID) (ids []ChunkID, n int64, err error) {
	s := w.s
	if w.cbuf == nil {
		w.cbuf = make([]byte, 2*s.r.cfg.Chunker.Max)
	}
	ch := NewChunker(rd, s.r.cfg.Chunker, w.cbuf)
	known := s.r.knownChunks(prev)
	q := &sealQueue{s: s}
	defer func() {
		if err != nil {
			q.flush() // what the sealers still hold must come back
		}
	}()
	for {
		if err := ctx.Err(); err != nil {
			return nil, n, err
		}
		// A previous chunk at this offset that still hashes to its id
		// is taken as it is; otherwise the chunker cuts.
		var data []byte
		var id ChunkID
		if k, ok := known[n]; ok {
			if data, err = ch.NextKnown(k.len, func(b []byte) bool { return s.r.hash.sum(b) == k.id }); err != nil {
				return nil, n, err
			}
			id = k.id
		}
		hashed := data != nil
		if !hashed {
			data, err = ch.Next()
			if errors.Is(err, io.EOF) {
				if err := q.flush(); err != nil {
					return nil, n, err
				}
				return q.ids, n, nil
			}
			if err != nil {
				return nil, n, err
			}
		}
		if hashed && !s.claim(id) {
			// Already stored: no sealer needed, only its place in order.
			if err := q.flush(); err != nil {
				return nil, n, err
			}
			q.ids = append(q.ids, id)
		} else if err := q.submit(ctx, data, id, hashed); err != nil {
			return nil, n, err
		}
		n += int64(len(data))
		s.prog.bytes.Add(int64(len(data)))
	}
}

// Backup takes a snapshot of req.Dir and req.Streams and commits it. On any
// error nothing is committed (uploaded packs become garbage for prune).
func (r *Repository) Backup(ctx context.Context, req BackupRequest) (*Manifest, error) {
	start := time.Now()
	lease, err := r.backupLease(ctx)
	if err != nil {
		return nil, err
	}
	defer lease.release()
	if err := r.LoadIndex(ctx); err != nil { // chunks other writers added since Open
		return nil, err
	}
	m := &Manifest{Version: 1, ID: randomID(8), Time: start.UTC(), Host: req.Host, Tags: req.Tags, Reason: req.Reason,
		FencingToken: req.FencingToken, Meta: req.Meta}

	s := &session{r: r, claimed: map[ChunkID]bool{}, prog: startProgress(req.Progress)}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The parent's tree downloads while the directory is walked.
	parentCh := make(chan parentTree, 1)
	go func() { parentCh <- r.readParent(ctx, req.Parent) }()
	parent := sync.OnceValue(func() parentTree { return <-parentCh })
	s.packer = newPacker(ctx, r)
	s.startSealers(max(2, runtime.GOMAXPROCS(0)))
	tree := &Tree{Version: 1}
	// abort stops the uploads and the progress display; nothing is
	// committed (uploaded packs become garbage for prune).
	abort := func(err error) (*Manifest, error) {
		cancel()
		s.stopSealers()
		s.packer.finish()
		s.prog.finish()
		return nil, err
	}

	if req.Dir != "" {
		if err := s.backupDir(ctx, req, parent, tree); err != nil {
			return abort(err)
		}
	}
	p := parent()
	if p.err != nil {
		return abort(p.err)
	}
	m.Parent = p.id
	w := &chunkWorker{s: s}
	for _, src := range req.Streams {
		st, err := s.backupStream(ctx, w, src)
		if err != nil {
			return abort(fmt.Errorf("stream %s: %w", src.Name, err))
		}
		tree.Streams = append(tree.Streams, st)
		s.stats.Bytes += st.Size
	}
	s.stopSealers()
	packs, err := s.packer.finish()
	s.prog.finish()
	if err != nil {
		return nil, err
	}
	if err := r.writeIndex(ctx, packs); err != nil {
		return nil, err
	}
	s.stats.NewBytes = s.prog.newBytes.Load()
	s.stats.StoredBytes = s.prog.stored.Load()
	s.stats.ReadBytes = s.prog.bytes.Load()
	s.stats.Duration = time.Since(start).Round(time.Millisecond).String()
	m.Stats = s.stats
	// A backup that lost its lease (a partition longer than the lease TTL)
	// may reference packs a prune has deleted since: never commit it.
	if err := lease.check(); err != nil {
		return nil, err
	}
	if err := r.commit(ctx, m, tree); err != nil {
		return nil, err
	}
	r.log.Info("snapshot committed", "snapshot", m.ID, "files", m.Stats.Files, "bytes", m.Stats.Bytes,
		"new_bytes", m.Stats.NewBytes, "stored_bytes", m.Stats.StoredBytes, "duration", m.Stats.Duration)
	return m, nil
}

// parentTree is the snapshot a backup compares files with: id "" and no
// entries when there is none (or it is unreadable: every file is read).
type parentTree struct {
	id      string
	entries map[string]*Entry
	err     error
}

func (r *Repository) readParent(ctx context.Context, spec string) parentTree {
	if spec == "none" {
		return parentTree{}
	}
	p, err := r.FindSnapshot(ctx, spec)
	if errors.Is(err, ErrNoSnapshot) {
		return parentTree{}
	}
	if err != nil {
		return parentTree{err: err}
	}
	t, err := r.ReadTree(ctx, p)
	if err != nil {
		r.log.Warn("parent snapshot unreadable; reading every file", "parent", p.ID, "error", err)
		return parentTree{}
	}
	entries := make(map[string]*Entry, len(t.Entries))
	for i := range t.Entries {
		entries[t.Entries[i].Path] = &t.Entries[i]
	}
	return parentTree{id: p.ID, entries: entries}
}

func excluded(rel string, patterns []string) bool {
	base := path.Base(rel)
	for _, p := range patterns {
		if ok, _ := path.Match(p, rel); ok {
			return true
		}
		if ok, _ := path.Match(p, base); ok {
			return true
		}
	}
	return false
}

// fileJob is a regular file whose content must be read.
type fileJob struct {
	idx  int // in tree.Entries
	abs  string
	size int64
	prev []ChunkID // the file's chunks in the parent snapshot
}

func (s *session) backupDir(ctx context.Context, req BackupRequest, parent func() parentTree, tree *Tree) error {
	root := filepath.Clean(req.Dir)
	fi, err := os.Lstat(root)
	if err != nil {
		return fmt.Errorf("backup %s: %w", root, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("backup %s: not a directory", root)
	}
	var files []fileJob             // every regular file, compared with the parent after the walk
	links := map[[2]uint64]string{} // (dev, inode) -> first path, for hardlinks
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // vanished while walking
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		rel = filepath.ToSlash(rel)
		switch rel {
		case RestoringMarker, RestoredMarker:
			return nil
		case "lost+found":
			// The volume's, not the app's: a restore keeps the target's
			// own and would collide with one from the snapshot.
			if d.IsDir() {
				return filepath.SkipDir
			}
		}
		if rel != "." && excluded(rel, req.Exclude) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		info, err := d.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		st := info.Sys().(*syscall.Stat_t)
		e := Entry{Path: rel, Mode: uint32(info.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)),
			UID: st.Uid, GID: st.Gid, MTime: info.ModTime().UnixNano(), Dev: st.Dev, Inode: st.Ino,
			CTime: st.Ctim.Sec*1e9 + st.Ctim.Nsec}
		switch {
		case info.IsDir():
			e.Kind = KindDir
			s.stats.Dirs++
		case info.Mode()&fs.ModeSymlink != 0:
			e.Kind = KindSymlink
			if e.Target, err = os.Readlink(p); err != nil {
				return err
			}
			s.stats.Symlinks++
		case info.Mode().IsRegular():
			key := [2]uint64{st.Dev, st.Ino}
			if first, ok := links[key]; ok && st.Nlink > 1 {
				e.Kind, e.Target = KindHardlink, first
				s.stats.Hardlinks++
				break
			}
			if st.Nlink > 1 {
				links[key] = rel
			}
			e.Kind, e.Size = KindFile, info.Size()
			s.stats.Files++
			s.stats.Bytes += e.Size
			s.prog.totalFiles.Add(1)
			files = append(files, fileJob{idx: len(tree.Entries), abs: p, size: e.Size})
		default:
			s.stats.Skipped = append(s.stats.Skipped, rel+": "+kindName(info.Mode())+" (not backed up)")
			return nil
		}
		var odd []string
		e.Xattrs, odd = readXattrs(p)
		for _, name := range odd {
			s.stats.Skipped = append(s.stats.Skipped, fmt.Sprintf("%s: extended attribute %q (its name is not UTF-8; not backed up)", rel, name))
		}
		tree.Entries = append(tree.Entries, e)
		return nil
	})
	if err != nil {
		return fmt.Errorf("backup %s: %w", root, err)
	}
	if len(s.stats.Skipped) > 0 {
		s.r.log.Info("entries skipped", "count", len(s.stats.Skipped), "first", s.stats.Skipped[0])
	}
	pt := parent()
	if pt.err != nil {
		return pt.err
	}
	var jobs []fileJob
	for _, job := range files {
		e := &tree.Entries[job.idx]
		if pe := pt.entries[e.Path]; pe != nil && pe.Kind == KindFile {
			if pe.Size == e.Size && pe.MTime == e.MTime && pe.CTime == e.CTime && pe.Inode == e.Inode && s.r.haveAll(pe.Chunks) {
				e.Chunks = pe.Chunks
				s.prog.files.Add(1)
				continue
			}
			job.prev = pe.Chunks
		}
		s.prog.totalBytes.Add(e.Size)
		jobs = append(jobs, job)
	}
	return s.readFiles(ctx, jobs, tree)
}

// readFiles reads changed files with one worker per core, largest first so
// a big file starts early and the small ones fill in around it.
func (s *session) readFiles(ctx context.Context, jobs []fileJob, tree *Tree) error {
	sort.SliceStable(jobs, func(i, j int) bool { return jobs[i].size > jobs[j].size })
	ch := make(chan fileJob)
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	workers := max(2, runtime.GOMAXPROCS(0))
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := &chunkWorker{s: s}
			for job := range ch {
				if err := s.readFile(ctx, w, job, &tree.Entries[job.idx]); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	for _, j := range jobs {
		mu.Lock()
		failed := firstErr != nil
		mu.Unlock()
		if failed || ctx.Err() != nil {
			break
		}
		ch <- j
	}
	close(ch)
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	return ctx.Err()
}

func (s *session) readFile(ctx context.Context, w *chunkWorker, job fileJob, e *Entry) error {
	f, err := os.Open(job.abs)
	if errors.Is(err, fs.ErrNotExist) {
		s.note(&s.stats.Skipped, e.Path+": vanished before it could be read")
		e.Chunks, e.Size = nil, 0
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	ids, n, err := w.storeStream(ctx, f, job.prev)
	if err != nil {
		return fmt.Errorf("%s: %w", e.Path, err)
	}
	e.Chunks, e.Size = ids, n
	s.prog.files.Add(1)
	// A file that changed while it was read may be inconsistent in the
	// snapshot: say so (the app's pre_backup hook should quiesce it).
	var after unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &after); err == nil {
		if after.Size != n || after.Mtim.Sec*1e9+after.Mtim.Nsec != e.MTime || after.Ctim.Sec*1e9+after.Ctim.Nsec != e.CTime {
			s.note(&s.stats.Changed, e.Path)
			s.r.log.Warn("file changed while it was read", "path", e.Path)
			e.MTime = after.Mtim.Sec*1e9 + after.Mtim.Nsec
			e.CTime = 0 // never trust it as unchanged next time
		}
	}
	return nil
}

func (s *session) note(list *[]string, msg string) {
	s.mu.Lock()
	*list = append(*list, msg)
	s.mu.Unlock()
}

// backupStream stores the stdout of src.Command (or src.Reader). A command
// that exits non-zero fails the backup: never an empty "successful" one.
func (s *session) backupStream(ctx context.Context, w *chunkWorker, src StreamSource) (StreamEntry, error) {
	st := StreamEntry{Name: src.Name}
	if src.Reader != nil {
		ids, n, err := w.storeStream(ctx, src.Reader, nil)
		st.Chunks, st.Size = ids, n
		return st, err
	}
	if len(src.Command) == 0 {
		return st, errors.New("no command")
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return st, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		pr.Close()
		pw.Close()
		return st, err
	}
	cmd := exec.Command(src.Command[0], src.Command[1:]...)
	cmd.Env = append(os.Environ(), src.Env...)
	cmd.Stdout, cmd.Stderr = pw, errW
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	wait, err := s.r.starter.Start(cmd)
	pw.Close()
	errW.Close()
	if err != nil {
		pr.Close()
		errR.Close()
		return st, fmt.Errorf("start %s: %w", src.Command[0], err)
	}
	stop := killOnCancel(ctx, cmd.Process.Pid, pr)
	var stderr bytes.Buffer
	stderrDone := make(chan struct{})
	go func() { io.Copy(&tailWriter{buf: &stderr, max: 4096}, errR); errR.Close(); close(stderrDone) }()
	ids, n, readErr := w.storeStream(ctx, pr, nil)
	if readErr != nil {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	pr.Close()
	code, waitErr := wait()
	stop()
	<-stderrDone
	if ctx.Err() != nil {
		return st, fmt.Errorf("stream %s: %w", src.Name, ctx.Err())
	}
	if readErr != nil {
		return st, readErr
	}
	if waitErr != nil || code != 0 {
		return st, fmt.Errorf("%s exited with status %d: %s", src.Command[0], code, strings.TrimSpace(stderr.String()))
	}
	st.Chunks, st.Size = ids, n
	return st, nil
}

// tailWriter keeps the last max bytes written.
type tailWriter struct {
	buf *bytes.Buffer
	max int
}

func (t *tailWriter) Write(p []byte) (int, error) {
	t.buf.Write(p)
	if t.buf.Len() > t.max {
		b := t.buf.Bytes()[t.buf.Len()-t.max:]
		nb := append([]byte(nil), b...)
		t.buf.Reset()
		t.buf.Write(nb)
	}
	return len(p), nil
}

func (r *Repository) haveAll(ids []ChunkID) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, id := range ids {
		if _, ok := r.index[id]; !ok {
			return false
		}
	}
	return true
}

func kindName(m fs.FileMode) string {
	switch {
	case m&fs.ModeSocket != 0:
		return "socket"
	case m&fs.ModeNamedPipe != 0:
		return "fifo"
	case m&fs.ModeDevice != 0:
		return "device"
	}
	return "special file"
}

// readXattrs returns the extended attributes of p (not following
// symlinks); none when the file system has none or does not support them.
// Names that are not UTF-8 cannot be stored (a JSON object's keys are
// text) and are returned as odd instead.
func readXattrs(p string) (xattrs map[string][]byte, odd []string) {
	sz, err := unix.Llistxattr(p, nil)
	if err != nil || sz <= 0 {
		return nil, nil
	}
	buf := make([]byte, sz)
	sz, err = unix.Llistxattr(p, buf)
	if err != nil {
		return nil, nil
	}
	out := map[string][]byte{}
	for _, name := range strings.Split(strings.TrimRight(string(buf[:sz]), "\x00"), "\x00") {
		if name == "" {
			continue
		}
		if !utf8.ValidString(name) {
			odd = append(odd, name)
			continue
		}
		n, err := unix.Lgetxattr(p, name, nil)
		if err != nil {
			continue
		}
		v := make([]byte, n)
		if n, err = unix.Lgetxattr(p, name, v); err == nil {
			out[name] = v[:n]
		}
	}
	if len(out) == 0 {
		return nil, odd
	}
	return out, odd
}

// killOnCancel kills the process group pgid and closes the pipes when ctx
// ends before stop is called: a stream command that hangs (blocked on its
// database, or never closing its output) must not hold a backup or a
// restore past its deadline, and a read or write blocked on the pipe must
// return.
func killOnCancel(ctx context.Context, pgid int, pipes ...*os.File) (stop func()) {
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			syscall.Kill(-pgid, syscall.SIGKILL)
			for _, f := range pipes {
				f.Close()
			}
		case <-done:
		}
	}()
	return func() { close(done) }
}

package snapshot

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lifeboat/lifeboat/internal/testrig"
	"github.com/lifeboat/lifeboat/supervisor/storage"
	"github.com/zeebo/blake3"
	"golang.org/x/sys/unix"
)

// backends opens a fresh store per call: the file backend, and S3 on one
// real MinIO started for the test.
func backends(t *testing.T) map[string]func(t *testing.T) storage.Store {
	m := testrig.StartMinIO(t)
	n := 0
	return map[string]func(t *testing.T) storage.Store{
		"file": func(t *testing.T) storage.Store { return fileStore(t) },
		"s3": func(t *testing.T) storage.Store {
			n++
			s, err := storage.Open(context.Background(), m.StoreURL(fmt.Sprintf("snap-%d", n), "repo"),
				storage.Options{AccessKey: m.AccessKey, SecretKey: m.SecretKey, CreateBucket: true})
			if err != nil {
				t.Fatal(err)
			}
			return s
		},
	}
}

func openRepo(t *testing.T, s storage.Store, key []byte) *Repository {
	t.Helper()
	r, err := Open(context.Background(), s, Options{Create: true, Key: key})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// readIndex reads and decodes one index object.
func (r *Repository) readIndex(ctx context.Context, key string) (*indexFile, error) {
	b, err := r.getAll(ctx, key, maxIndexBytes)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	return r.decodeIndex(key, b)
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// makeTree writes every kind of entry the engine handles.
func makeTree(t *testing.T, dir string) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "sub/deeper"), 0o755))
	must(os.MkdirAll(filepath.Join(dir, "empty-dir"), 0o711))
	must(os.WriteFile(filepath.Join(dir, "small.txt"), []byte("hello lifeboat\n"), 0o640))
	must(os.WriteFile(filepath.Join(dir, "empty-file"), nil, 0o600))
	must(os.WriteFile(filepath.Join(dir, "sub/random.bin"), randBytes(3<<20+17), 0o644))
	must(os.WriteFile(filepath.Join(dir, "sub/deeper/text.log"), bytes.Repeat([]byte("compressible line of text\n"), 200000), 0o600))
	must(os.WriteFile(filepath.Join(dir, "exec.sh"), []byte("#!/bin/sh\n"), 0o4755))
	must(os.Symlink("sub/random.bin", filepath.Join(dir, "link-rel")))
	must(os.Symlink("/etc/hostname", filepath.Join(dir, "link-abs")))
	must(os.Link(filepath.Join(dir, "small.txt"), filepath.Join(dir, "sub/hardlink.txt")))
	// A sparse file: 8 MiB with data only at 1 MiB and at the end.
	f, err := os.Create(filepath.Join(dir, "sparse.img"))
	must(err)
	f.WriteAt([]byte("in the middle"), 1<<20)
	f.WriteAt([]byte("at the end"), 8<<20-10)
	f.Close()
	// One that ends in a hole: only truncate gives it its size back.
	f, err = os.Create(filepath.Join(dir, "tail-hole.img"))
	must(err)
	f.WriteAt([]byte("only at the start"), 0)
	must(f.Truncate(6 << 20))
	f.Close()
	must(syscall.Mkfifo(filepath.Join(dir, "a-fifo"), 0o600))
	// File names and link texts are bytes, not text. Two Latin-1 names
	// that JSON alone would turn into the same "caf\uFFFD", a hardlink
	// to one of them, a link text and a directory that are not UTF-8.
	must(os.WriteFile(filepath.Join(dir, "caf\xe8"), []byte("latin-1 e grave"), 0o644))
	must(os.WriteFile(filepath.Join(dir, "caf\xe9"), []byte("latin-1 e acute"), 0o644))
	must(os.Link(filepath.Join(dir, "caf\xe9"), filepath.Join(dir, "hardlink-to-latin")))
	must(os.Symlink("to-\xff", filepath.Join(dir, "link-\xfe")))
	must(os.MkdirAll(filepath.Join(dir, "dir-\xe9"), 0o755))
	must(os.WriteFile(filepath.Join(dir, "dir-\xe9", "inside"), []byte("in a Latin-1 directory"), 0o644))
	if os.Geteuid() == 0 {
		must(os.Lchown(filepath.Join(dir, "small.txt"), 1234, 5678))
		must(os.Lchown(filepath.Join(dir, "link-rel"), 4321, 8765))
	}
	unix.Setxattr(filepath.Join(dir, "small.txt"), "user.lifeboat", []byte("xattr value"), 0)
	old := time.Date(2001, 2, 3, 4, 5, 6, 789, time.UTC)
	must(os.Chtimes(filepath.Join(dir, "sub/random.bin"), old, old))
	must(os.Chtimes(filepath.Join(dir, "sub/deeper"), old, old))
}

// describe renders everything restore must reproduce, for comparison.
func describe(t *testing.T, dir string) string {
	t.Helper()
	var lines []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == RestoredMarker || rel == RestoringMarker || d.Type()&fs.ModeNamedPipe != 0 {
			return nil
		}
		info, _ := d.Info()
		st := info.Sys().(*syscall.Stat_t)
		line := fmt.Sprintf("%s %s uid=%d gid=%d", rel, info.Mode(), st.Uid, st.Gid)
		if rel != "." && !info.IsDir() {
			line += fmt.Sprintf(" mtime=%d", info.ModTime().UnixNano())
		}
		if rel != "." && info.IsDir() {
			line += fmt.Sprintf(" mtime=%d", info.ModTime().UnixNano())
		}
		switch {
		case info.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			line += " -> " + target
		case info.Mode().IsRegular():
			b, _ := os.ReadFile(p)
			line += fmt.Sprintf(" size=%d sum=%x nlink=%d", len(b), ChunkID(hasher{}.sum(b)), st.Nlink)
			if x, err := unix.Getxattr(p, "user.lifeboat", make([]byte, 64)); err == nil {
				line += fmt.Sprintf(" xattr=%d", x)
			}
		}
		lines = append(lines, line)
		return nil
	})
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func TestRoundTrip(t *testing.T) {
	for name, open := range backends(t) {
		for _, encrypted := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/encrypted=%t", name, encrypted), func(t *testing.T) {
				var key []byte
				if encrypted {
					key = []byte("correct horse battery staple")
				}
				ctx := context.Background()
				src := t.TempDir()
				makeTree(t, src)
				r := openRepo(t, open(t), key)
				m, err := r.Backup(ctx, BackupRequest{Dir: src, Meta: map[string]string{"gtid": "0-1-42"}, FencingToken: 7, Tags: []string{"t"}})
				if err != nil {
					t.Fatal(err)
				}
				if len(m.Stats.Skipped) != 1 || !strings.Contains(m.Stats.Skipped[0], "a-fifo: fifo") {
					t.Errorf("fifo not reported as skipped: %v", m.Stats.Skipped)
				}
				dst := filepath.Join(t.TempDir(), "restored")
				res, err := r.Restore(ctx, RestoreRequest{Target: dst})
				if err != nil {
					t.Fatal(err)
				}
				if res.Manifest.ID != m.ID || res.Manifest.Meta["gtid"] != "0-1-42" || res.Manifest.FencingToken != 7 {
					t.Errorf("restored manifest %+v", res.Manifest)
				}
				if want, got := describe(t, src), describe(t, dst); want != got {
					t.Fatalf("restored tree differs:\nwant:\n%s\ngot:\n%s", want, got)
				}
				if id, ok := RestoredFrom(dst); !ok || id != m.ID || RestoreIncomplete(dst) {
					t.Errorf("markers: restored from %q %v, incomplete %v", id, ok, RestoreIncomplete(dst))
				}
				var st syscall.Stat_t
				syscall.Stat(filepath.Join(dst, "sparse.img"), &st)
				if st.Blocks*512 >= 8<<20 {
					t.Errorf("sparse file restored dense: %d bytes allocated", st.Blocks*512)
				}
				// Reopened from the store alone.
				r2, err := Open(ctx, r.Store(), Options{Key: key})
				if err != nil {
					t.Fatal(err)
				}
				if _, err := r2.Restore(ctx, RestoreRequest{Target: dst}); !errors.Is(err, ErrNotEmpty) {
					t.Errorf("restore into a non-empty dir: %v", err)
				}
				if _, err := r2.Restore(ctx, RestoreRequest{Target: dst, Force: true}); err != nil {
					t.Fatal(err)
				}
				if want, got := describe(t, src), describe(t, dst); want != got {
					t.Fatalf("forced restore differs:\nwant:\n%s\ngot:\n%s", want, got)
				}
			})
		}
	}
}

// TestXattrNameNotUTF8IsReported: an extended attribute whose name is not
// UTF-8 cannot be stored (JSON object keys are text): the backup names it
// among the skipped entries and keeps the file's other attributes.
func TestXattrNameNotUTF8IsReported(t *testing.T) {
	src := t.TempDir()
	p := filepath.Join(src, "f")
	if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(p, "user.caf\xe9", []byte("v"), 0); err != nil {
		t.Skipf("no user xattrs here: %v", err)
	}
	if err := unix.Setxattr(p, "user.ok", []byte("kept"), 0); err != nil {
		t.Fatal(err)
	}
	s := fileStore(t)
	r := openRepo(t, s, nil)
	ctx := context.Background()
	m, err := r.Backup(ctx, BackupRequest{Dir: src})
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Stats.Skipped) != 1 || !strings.Contains(m.Stats.Skipped[0], `extended attribute "user.caf\xe9"`) {
		t.Errorf("skipped: %q", m.Stats.Skipped)
	}
	dst := filepath.Join(t.TempDir(), "r")
	if _, err := r.Restore(ctx, RestoreRequest{Target: dst}); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	n, err := unix.Getxattr(filepath.Join(dst, "f"), "user.ok", buf)
	if err != nil || string(buf[:n]) != "kept" {
		t.Errorf("user.ok after restore: %q, %v", buf[:n], err)
	}
}

func TestIncrementalSharesChunksAndSkipsUnchangedFiles(t *testing.T) {
	ctx := context.Background()
	s := fileStore(t)
	r := openRepo(t, s, nil)
	src := t.TempDir()
	big := randBytes(8 << 20)
	os.WriteFile(filepath.Join(src, "big"), big, 0o644)
	os.WriteFile(filepath.Join(src, "other"), randBytes(1<<20), 0o644)
	m1, err := r.Backup(ctx, BackupRequest{Dir: src})
	if err != nil {
		t.Fatal(err)
	}
	m2, err := r.Backup(ctx, BackupRequest{Dir: src})
	if err != nil {
		t.Fatal(err)
	}
	if m2.Parent != m1.ID || m2.Stats.ReadBytes != 0 || m2.Stats.NewBytes != 0 {
		t.Errorf("unchanged backup read %d bytes, stored %d new (parent %q)", m2.Stats.ReadBytes, m2.Stats.NewBytes, m2.Parent)
	}
	// Change 4 KiB in the middle of the big file: only the chunks around it are new.
	copy(big[4<<20:], randBytes(4096))
	os.WriteFile(filepath.Join(src, "big"), big, 0o644)
	m3, err := r.Backup(ctx, BackupRequest{Dir: src})
	if err != nil {
		t.Fatal(err)
	}
	if m3.Stats.ReadBytes != 8<<20 {
		t.Errorf("changed backup read %d bytes, want only the changed file (8 MiB)", m3.Stats.ReadBytes)
	}
	if m3.Stats.NewBytes == 0 || m3.Stats.NewBytes > 3*DefaultChunkMax {
		t.Errorf("a 4 KiB change stored %d new bytes", m3.Stats.NewBytes)
	}
	dst := t.TempDir()
	if _, err := r.Restore(ctx, RestoreRequest{Snapshot: m3.ID, Target: dst}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(dst, "big")); !bytes.Equal(got, big) {
		t.Fatal("incremental restore differs")
	}
	dst1 := t.TempDir()
	if _, err := r.Restore(ctx, RestoreRequest{Snapshot: m1.ID[:6], Target: dst1}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(dst1, "big")); bytes.Equal(got, big) {
		t.Fatal("restoring the first snapshot gave the changed content")
	}
}

func TestStreamRoundTripAndFailingCommand(t *testing.T) {
	ctx := context.Background()
	s := fileStore(t)
	r := openRepo(t, s, nil)
	data := append(bytes.Repeat([]byte("stream text "), 100000), randBytes(2<<20)...)
	in := filepath.Join(t.TempDir(), "in")
	os.WriteFile(in, data, 0o600)
	m, err := r.Backup(ctx, BackupRequest{Streams: []StreamSource{{Name: "db", Command: []string{"cat", in}}}})
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "out")
	_, err = r.Restore(ctx, RestoreRequest{Snapshot: m.ID, Streams: map[string]StreamSink{"db": {Command: []string{"sh", "-c", "cat > " + out}}}})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, data) {
		t.Fatalf("stream round trip: %d bytes back of %d", len(got), len(data))
	}
	var buf bytes.Buffer
	if _, err := r.Restore(ctx, RestoreRequest{Snapshot: m.ID, Streams: map[string]StreamSink{"db": {Writer: &buf}}}); err != nil || !bytes.Equal(buf.Bytes(), data) {
		t.Fatalf("stream to writer: %v", err)
	}
	// A stream command that fails fails the snapshot: nothing committed.
	_, err = r.Backup(ctx, BackupRequest{Streams: []StreamSource{{Name: "db", Command: []string{"sh", "-c", "echo partial; echo boom >&2; exit 3"}}}})
	if err == nil || !strings.Contains(err.Error(), "exited with status 3: boom") {
		t.Fatalf("failing stream command: %v", err)
	}
	list, _ := r.Snapshots(ctx)
	if len(list) != 1 {
		t.Fatalf("a failed backup was committed: %d snapshots", len(list))
	}
	// A restore command that fails fails the restore.
	_, err = r.Restore(ctx, RestoreRequest{Snapshot: m.ID, Streams: map[string]StreamSink{"db": {Command: []string{"sh", "-c", "cat >/dev/null; exit 4"}}}})
	if err == nil || !strings.Contains(err.Error(), "status 4") {
		t.Fatalf("failing restore command: %v", err)
	}
}

// backupCatStream backs up data as the stream "db" of a new snapshot,
// the stdout of `cat`, and returns the snapshot and its tree.
func backupCatStream(t *testing.T, r *Repository, data []byte) (*Manifest, *Tree) {
	t.Helper()
	ctx := context.Background()
	in := filepath.Join(t.TempDir(), "in")
	if err := os.WriteFile(in, data, 0o600); err != nil {
		t.Fatal(err)
	}
	m, err := r.Backup(ctx, BackupRequest{Streams: []StreamSource{{Name: "db", Command: []string{"cat", in}}}})
	if err != nil {
		t.Fatal(err)
	}
	tree, err := r.ReadTree(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	return m, tree
}

// TestLongStreamRestoresInOrder: a stream of many spans, over several
// packs and with chunks it repeats, comes back byte for byte although its
// downloads run ahead of the writer, two at a time, encrypted.
func TestLongStreamRestoresInOrder(t *testing.T) {
	for name, open := range backends(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			r, err := Open(ctx, open(t), Options{Create: true, Key: []byte("k"), Concurrency: 2})
			if err != nil {
				t.Fatal(err)
			}
			a, b := randBytes(3<<20), randBytes(8<<20)
			text := bytes.Repeat([]byte("a compressible line of a database dump\n"), 100000)
			var data []byte
			for _, part := range [][]byte{a, text, b, a, randBytes(12 << 20), text, b} {
				data = append(data, part...)
			}
			m, tree := backupCatStream(t, r, data)
			spans, err := r.streamSpans(tree.Streams[0].Chunks)
			if err != nil {
				t.Fatal(err)
			}
			packs := map[string]bool{}
			for _, sp := range spans {
				packs[sp.pack] = true
			}
			if len(spans) <= 2*r.conc || len(packs) < 2 {
				t.Fatalf("%d spans in %d packs: the test needs more than %d spans and several packs", len(spans), len(packs), 2*r.conc)
			}
			var got bytes.Buffer
			if _, err := r.Restore(ctx, RestoreRequest{Snapshot: m.ID, Streams: map[string]StreamSink{"db": {Writer: &got}}}); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.Bytes(), data) {
				t.Fatalf("restored %d bytes of %d, or different ones", got.Len(), len(data))
			}
		})
	}
}

// writeHostile commits a crafted tree as a snapshot.
func writeHostile(t *testing.T, r *Repository, entries []Entry) *Manifest {
	t.Helper()
	m := &Manifest{Version: 1, ID: randomID(8), Time: time.Now().UTC()}
	if err := r.commit(context.Background(), m, &Tree{Version: 1, Entries: entries}); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestHostileManifestsAreRefused(t *testing.T) {
	ctx := context.Background()
	s := fileStore(t)
	r := openRepo(t, s, nil)
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "f"), []byte("payload"), 0o644)
	good, err := r.Backup(ctx, BackupRequest{Dir: src})
	if err != nil {
		t.Fatal(err)
	}
	tree, _ := r.ReadTree(ctx, good)
	file := tree.Entries[1]
	root := Entry{Path: ".", Kind: KindDir, Mode: 0o755}
	outside := t.TempDir()
	cases := map[string][]Entry{
		"absolute":        {root, withPath(file, outside+"/pwned")},
		"dotdot":          {root, withPath(file, "../pwned")},
		"inner dotdot":    {root, {Path: "d", Kind: KindDir, Mode: 0o755}, withPath(file, "d/../../pwned")},
		"through symlink": {root, {Path: "link", Kind: KindSymlink, Target: outside}, withPath(file, "link/pwned")},
		"hardlink out":    {root, {Path: "h", Kind: KindHardlink, Target: "../../etc/passwd"}},
		"missing chunk":   {root, {Path: "f", Kind: KindFile, Size: 3, Chunks: []ChunkID{{1, 2, 3}}}},
	}
	for name, entries := range cases {
		m := writeHostile(t, r, entries)
		dst := t.TempDir()
		_, err := r.Restore(ctx, RestoreRequest{Snapshot: m.ID, Target: dst})
		if err == nil {
			t.Errorf("%s: restore accepted a hostile snapshot", name)
		}
		if _, err := os.Lstat(filepath.Join(outside, "pwned")); err == nil {
			t.Fatalf("%s: a file was written outside the target", name)
		}
		if ents, _ := os.ReadDir(dst); len(ents) != 0 {
			t.Errorf("%s: refused restore still wrote %d entries", name, len(ents))
		}
	}
}

func withPath(e Entry, p string) Entry {
	e.Path = p
	return e
}

func TestEncryptionFaults(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "store")
	s, _ := storage.OpenFile(dir)
	r := openRepo(t, s, []byte("the right key"))
	src := t.TempDir()
	secret := []byte("top secret plaintext that must never be stored in the clear")
	os.WriteFile(filepath.Join(src, "f"), bytes.Repeat(secret, 1000), 0o600)
	m, err := r.Backup(ctx, BackupRequest{Dir: src})
	if err != nil {
		t.Fatal(err)
	}
	// Nothing in the store holds the plaintext.
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if b, _ := os.ReadFile(p); bytes.Contains(b, secret[:20]) {
			t.Errorf("%s holds plaintext", p)
		}
		return nil
	})
	if _, err := Open(ctx, s, Options{Key: []byte("the wrong key")}); !errors.Is(err, ErrWrongKey) {
		t.Errorf("wrong key: %v", err)
	}
	if _, err := Open(ctx, s, Options{}); err == nil || !strings.Contains(err.Error(), "is encrypted: give its key") {
		t.Errorf("no key: %v", err)
	}
	packs, _ := filepath.Glob(filepath.Join(dir, "packs/*/*"))
	if len(packs) != 1 {
		t.Fatalf("%d packs", len(packs))
	}
	orig, _ := os.ReadFile(packs[0])
	// A flipped byte inside a blob.
	flipped := append([]byte(nil), orig...)
	flipped[10] ^= 0x40
	os.WriteFile(packs[0], flipped, 0o600)
	_, err = r.Restore(ctx, RestoreRequest{Snapshot: m.ID, Target: t.TempDir()})
	if !errors.Is(err, ErrCorrupt) {
		t.Errorf("flipped byte: %v", err)
	}
	// A truncated pack.
	os.WriteFile(packs[0], orig[:len(orig)/2], 0o600)
	_, err = r.Restore(ctx, RestoreRequest{Snapshot: m.ID, Target: t.TempDir()})
	if err == nil {
		t.Error("truncated pack restored")
	}
	if _, err := r.ReadPackTrailer(ctx, filepath.Base(packs[0]), int64(len(orig)/2)); !errors.Is(err, ErrCorrupt) {
		t.Errorf("truncated pack trailer: %v", err)
	}
	os.WriteFile(packs[0], orig, 0o600)
	refs, err := r.ReadPackTrailer(ctx, filepath.Base(packs[0]), int64(len(orig)))
	if err != nil || len(refs) == 0 {
		t.Fatalf("intact pack trailer: %v", err)
	}
}

func TestChunkerCutsAreContentDefined(t *testing.T) {
	p := ChunkerParams{Min: DefaultChunkMin, Avg: DefaultChunkAvg, Max: DefaultChunkMax}
	data := randBytes(16 << 20)
	cuts := func(b []byte) map[ChunkID]bool {
		c := NewChunker(bytes.NewReader(b), p, nil)
		out := map[ChunkID]bool{}
		for {
			ch, err := c.Next()
			if err == io.EOF {
				return out
			}
			if len(ch) < p.Min && len(out) > 0 {
				// only the last chunk may be short
			}
			if len(ch) > p.Max {
				t.Fatalf("chunk of %d bytes > max", len(ch))
			}
			out[hasher{}.sum(ch)] = true
		}
	}
	a := cuts(data)
	if n := len(a); n < 16 || n > 128 {
		t.Fatalf("%d chunks for 16 MiB at avg 512 KiB", n)
	}
	// Insert 100 bytes near the start: almost every chunk is unchanged.
	pos, _ := rand.Int(rand.Reader, big.NewInt(1<<20))
	shifted := append(append(append([]byte(nil), data[:pos.Int64()]...), randBytes(100)...), data[pos.Int64():]...)
	b := cuts(shifted)
	same := 0
	for id := range b {
		if a[id] {
			same++
		}
	}
	if same < len(a)-3 {
		t.Fatalf("after a 100-byte insert only %d of %d chunks are shared", same, len(a))
	}
}

// TestKnownChunksCutAsWithout: a changed file backed up against its
// previous chunks (skipping the cut where a stretch hashes to the previous
// chunk at that offset) gets exactly the chunks a backup without a parent
// cuts, whatever the change: in place, inserted, removed, grown (the
// previous last chunk was cut by the end of the file), shrunk.
func TestKnownChunksCutAsWithout(t *testing.T) {
	ctx := context.Background()
	base := randBytes(12 << 20)
	// A compressible middle: long runs give max-size cuts.
	copy(base[5<<20:], bytes.Repeat([]byte{'x'}, 2<<20))
	splice := func(at, drop int, insert []byte) []byte {
		out := append([]byte(nil), base[:at]...)
		out = append(out, insert...)
		return append(out, base[at+drop:]...)
	}
	cases := map[string][]byte{
		"in place":     splice(6<<20+123, 4096, randBytes(4096)),
		"first bytes":  splice(0, 10, randBytes(10)),
		"inserted":     splice(1<<20+7, 0, randBytes(1000)),
		"removed":      splice(3<<20, 777, nil),
		"grown":        append(append([]byte(nil), base...), randBytes(3<<20)...),
		"grown a byte": append(append([]byte(nil), base...), 1),
		"shrunk":       base[:10<<20+5],
		"unchanged":    base,
	}
	for name, changed := range cases {
		t.Run(name, func(t *testing.T) {
			s := fileStore(t)
			r := openRepo(t, s, []byte("key"))
			src := t.TempDir()
			f := filepath.Join(src, "f")
			os.WriteFile(f, base, 0o644)
			if _, err := r.Backup(ctx, BackupRequest{Dir: src}); err != nil {
				t.Fatal(err)
			}
			os.WriteFile(f, changed, 0o644)
			os.Chtimes(f, time.Now(), time.Now().Add(time.Hour)) // never "unchanged"
			chunks := func(parent string) []ChunkID {
				m, err := r.Backup(ctx, BackupRequest{Dir: src, Parent: parent})
				if err != nil {
					t.Fatal(err)
				}
				if m.Stats.ReadBytes != int64(len(changed)) {
					t.Fatalf("read %d bytes of %d", m.Stats.ReadBytes, len(changed))
				}
				tree, err := r.ReadTree(ctx, m)
				if err != nil {
					t.Fatal(err)
				}
				return tree.Entries[1].Chunks
			}
			guided, plain := chunks(""), chunks("none")
			if fmt.Sprint(guided) != fmt.Sprint(plain) {
				t.Fatalf("chunks with the parent's hints differ from a plain cut:\n%v\n%v", guided, plain)
			}
		})
	}
}

// TestNextKnown: the chunker takes a known chunk only when its bytes are
// there, its length could be a cut and the check says yes.
func TestNextKnown(t *testing.T) {
	p := ChunkerParams{Min: DefaultChunkMin, Avg: DefaultChunkAvg, Max: DefaultChunkMax}
	data := randBytes(3 << 20)
	first, _ := NewChunker(bytes.NewReader(data), p, nil).Next()
	n := len(first)
	yes := func([]byte) bool { return true }
	for _, tc := range []struct {
		name  string
		n     int
		check func([]byte) bool
		take  bool
	}{
		{"match", n, func(b []byte) bool { return bytes.Equal(b, data[:n]) }, true},
		{"check says no", n, func([]byte) bool { return false }, false},
		{"no longer than min", p.Min, yes, false},
		{"longer than max", p.Max + 1, yes, false},
	} {
		c := NewChunker(bytes.NewReader(data), p, nil)
		got, err := c.NextKnown(tc.n, tc.check)
		if err != nil || (got != nil) != tc.take {
			t.Fatalf("%s: took %d bytes, err %v", tc.name, len(got), err)
		}
		next, _ := c.Next()
		want := first
		if tc.take {
			want, _ = NewChunker(bytes.NewReader(data[n:]), p, nil).Next()
		}
		if !bytes.Equal(next, want) {
			t.Fatalf("%s: the chunk after it is not the one a plain cut gives", tc.name)
		}
	}
	short := NewChunker(bytes.NewReader(data[:p.Min+10]), p, nil)
	if got, _ := short.NextKnown(p.Min+11, yes); got != nil {
		t.Fatal("took more bytes than remain")
	}
}

// TestKeyedHasherPool: ids from the pooled keyed hasher equal a fresh
// keyed BLAKE3 every time, also concurrently and after longer inputs.
func TestKeyedHasherPool(t *testing.T) {
	key := randBytes(32)
	h := newHasher(key)
	inputs := [][]byte{randBytes(5 << 20), nil, []byte("x"), randBytes(70000)}
	want := make([]ChunkID, len(inputs))
	for i, in := range inputs {
		x, _ := blake3.NewKeyed(key)
		x.Write(in)
		x.Sum(want[i][:0])
	}
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for round := 0; round < 20; round++ {
				for i, in := range inputs {
					if got := h.sum(in); got != want[i] {
						t.Errorf("input %d, round %d: %x, want %x", i, round, got, want[i])
						return
					}
				}
			}
		}()
	}
	wg.Wait()
}

// TestLostFoundStaysWithTheVolume: a volume root's lost+found is not
// backed up, and a restore into another volume root (with its own) works,
// whoever took the backup (lifeboat run or the backup command).
func TestLostFoundStaysWithTheVolume(t *testing.T) {
	ctx := context.Background()
	s := fileStore(t)
	r := openRepo(t, s, nil)
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "lost+found"), 0o700)
	os.WriteFile(filepath.Join(src, "lost+found", "#1234"), []byte("orphan"), 0o600)
	os.WriteFile(filepath.Join(src, "data"), []byte("app data"), 0o600)
	m, err := r.Backup(ctx, BackupRequest{Dir: src})
	if err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	os.Mkdir(filepath.Join(dst, "lost+found"), 0o700)
	if _, err := r.Restore(ctx, RestoreRequest{Snapshot: m.ID, Target: dst}); err != nil {
		t.Fatalf("restore into a volume root: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dst, "data")); string(b) != "app data" {
		t.Fatalf("data not restored: %q", b)
	}
	if _, err := os.Stat(filepath.Join(dst, "lost+found", "#1234")); err == nil {
		t.Fatal("the source volume's lost+found was restored")
	}
}

// A backup with more new chunks than one index object may name writes
// several (split between packs), and a repository opened afresh finds
// every chunk in them.
func TestBackupIndexIsSplit(t *testing.T) {
	defer func(n int) { maxBlobsPerIndex = n }(maxBlobsPerIndex)
	maxBlobsPerIndex = 20
	ctx := context.Background()
	s := fileStore(t)
	r := smallRepo(t, s, nil) // 64 KiB chunks, 1 MiB packs
	src := t.TempDir()
	for i := range 10 {
		os.WriteFile(filepath.Join(src, fmt.Sprintf("f%d", i)), randBytes(300<<10+i), 0o644)
	}
	if _, err := r.Backup(ctx, BackupRequest{Dir: src}); err != nil {
		t.Fatal(err)
	}
	objects, total := 0, 0
	s.List(ctx, indexPrefix, func(o storage.ObjectInfo) error {
		idx, err := r.readIndex(ctx, o.Key)
		if err != nil {
			t.Fatal(err)
		}
		blobs := 0
		for _, p := range idx.Packs {
			blobs += len(p.Blobs)
		}
		if blobs > maxBlobsPerIndex && len(idx.Packs) > 1 {
			t.Errorf("%s names %d blobs in %d packs, more than %d", o.Key, blobs, len(idx.Packs), maxBlobsPerIndex)
		}
		objects++
		total += blobs
		return nil
	})
	if total <= 2*maxBlobsPerIndex || objects < 3 {
		t.Fatalf("%d blobs in %d index objects; the test wants more than %d blobs in at least 3", total, objects, 2*maxBlobsPerIndex)
	}
	r2, err := Open(ctx, s, Options{})
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "restored")
	if _, err := r2.Restore(ctx, RestoreRequest{Target: dst}); err != nil {
		t.Fatal(err)
	}
	if want, got := describe(t, src), describe(t, dst); want != got {
		t.Fatalf("restored tree differs:\nwant:\n%s\ngot:\n%s", want, got)
	}
}

// procsWriter is a stream sink that records GOMAXPROCS at its first write,
// after telling entered (when set) and waiting for release (when set).
type procsWriter struct {
	entered, release chan struct{}
	procs            int
}

func (w *procsWriter) Write(p []byte) (int, error) {
	if w.procs == 0 {
		if w.entered != nil {
			close(w.entered)
			<-w.release
		}
		w.procs = runtime.GOMAXPROCS(0)
	}
	return len(p), nil
}

// TestRestoreGivesEachWorkerAProc: while restores run, the scheduler has a
// P per download worker, until the last of them ends; GOMAXPROCS set in
// the environment is left alone. (Not parallel: GOMAXPROCS is the
// process's.)
func TestRestoreGivesEachWorkerAProc(t *testing.T) {
	// Start from the runtime's default, without GOMAXPROCS in the
	// environment; both are put back when the test ends.
	t.Setenv("GOMAXPROCS", "")
	os.Unsetenv("GOMAXPROCS")
	orig := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(orig) })
	runtime.SetDefaultGOMAXPROCS()
	ctx := context.Background()
	before := runtime.GOMAXPROCS(0)
	workers := 2*before + 1
	r, err := Open(ctx, fileStore(t), Options{Create: true, Concurrency: workers})
	if err != nil {
		t.Fatal(err)
	}
	m, err := r.Backup(ctx, BackupRequest{Streams: []StreamSource{{Name: "db", Command: []string{"echo", "rows"}}}})
	if err != nil {
		t.Fatal(err)
	}
	restore := func(w *procsWriter) error {
		_, err := r.Restore(ctx, RestoreRequest{Snapshot: m.ID, Streams: map[string]StreamSink{"db": {Writer: w}}})
		return err
	}
	// Restore a is inside when restore b starts and ends.
	a := &procsWriter{entered: make(chan struct{}), release: make(chan struct{})}
	aDone := make(chan error, 1)
	go func() { aDone <- restore(a) }()
	<-a.entered
	b := &procsWriter{}
	if err := restore(b); err != nil {
		t.Fatal(err)
	}
	close(a.release)
	if err := <-aDone; err != nil {
		t.Fatal(err)
	}
	if b.procs != workers || a.procs != workers {
		t.Fatalf("GOMAXPROCS during the restores: %d and, after the other ended, %d; want %d (the workers)", b.procs, a.procs, workers)
	}
	if now := runtime.GOMAXPROCS(0); now != before {
		t.Fatalf("GOMAXPROCS after the restores: %d, want %d again", now, before)
	}

	// Empty is unset, as the runtime reads it.
	t.Setenv("GOMAXPROCS", "")
	e := &procsWriter{}
	if err := restore(e); err != nil {
		t.Fatal(err)
	}
	if e.procs != workers {
		t.Fatalf("GOMAXPROCS empty in the environment: %d during the restore, want %d", e.procs, workers)
	}

	t.Setenv("GOMAXPROCS", strconv.Itoa(before))
	c := &procsWriter{}
	if err := restore(c); err != nil {
		t.Fatal(err)
	}
	if c.procs != before {
		t.Fatalf("GOMAXPROCS=%d in the environment, %d during the restore", before, c.procs)
	}
}

package snapshot

// Crash consistency: a backup in a child process (this test binary,
// re-executed) is killed with SIGKILL before, during and after each object
// it writes, and at random moments. After every kill the repository must
// verify (all data read), list exactly the snapshots that committed, and
// restore every one of them; once the killed writers' leases expire, prune
// collects their garbage and everything still verifies and restores.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/lifeboat/lifeboat/internal/testrig"
	"github.com/lifeboat/lifeboat/supervisor/storage"
)

// Environment of the child.
const (
	crashChildEnv = "LIFEBOAT_CRASH_CHILD"     // "1" in the child
	crashStoreEnv = "LIFEBOAT_CRASH_STORE"     // store URL
	crashSrcEnv   = "LIFEBOAT_CRASH_SRC"       // directory to back up
	crashPointEnv = "LIFEBOAT_CRASH_POINT"     // "N:before|during|after", or "" to run to the end
	crashKeyEnv   = "LIFEBOAT_CRASH_KEY"       // encryption key
	crashTTLEnv   = "LIFEBOAT_CRASH_LEASE_TTL" // lease TTL (short, so the parent can prune)
	crashOpEnv    = "LIFEBOAT_CRASH_OP"        // "backup" (default) or "prune"
)

const crashLeaseTTL = time.Second

// killingStore SIGKILLs its own process at the Nth object write or delete
// (lease writes and deletes do not count: their number depends on timing).
type killingStore struct {
	storage.Store
	n     int64
	mode  string
	count atomic.Int64
}

func (k *killingStore) write(key string, r io.Reader, size int64, put func(io.Reader) error) error {
	if strings.HasPrefix(key, locksPrefix) {
		return put(r)
	}
	i := k.count.Add(1)
	if i != k.n {
		return put(r)
	}
	switch k.mode {
	case "before":
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
	case "during":
		if r == nil { // a delete has no middle
			break
		}
		// Die with half the object sent: the store must never show it.
		half := size / 2
		r = io.MultiReader(io.LimitReader(r, half), readerFunc(func([]byte) (int, error) {
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {} // the signal arrives; nothing more is read
		}))
		return put(r)
	}
	err := put(r)
	syscall.Kill(os.Getpid(), syscall.SIGKILL) // "after"
	return err
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

func (k *killingStore) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	return k.write(key, r, size, func(r io.Reader) error { return k.Store.Put(ctx, key, r, size) })
}

func (k *killingStore) Delete(ctx context.Context, key string) error {
	return k.write(key, nil, 0, func(io.Reader) error { return k.Store.Delete(ctx, key) })
}

func (k *killingStore) PutIfAbsent(ctx context.Context, key string, r io.Reader, size int64) error {
	return k.write(key, r, size, func(r io.Reader) error { return k.Store.PutIfAbsent(ctx, key, r, size) })
}

// TestCrashChild is the child's body; it does nothing in a normal run.
func TestCrashChild(t *testing.T) {
	if os.Getenv(crashChildEnv) != "1" {
		t.Skip("runs only as the child of the crash tests")
	}
	ctx := context.Background()
	if d, err := time.ParseDuration(os.Getenv(crashTTLEnv)); err == nil {
		leaseTTL = d
	}
	s, err := storage.Open(ctx, os.Getenv(crashStoreEnv), storage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var store storage.Store = s
	if p := os.Getenv(crashPointEnv); p != "" {
		n, mode, _ := strings.Cut(p, ":")
		k := &killingStore{Store: s, mode: mode}
		k.n, _ = strconv.ParseInt(n, 10, 64)
		store = k
	}
	var key []byte
	if k := os.Getenv(crashKeyEnv); k != "" {
		key = []byte(k)
	}
	r, err := Open(ctx, store, Options{Key: key, Concurrency: 2})
	if err != nil {
		t.Fatal(err)
	}
	if os.Getenv(crashOpEnv) == "prune" {
		res, err := Prune(ctx, r, KeepPolicy{Last: 2}, PruneOptions{Grace: -1})
		if err != nil {
			t.Fatal(err)
		}
		if k, ok := store.(*killingStore); ok {
			fmt.Printf("WRITES %d\n", k.count.Load())
		}
		fmt.Printf("COMMITTED prune deleted %d packs\n", res.PacksDeleted)
		return
	}
	m, err := r.Backup(ctx, BackupRequest{Dir: os.Getenv(crashSrcEnv)})
	if err != nil {
		t.Fatal(err)
	}
	if k, ok := store.(*killingStore); ok {
		fmt.Printf("WRITES %d\n", k.count.Load())
	}
	fmt.Printf("COMMITTED %s\n", m.ID)
}

// crashChild runs one child backup; it returns the committed id ("" when
// it was killed) and, for a complete run, the number of object writes.
func crashChild(t *testing.T, storeURL, src, point string, key []byte, killAfter time.Duration, extraEnv ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run", "^TestCrashChild$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), crashChildEnv+"=1", crashStoreEnv+"="+storeURL, crashSrcEnv+"="+src,
		crashPointEnv+"="+point, crashKeyEnv+"="+string(key), crashTTLEnv+"="+crashLeaseTTL.String())
	cmd.Env = append(cmd.Env, extraEnv...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var timer *time.Timer
	if killAfter > 0 {
		timer = time.AfterFunc(killAfter, func() { cmd.Process.Signal(syscall.SIGKILL) })
		defer timer.Stop()
	}
	err := cmd.Wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.Sys().(syscall.WaitStatus).Signal() == syscall.SIGKILL {
		return "", 0
	}
	if err != nil {
		t.Fatalf("child failed (not killed): %v\n%s", err, out.String())
	}
	var id string
	writes := 0
	for _, line := range strings.Split(out.String(), "\n") {
		if v, ok := strings.CutPrefix(line, "COMMITTED "); ok {
			id = v
		}
		if v, ok := strings.CutPrefix(line, "WRITES "); ok {
			writes, _ = strconv.Atoi(v)
		}
	}
	if id == "" {
		t.Fatalf("child finished without committing:\n%s", out.String())
	}
	return id, writes
}

func TestBackupKilledAnywhereLeavesRepositoryValid(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test runs child processes")
	}
	m := testrig.StartMinIO(t)
	t.Setenv("AWS_ACCESS_KEY_ID", m.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", m.SecretKey)
	stores := map[string]string{
		"file": "file://" + filepath.Join(t.TempDir(), "store"),
		"s3":   m.StoreURL("crash", "repo"),
	}
	for name, url := range stores {
		t.Run(name, func(t *testing.T) {
			crashScenario(t, url, name == "s3")
		})
	}
}

func crashScenario(t *testing.T, url string, encrypted bool) {
	ctx := context.Background()
	defer func(d time.Duration) { leaseTTL = d }(leaseTTL)
	leaseTTL = crashLeaseTTL
	var key []byte
	if encrypted {
		key = []byte("crash key")
	}
	s, err := storage.Open(ctx, url, storage.Options{CreateBucket: true})
	if err != nil {
		t.Fatal(err)
	}
	smallRepo(t, s, key)

	// The data of every snapshot that committed, by id.
	committed := map[string]map[string][]byte{}
	newSource := func() (string, map[string][]byte) {
		files := map[string][]byte{
			"big":       randBytes(5 << 19),
			"text":      bytes.Repeat([]byte(fmt.Sprintf("line %d\n", mrand.Int())), 50000),
			"dir/small": randBytes(100),
		}
		return snapshotDir(t, files), files
	}
	// Two earlier snapshots, and the number of object writes of a backup
	// like the ones that get killed.
	writes := 0
	for range 2 {
		src, files := newSource()
		id, n := crashChild(t, url, src, "1000000:after", key, 0)
		committed[id], writes = files, n
	}
	if writes < 5 {
		t.Fatalf("a backup made only %d object writes", writes)
	}

	check := func(what string) {
		t.Helper()
		r, err := Open(ctx, s, Options{Key: key})
		if err != nil {
			t.Fatalf("%s: open: %v", what, err)
		}
		rep, err := Verify(ctx, r, VerifyOptions{ReadDataPercent: 100})
		if err != nil || !rep.OK() {
			t.Fatalf("%s: verify: %v %v", what, err, rep.Problems)
		}
		list, err := r.Snapshots(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != len(committed) {
			t.Fatalf("%s: %d snapshots listed, %d committed", what, len(list), len(committed))
		}
		for _, m := range list {
			want, ok := committed[m.ID]
			if !ok {
				t.Fatalf("%s: snapshot %s listed but never committed", what, m.ID)
			}
			restoresTo(t, r, m.ID, want)
		}
	}

	kills := 0
	// Every object write, killed before, while and after it is written.
	for n := 1; n <= writes; n++ {
		for _, mode := range []string{"before", "during", "after"} {
			src, files := newSource()
			id, childWrites := crashChild(t, url, src, fmt.Sprintf("%d:%s", n, mode), key, 0)
			if id != "" {
				// Chunk boundaries vary with the data: this backup needed
				// fewer writes than the measured one.
				if childWrites >= n {
					t.Fatalf("backup not killed at write %d %s", n, mode)
				}
				committed[id] = files
				check(fmt.Sprintf("completed with %d writes", childWrites))
				continue
			}
			kills++
			// Killed after the manifest: that snapshot is committed.
			if r, _ := Open(ctx, s, Options{Key: key}); r != nil {
				list, _ := r.Snapshots(ctx)
				for _, m := range list {
					if _, ok := committed[m.ID]; !ok {
						if n != writes || mode != "after" {
							t.Fatalf("killed at write %d/%d %s, yet snapshot %s is listed", n, writes, mode, m.ID)
						}
						committed[m.ID] = files
					}
				}
			}
			check(fmt.Sprintf("killed at write %d/%d %s", n, writes, mode))
		}
	}
	// And at random moments.
	for range 4 {
		src, files := newSource()
		id, _ := crashChild(t, url, src, "", key, time.Duration(50+mrand.IntN(400))*time.Millisecond)
		if id != "" {
			committed[id] = files
		} else {
			kills++
			if r, _ := Open(ctx, s, Options{Key: key}); r != nil {
				list, _ := r.Snapshots(ctx)
				for _, m := range list {
					if _, ok := committed[m.ID]; !ok {
						committed[m.ID] = files // killed after its commit point
					}
				}
			}
		}
		check("killed at a random moment")
	}
	t.Logf("%d backups killed, %d snapshots committed, %d writes per backup", kills, len(committed), writes)

	// The killed writers' leases expire; prune then collects their garbage.
	r, err := Open(ctx, s, Options{Key: key})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() bool { l, err := r.Leases(ctx); return err == nil && len(l) == 0 })
	res, err := Prune(ctx, r, KeepPolicy{}, PruneOptions{Grace: -1})
	if err != nil {
		t.Fatal(err)
	}
	if res.PacksDeleted == 0 || res.LeasesDeleted == 0 {
		t.Errorf("prune after crashes collected nothing: %+v", res)
	}
	check("after prune")
	if rep := mustVerify(t, r); len(rep.Notes) != 0 {
		t.Errorf("garbage left after prune: %v", rep.Notes)
	}
}

// TestPruneKilledAnywhereLeavesRepositoryValid kills a prune (child
// process) before and after each object it writes or deletes: the
// repository must verify, list every snapshot the policy keeps (and
// perhaps some it forgets, never anything else), restore them all, and a
// prune run to the end afterwards must reach the same result as an
// uninterrupted one.
func TestPruneKilledAnywhereLeavesRepositoryValid(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test runs child processes")
	}
	ctx := context.Background()
	defer func(d time.Duration) { leaseTTL = d }(leaseTTL)
	leaseTTL = crashLeaseTTL
	template := filepath.Join(t.TempDir(), "template")
	ts, err := storage.OpenFile(template)
	if err != nil {
		t.Fatal(err)
	}
	r := smallRepo(t, ts, nil)
	contents := map[string]map[string][]byte{}
	shared := randBytes(1 << 20)
	var ids []string
	for i := range 5 {
		files := map[string][]byte{"shared": shared, fmt.Sprintf("own-%d", i): randBytes(2 << 20)}
		m, err := r.Backup(ctx, BackupRequest{Dir: snapshotDir(t, files), Parent: "none"})
		if err != nil {
			t.Fatal(err)
		}
		contents[m.ID] = files
		ids = append(ids, m.ID)
	}
	// Garbage of a failed backup: packs in no index.
	if _, err := r.Backup(ctx, BackupRequest{Streams: []StreamSource{{Name: "s", Command: []string{"sh", "-c", "head -c 2000000 /dev/urandom; exit 1"}}}}); err == nil {
		t.Fatal("failed stream committed")
	}
	kept := map[string]bool{ids[3]: true, ids[4]: true}

	copyStore := func() (string, storage.Store) {
		dir := filepath.Join(t.TempDir(), "store")
		if out, err := exec.Command("cp", "-a", template, dir).CombinedOutput(); err != nil {
			t.Fatalf("cp: %v %s", err, out)
		}
		s, err := storage.OpenFile(dir)
		if err != nil {
			t.Fatal(err)
		}
		return "file://" + dir, s
	}
	prune := []string{crashOpEnv + "=prune", crashTTLEnv + "=100ms"}
	// The whole prune, to count its changes.
	url, _ := copyStore()
	out, changes := crashChild(t, url, "", "1000000:after", nil, 0, prune...)
	if out == "" || changes < 8 {
		t.Fatalf("prune made %d changes", changes)
	}
	t.Logf("a prune makes %d changes; killing it before and after each", changes)
	for n := 1; n <= changes; n++ {
		// (Its only write is the new index; "during" a put is covered by
		// the backup crash test.)
		for _, mode := range []string{"before", "after"} {
			url, s := copyStore()
			what := fmt.Sprintf("prune killed at change %d/%d %s", n, changes, mode)
			if done, _ := crashChild(t, url, "", fmt.Sprintf("%d:%s", n, mode), nil, 0, prune...); done != "" {
				t.Fatalf("%s: not killed", what)
			}
			rr, err := Open(ctx, s, Options{})
			if err != nil {
				t.Fatalf("%s: open: %v", what, err)
			}
			rep, err := Verify(ctx, rr, VerifyOptions{ReadDataPercent: 100})
			if err != nil || !rep.OK() {
				t.Fatalf("%s: verify: %v %v", what, err, rep.Problems)
			}
			list, _ := rr.Snapshots(ctx)
			seen := map[string]bool{}
			for _, m := range list {
				if contents[m.ID] == nil {
					t.Fatalf("%s: unknown snapshot %s", what, m.ID)
				}
				seen[m.ID] = true
				restoresTo(t, rr, m.ID, contents[m.ID])
			}
			for id := range kept {
				if !seen[id] {
					t.Fatalf("%s: kept snapshot %s is gone", what, id)
				}
			}
			// The killed prune's lease expires; a new prune finishes the job.
			waitFor(t, 5*time.Second, func() bool { l, err := rr.Leases(ctx); return err == nil && len(l) == 0 })
			if _, err := Prune(ctx, rr, KeepPolicy{Last: 2}, PruneOptions{Grace: -1}); err != nil {
				t.Fatalf("%s: prune again: %v", what, err)
			}
			rep = mustVerify(t, rr)
			list, _ = rr.Snapshots(ctx)
			if len(list) != 2 || !kept[list[0].ID] || !kept[list[1].ID] || len(rep.Notes) != 0 || len(objectKeys(t, s, indexPrefix)) != 1 {
				t.Fatalf("%s: after a full prune: %d snapshots, notes %v", what, len(list), rep.Notes)
			}
		}
	}
}

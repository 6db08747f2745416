package supervisor_test

// The data lifecycle end to end: the real lifeboat binary as PID 1 of a
// PID namespace (`unshare --pid --fork --mount-proc --kill-child`), a real
// app, the file store and a real MinIO. Killing the unshare process with
// SIGKILL kills lifeboat, and with it every process of the namespace: a
// container lost without warning.

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lifeboat/lifeboat/internal/testrig"
	"github.com/lifeboat/lifeboat/supervisor/control"
	"github.com/lifeboat/lifeboat/supervisor/snapshot"
	"github.com/lifeboat/lifeboat/supervisor/storage"
)

// dataRig is one "host": a store, a data dir, a socket, and the files the
// app leaves outside the data dir (its start count).
type dataRig struct {
	dir      string
	data     string
	sock     string
	starts   string // the app appends a line here each time it starts
	storeURL string
	env      []string // store credentials
	opts     storage.Options
}

func newDataRig(t *testing.T, minio bool) *dataRig {
	t.Helper()
	if _, err := exec.LookPath("unshare"); err != nil {
		testrig.Missing(t, "unshare (util-linux) not installed")
	}
	dir := t.TempDir()
	r := &dataRig{dir: dir, data: filepath.Join(dir, "data"), sock: filepath.Join(dir, "lb.sock"),
		starts: filepath.Join(dir, "starts"), storeURL: "file://" + filepath.Join(dir, "store")}
	if minio {
		m := testrig.StartMinIO(t)
		r.storeURL = m.StoreURL("lifeboat", "data-test")
		r.env = m.Env()
		r.opts = storage.Options{AccessKey: m.AccessKey, SecretKey: m.SecretKey, CreateBucket: true}
	}
	return r
}

// config writes a config file: the app, data, store and control blocks
// with extra appended inside the backup block, and returns its path.
func (r *dataRig) config(t *testing.T, app string, data, backup string) string {
	t.Helper()
	cfg := fmt.Sprintf(`
app {
  command = ["/bin/sh", "-c", %q]
  stop_timeout = "10s"
}
data {
  path = %q
%s
}
store { url = %q }
backup {
%s
}
control { socket = %q }
`, "echo started >> "+r.starts+"; "+app, r.data, data, r.storeURL, backup, r.sock)
	p := filepath.Join(r.dir, fmt.Sprintf("lifeboat-%d.hcl", time.Now().UnixNano()))
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// container is lifeboat running as PID 1 of its own PID namespace.
type container struct {
	cmd    *exec.Cmd
	out    *lockedBuffer
	done   chan struct{}
	status int
}

func (r *dataRig) start(t *testing.T, cfg string) *container {
	t.Helper()
	bin := testrig.BuildLifeboat(t)
	c := &container{out: &lockedBuffer{}, done: make(chan struct{})}
	c.cmd = exec.Command("unshare", "--pid", "--fork", "--mount-proc", "--kill-child", bin, "run", "--config", cfg, "--log-format", "text")
	c.cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}, r.env...)
	c.cmd.Stdout, c.cmd.Stderr = c.out, c.out
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(c.done)
		err := c.cmd.Wait()
		if c.cmd.ProcessState != nil {
			c.status = c.cmd.ProcessState.ExitCode()
		}
		_ = err
	}()
	t.Cleanup(c.kill)
	return c
}

// kill is the container's loss: SIGKILL to unshare, whose --kill-child
// takes lifeboat (PID 1 there) and so the whole namespace with it.
func (c *container) kill() {
	c.cmd.Process.Signal(syscall.SIGKILL)
	<-c.done
}

func (c *container) signal(sig syscall.Signal) {
	// unshare forwards nothing; signal lifeboat (its only child) directly.
	out, _ := exec.Command("pgrep", "-P", fmt.Sprint(c.cmd.Process.Pid)).Output()
	var pid int
	fmt.Sscan(string(out), &pid)
	if pid > 0 {
		syscall.Kill(pid, sig)
	}
}

func (c *container) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-c.done:
		return c.status
	case <-time.After(d):
		t.Fatalf("lifeboat did not exit within %s; output:\n%s", d, c.out.String())
		return 0
	}
}

// status reads the supervisor's status over the control socket.
func (r *dataRig) status(t *testing.T) map[string]any {
	t.Helper()
	cl, err := control.Dial(r.sock)
	if err != nil {
		return nil
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	raw, err := cl.Status(ctx)
	if err != nil {
		return nil
	}
	var st map[string]any
	json.Unmarshal(raw, &st)
	return st
}

func (r *dataRig) waitRunning(t *testing.T, c *container) {
	t.Helper()
	waitFor(t, 30*time.Second, "the app to run", func() bool {
		select {
		case <-c.done:
			t.Fatalf("lifeboat exited with %d before the app ran:\n%s", c.status, c.out.String())
		default:
		}
		st := r.status(t)
		app, _ := st["app"].(map[string]any)
		return app != nil && app["running"] == true
	})
}

// notify asks for a backup; with wait it returns the snapshot id.
func (r *dataRig) notify(t *testing.T, wait bool, reason string) string {
	t.Helper()
	cl, err := control.Dial(r.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	resp, err := cl.Notify(ctx, "backup", control.NotifyRequest{Reason: reason, Wait: wait})
	if err != nil {
		t.Fatalf("notify backup: %v", err)
	}
	if wait && resp.Snapshot == "" {
		t.Fatalf("notify backup --wait: no snapshot id in %+v", resp)
	}
	return resp.Snapshot
}

// cliNotify runs the real `lifeboat notify backup --wait` and returns the
// id it prints.
func (r *dataRig) cliNotify(t *testing.T) string {
	t.Helper()
	cmd := exec.Command(testrig.BuildLifeboat(t), "notify", "backup", "--wait", "--timeout", "60s", "--reason", "test", "--socket", r.sock)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("lifeboat notify backup --wait: %v", err)
	}
	id := strings.TrimSpace(string(out))
	if len(id) < 8 {
		t.Fatalf("lifeboat notify backup --wait printed %q, want a snapshot id", out)
	}
	return id
}

func (r *dataRig) repo(t *testing.T) *snapshot.Repository {
	t.Helper()
	ctx := context.Background()
	st, err := storage.Open(ctx, r.storeURL, r.opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	repo, err := snapshot.Open(ctx, st, snapshot.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return repo
}

func (r *dataRig) startCount() int {
	b, err := os.ReadFile(r.starts)
	if err != nil {
		return 0
	}
	return strings.Count(string(b), "started\n")
}

// treeDigest describes a directory for bit-identical comparison: every
// path with its kind, mode, size, mtime, content hash or link target.
// lifeboat's own files (markers, socket) are left out.
func treeDigest(t *testing.T, dir string) string {
	t.Helper()
	var lines []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		switch d.Name() {
		case snapshot.RestoredMarker, snapshot.RestoringMarker, control.DataDirSocketName:
			return nil
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		line := fmt.Sprintf("%s %v", rel, fi.Mode())
		switch {
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(b)
			line += fmt.Sprintf(" %d %d %s", fi.Size(), fi.ModTime().UnixNano(), hex.EncodeToString(sum[:]))
		case fi.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			line += " -> " + target
		case fi.IsDir() && rel != ".":
			line += fmt.Sprintf(" %d", fi.ModTime().UnixNano())
		}
		lines = append(lines, line)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// writeData writes a mixed data set: random and compressible files, a
// subdirectory, a symlink, and a file of size bytes.
func writeData(t *testing.T, dir string, tag string, size int) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, "db", "sub"), 0o750); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, size)
	rand.Read(big)
	files := map[string][]byte{
		"db/big-" + tag:      big,
		"db/sub/text-" + tag: []byte(strings.Repeat("row "+tag+"\n", 5000)),
		"db/small-" + tag:    []byte(tag),
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o640); err != nil {
			t.Fatal(err)
		}
	}
	os.Remove(filepath.Join(dir, "current"))
	if err := os.Symlink("db/small-"+tag, filepath.Join(dir, "current")); err != nil {
		t.Fatal(err)
	}
}

// TestContainerLoss: the app writes, notify --wait makes it durable, the
// whole namespace is SIGKILLed and the data dir wiped; the next start
// restores the data, bit-identical, before the app starts.
func TestContainerLoss(t *testing.T) {
	for _, store := range []string{"file", "minio"} {
		t.Run(store, func(t *testing.T) {
			r := newDataRig(t, store == "minio")
			// The app writes its own file at start and then idles.
			app := `echo "$$" > "$LIFEBOAT_TEST_DATA/app-wrote"; exec sleep 600`
			cfg := r.config(t, strings.ReplaceAll(app, "$LIFEBOAT_TEST_DATA", r.data), "", "")
			c := r.start(t, cfg)
			r.waitRunning(t, c)
			writeData(t, r.data, "one", 3<<20)
			r.notify(t, true, "first")
			writeData(t, r.data, "two", 1<<20)
			id := r.cliNotify(t)
			want := treeDigest(t, r.data)
			// Written after the last durable notify: may be lost.
			os.WriteFile(filepath.Join(r.data, "not-notified"), []byte("x"), 0o600)
			c.kill()

			if err := os.RemoveAll(r.data); err != nil {
				t.Fatal(err)
			}
			// This app does not write: what is in the dir is the restore's.
			cfg2 := r.config(t, `exec sleep 600`, "", "")
			c2 := r.start(t, cfg2)
			r.waitRunning(t, c2)
			if got := treeDigest(t, r.data); got != want {
				t.Fatalf("restored data differs from the snapshot taken at notify:\nwant:\n%s\ngot:\n%s\nlog:\n%s", want, got, c2.out.String())
			}
			if from, ok := snapshot.RestoredFrom(r.data); !ok || from != id {
				t.Errorf("restored from %q (%v), want %s", from, ok, id)
			}
			st := r.status(t)
			data, _ := st["data"].(map[string]any)
			rs, _ := data["restore"].(map[string]any)
			if rs["outcome"] != "restored" || rs["snapshot"] != id {
				t.Errorf("status data.restore = %v, want restored from %s", rs, id)
			}
		})
	}
}

// TestInterruptedRestore: SIGKILL while the restore writes (held in a slow
// stream restore command); the next start wipes the half restore, restores
// completely, and the app starts once in all.
func TestInterruptedRestore(t *testing.T) {
	r := newDataRig(t, false)
	hold := filepath.Join(r.dir, "hold-restore")
	inRestore := filepath.Join(r.dir, "in-restore")
	// The stream is restored after the files; while a hold file exists
	// the restore command parks, so the kill lands mid-restore.
	stream := fmt.Sprintf(`
  stream "dump" {
    command = ["/bin/sh", "-c", "echo $LIFEBOAT_PHASE $LIFEBOAT_TRIGGER $LIFEBOAT_REASON >> %[1]s/stream-env; cat %[1]s/dump.src"]
    restore_command = ["/bin/sh", "-c", "touch %[2]s; while [ -e %[3]s ]; do sleep 0.05; done; cat > %[4]s/dump.out"]
  }`, r.dir, inRestore, hold, r.data)
	os.WriteFile(filepath.Join(r.dir, "dump.src"), []byte("the stream\n"), 0o600)
	cfg := r.config(t, "exec sleep 600", "", stream)

	// The first container makes the snapshot; its app start is not counted.
	c := r.start(t, cfg)
	r.waitRunning(t, c)
	writeData(t, r.data, "one", 4<<20)
	r.notify(t, true, "before loss")
	// The stream command gets the variables the hooks get.
	if env := strings.Split(strings.TrimSpace(fileText(filepath.Join(r.dir, "stream-env"))), "\n"); env[len(env)-1] != "backup notify before loss" {
		t.Errorf("stream command's LIFEBOAT_PHASE, _TRIGGER, _REASON: %q, want \"backup notify before loss\"", env[len(env)-1])
	}
	want := treeDigest(t, r.data)
	c.kill()
	os.RemoveAll(r.data)
	os.Remove(r.starts)

	os.WriteFile(hold, nil, 0o600)
	c2 := r.start(t, cfg)
	waitFor(t, 30*time.Second, "the restore to reach the stream", func() bool {
		_, err := os.Stat(inRestore)
		return err == nil
	})
	if !snapshot.RestoreIncomplete(r.data) {
		t.Fatalf("no in-progress marker during the restore")
	}
	c2.kill()
	if n := r.startCount(); n != 0 {
		t.Fatalf("the app started %d times during an interrupted restore", n)
	}
	// Left behind: a half restore. Scribble into it too: it must go.
	os.WriteFile(filepath.Join(r.data, "junk"), []byte("junk"), 0o600)
	os.Remove(hold)

	c3 := r.start(t, cfg)
	r.waitRunning(t, c3)
	// The stream's restore command wrote its output into the data dir.
	b, err := os.ReadFile(filepath.Join(r.data, "dump.out"))
	if err != nil || string(b) != "the stream\n" {
		t.Fatalf("stream not restored: %q %v\n%s", b, err, c3.out.String())
	}
	os.Remove(filepath.Join(r.data, "dump.out"))
	if got := treeDigest(t, r.data); got != want {
		t.Fatalf("after the interrupted restore, data differs:\nwant:\n%s\ngot:\n%s\nlog:\n%s", want, got, c3.out.String())
	}
	if snapshot.RestoreIncomplete(r.data) {
		t.Error("in-progress marker left after a complete restore")
	}
	if n := r.startCount(); n != 1 {
		t.Errorf("app started %d times, want once", n)
	}
	if !strings.Contains(c3.out.String(), "interrupted restore") {
		t.Errorf("no log line about the interrupted restore:\n%s", c3.out.String())
	}
}

// corruptNewest takes two snapshots and damages the packs only the newer
// one uses. It returns the digests of both states and the ids.
func corruptNewestSetup(t *testing.T, r *dataRig, cfg string) (oldDigest, oldID, newID string) {
	t.Helper()
	c := r.start(t, cfg)
	r.waitRunning(t, c)
	writeData(t, r.data, "old", 2<<20)
	oldID = r.notify(t, true, "old")
	oldDigest = treeDigest(t, r.data)
	packsBefore := listPacks(t, r)
	writeData(t, r.data, "new", 2<<20)
	newID = r.notify(t, true, "new")
	c.kill()
	var fresh []string
	for p := range listPacks(t, r) {
		if !packsBefore[p] {
			fresh = append(fresh, p)
		}
	}
	if len(fresh) == 0 {
		t.Fatal("the second snapshot wrote no new pack")
	}
	for _, p := range fresh {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for i := 64; i < len(b)/2; i += 4096 {
			b[i] ^= 0xff
		}
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	os.RemoveAll(r.data)
	os.Remove(r.starts)
	return oldDigest, oldID, newID
}

func listPacks(t *testing.T, r *dataRig) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	root := filepath.Join(strings.TrimPrefix(r.storeURL, "file://"), "packs")
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			out[p] = true
		}
		return nil
	})
	return out
}

// TestCorruptNewestSnapshot: the newest snapshot fails verification while
// it is being restored; on_corrupt = previous restores the one before
// (logged loudly), on_corrupt = fail keeps the app from starting.
func TestCorruptNewestSnapshot(t *testing.T) {
	t.Run("previous", func(t *testing.T) {
		r := newDataRig(t, false)
		cfg := r.config(t, "exec sleep 600", `  on_corrupt = "previous"`, "")
		want, oldID, newID := corruptNewestSetup(t, r, cfg)
		c := r.start(t, cfg)
		r.waitRunning(t, c)
		if got := treeDigest(t, r.data); got != want {
			t.Fatalf("fallback restore differs from the previous snapshot:\nwant:\n%s\ngot:\n%s\nlog:\n%s", want, got, c.out.String())
		}
		if from, _ := snapshot.RestoredFrom(r.data); from != oldID {
			t.Errorf("restored from %s, want the previous snapshot %s", from, oldID)
		}
		log := c.out.String()
		if !strings.Contains(log, "SNAPSHOT FAILED VERIFICATION") || !strings.Contains(log, newID) {
			t.Errorf("no loud log line naming the corrupt snapshot %s:\n%s", newID, log)
		}
		st := r.status(t)
		data, _ := st["data"].(map[string]any)
		rs, _ := data["restore"].(map[string]any)
		if sk, _ := rs["skipped_corrupt"].([]any); len(sk) != 1 || sk[0] != newID {
			t.Errorf("status restore.skipped_corrupt = %v, want [%s]", rs["skipped_corrupt"], newID)
		}
	})
	t.Run("fail", func(t *testing.T) {
		r := newDataRig(t, false)
		cfg := r.config(t, "exec sleep 600", `  on_corrupt = "fail"`, "")
		corruptNewestSetup(t, r, cfg)
		c := r.start(t, cfg)
		code := c.wait(t, 60*time.Second)
		if code == 0 {
			t.Fatalf("exit status 0 with a corrupt newest snapshot and on_corrupt = fail:\n%s", c.out.String())
		}
		if n := r.startCount(); n != 0 {
			t.Errorf("the app started %d times", n)
		}
		if !snapshot.RestoreIncomplete(r.data) {
			t.Error("the half-restored dir is not marked incomplete")
		}
		if !strings.Contains(c.out.String(), "on_corrupt = fail") {
			t.Errorf("the error does not say why:\n%s", c.out.String())
		}
	})
}

// TestTriggerStorm: 1,000 notifies within about a second, each after a
// write, become a handful of snapshots, and the last one holds the last
// write. Each backup takes at least hookTime (an app-aware pre_backup, like
// a flush), so at most one snapshot per hookTime can come out of the storm.
func TestTriggerStorm(t *testing.T) {
	const hookTime = 250 * time.Millisecond
	r := newDataRig(t, false)
	hook := fmt.Sprintf(`  hook "pre_backup" { command = ["sleep", "%g"] }`, hookTime.Seconds())
	c := r.start(t, r.config(t, "exec sleep 600", "", hook))
	r.waitRunning(t, c)
	writeData(t, r.data, "base", 8<<20) // some bulk, so each backup takes a moment
	cl, err := control.Dial(r.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const n = 1000
	t0 := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 1; i <= n; i++ {
		if err := os.WriteFile(filepath.Join(r.data, "counter"), []byte(fmt.Sprint(i)), 0o600); err != nil {
			t.Fatal(err)
		}
		// The last request waits, like a client that must know its write
		// is durable; the others fire and forget, concurrently.
		if i == n {
			wg.Wait()
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := cl.Notify(ctx, "backup", control.NotifyRequest{}); err != nil {
				errs <- err
			}
		}()
	}
	elapsed := time.Since(t0)
	last := r.notify(t, true, "last")
	close(errs)
	for err := range errs {
		t.Fatalf("notify: %v", err)
	}
	t.Logf("%d notifies in %s", n, elapsed.Round(time.Millisecond))
	if elapsed > 3*time.Second {
		t.Logf("slow machine: the storm took %s", elapsed)
	}
	repo := r.repo(t)
	list, err := repo.Snapshots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// One running when the storm began, then one per hookTime at most,
	// then the waited one.
	if limit := int(time.Since(t0)/hookTime) + 2; len(list) > limit {
		t.Errorf("%d notifies made %d snapshots in %s, want at most %d", n, len(list), time.Since(t0).Round(time.Millisecond), limit)
	}
	t.Logf("%d snapshots in %s", len(list), time.Since(t0).Round(time.Millisecond))
	latest := snapshot.Latest(list)
	if latest.ID != last {
		t.Errorf("latest snapshot %s, the waited notify got %s", latest.ID, last)
	}
	out := t.TempDir()
	if _, err := repo.Restore(ctx, snapshot.RestoreRequest{Manifest: latest, Target: out}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(out, "counter")); string(b) != fmt.Sprint(n) {
		t.Errorf("latest snapshot holds counter %q, want the last write %d", b, n)
	}
}

// TestSigtermDuringBackup: SIGTERM arrives while a backup runs (held in a
// slow stream); the app writes its last data on SIGTERM; the running backup
// finishes, then the final one runs and holds the last writes; lifeboat
// exits with the app's status.
func TestSigtermDuringBackup(t *testing.T) {
	r := newDataRig(t, false)
	inStream := filepath.Join(r.dir, "in-stream")
	release := filepath.Join(r.dir, "release")
	stream := fmt.Sprintf(`
  stream "slow" {
    command = ["/bin/sh", "-c", "touch %s; while [ ! -e %s ]; do sleep 0.05; done; echo streamed"]
  }`, inStream, release)
	app := fmt.Sprintf(`trap 'echo flushed > %s/last-write; exit 0' TERM; while :; do sleep 0.05; done`, r.data)
	c := r.start(t, r.config(t, app, "", stream))
	r.waitRunning(t, c)
	writeData(t, r.data, "one", 1<<20)

	r.notify(t, false, "running at sigterm")
	waitFor(t, 30*time.Second, "the backup to reach its stream", func() bool {
		_, err := os.Stat(inStream)
		return err == nil
	})
	c.signal(syscall.SIGTERM)
	waitFor(t, 30*time.Second, "the app's last write", func() bool {
		_, err := os.Stat(filepath.Join(r.data, "last-write"))
		return err == nil
	})
	os.WriteFile(release, nil, 0o600)
	if code := c.wait(t, 60*time.Second); code != 0 {
		t.Fatalf("exit status %d, want the app's 0:\n%s", code, c.out.String())
	}
	ctx := context.Background()
	repo := r.repo(t)
	list, err := repo.Snapshots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 {
		t.Fatalf("%d snapshots, want the running one and the final one:\n%s", len(list), c.out.String())
	}
	for i, m := range list {
		out := t.TempDir()
		if _, err := repo.Restore(ctx, snapshot.RestoreRequest{Manifest: m, Target: out}); err != nil {
			t.Fatal(err)
		}
		_, err := os.Stat(filepath.Join(out, "last-write"))
		if has := err == nil; has != (i == 1) {
			t.Errorf("snapshot %d (%s, reason %q) has the last write: %v", i, m.ID, m.Reason, has)
		}
	}
	if !strings.Contains(list[1].Reason, "final") {
		t.Errorf("last snapshot's reason %q does not say final", list[1].Reason)
	}
}

// TestQuickstart runs the README's main-job command, examples/quickstart/
// run.sh: the whole cycle on the file store, ending in a diff.
func TestQuickstart(t *testing.T) {
	if testing.Short() {
		t.Skip("builds lifeboat again; skipped with -short")
	}
	root, err := testrig.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", filepath.Join(root, "examples", "quickstart", "run.sh"))
	cmd.Env = append(os.Environ(), "TMPDIR="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "identical: the data survived the container") {
		t.Fatalf("examples/quickstart/run.sh: %v\n%s", err, out)
	}
}

// TestRestoreIntoMountPoint: the data dir is a mount point (a tmpfs here,
// a volume in a container) with the file system's lost+found. The restore
// clears and fills it in place: it stays the same mount, lost+found stays.
func TestRestoreIntoMountPoint(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	r := newDataRig(t, false)
	if err := os.MkdirAll(r.data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", r.data, "tmpfs", 0, "size=64m"); err != nil {
		t.Skipf("cannot mount a tmpfs: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(r.data, syscall.MNT_DETACH) })
	if err := os.Mkdir(filepath.Join(r.data, "lost+found"), 0o700); err != nil {
		t.Fatal(err)
	}
	var before syscall.Stat_t
	syscall.Stat(r.data, &before)

	cfg := r.config(t, "exec sleep 600", "", "")
	c := r.start(t, cfg)
	r.waitRunning(t, c)
	writeData(t, r.data, "one", 2<<20)
	r.notify(t, true, "mount")
	want := treeDigest(t, r.data)
	c.kill()
	// The volume survives but its contents are lost (a fresh volume).
	if err := snapshot.ClearDir(r.data); err != nil {
		t.Fatal(err)
	}
	c2 := r.start(t, cfg)
	r.waitRunning(t, c2)
	if got := treeDigest(t, r.data); got != want {
		t.Fatalf("restore into the mount point differs:\nwant:\n%s\ngot:\n%s\nlog:\n%s", want, got, c2.out.String())
	}
	var after syscall.Stat_t
	syscall.Stat(r.data, &after)
	if after.Dev != before.Dev || after.Ino != before.Ino {
		t.Errorf("the data dir is no longer the mounted tmpfs (dev %d→%d, inode %d→%d)", before.Dev, after.Dev, before.Ino, after.Ino)
	}
}

// TestDataHooks: init seeds an empty store's first start; pre_backup's
// metadata lands in the manifest and comes back to the restore hooks; a
// failing pre_backup fails that backup (notify --wait says so) and never
// the app; post_backup runs after both, with the result.
func TestDataHooks(t *testing.T) {
	r := newDataRig(t, false)
	fail := filepath.Join(r.dir, "fail-pre-backup")
	hookLog := filepath.Join(r.dir, "hooks.log")
	hooks := fmt.Sprintf(`
  retry {
    initial = "1h"
    max = "1h"
  }
  hook "init" { command = ["/bin/sh", "-c", "echo init >> %[1]s; echo seeded > $LIFEBOAT_DATA/seed"] }
  hook "pre_backup" { command = ["/bin/sh", "-c", "echo position=$(cat $LIFEBOAT_DATA/pos) > $LIFEBOAT_METADATA_FILE; echo pre_backup $LIFEBOAT_TRIGGER $LIFEBOAT_REASON >> %[1]s; [ ! -e %[2]s ]"] }
  hook "post_backup" { command = ["/bin/sh", "-c", "echo post_backup $${LIFEBOAT_SNAPSHOT:-none} $${LIFEBOAT_BACKUP_ERROR:+failed} >> %[1]s"] }
  hook "pre_restore" { command = ["/bin/sh", "-c", "echo pre_restore $LIFEBOAT_SNAPSHOT $LIFEBOAT_META_POSITION >> %[1]s"] }
  hook "post_restore" { command = ["/bin/sh", "-c", "echo post_restore $LIFEBOAT_SNAPSHOT $LIFEBOAT_META_POSITION $(cat $LIFEBOAT_DATA/pos) $(test -e $LIFEBOAT_DATA/.lifeboat-restoring && echo marked) >> %[1]s"] }
`, hookLog, fail)
	cfg := r.config(t, "exec sleep 600", "", hooks)
	c := r.start(t, cfg)
	r.waitRunning(t, c)
	if fileText(filepath.Join(r.data, "seed")) != "seeded\n" {
		t.Fatalf("init hook did not seed the fresh data dir:\n%s", c.out.String())
	}
	os.WriteFile(filepath.Join(r.data, "pos"), []byte("42"), 0o600)
	id := r.notify(t, true, "checkpoint")
	ctx := context.Background()
	m, err := r.repo(t).FindSnapshot(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if m.Meta["position"] != "42" {
		t.Errorf("manifest meta = %v, want position=42 from pre_backup", m.Meta)
	}

	os.WriteFile(fail, nil, 0o600)
	cl, err := control.Dial(r.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	_, err = cl.Notify(ctx, "backup", control.NotifyRequest{Wait: true})
	if err == nil || !strings.Contains(err.Error(), "pre_backup") {
		t.Errorf("notify --wait with a failing pre_backup: %v, want an error naming the hook", err)
	}
	if st := r.status(t); st["app"].(map[string]any)["running"] != true {
		t.Errorf("the app stopped after a failed pre_backup: %v", st["app"])
	}
	c.kill()
	os.Remove(fail)
	os.RemoveAll(r.data)

	c2 := r.start(t, cfg)
	r.waitRunning(t, c2)
	want := strings.Join([]string{
		"init",
		"pre_backup notify checkpoint",
		"post_backup " + id,
		"pre_backup notify",
		"post_backup none failed",
		"pre_restore " + id + " 42",
		"post_restore " + id + " 42 42 marked", // a crash in the hook leaves a half restore
	}, "\n") + "\n"
	if got := fileText(hookLog); got != want {
		t.Errorf("hook runs:\n%s\nwant:\n%s\nlog:\n%s", got, want, c2.out.String())
	}
	if snapshot.RestoreIncomplete(r.data) {
		t.Errorf("the restore still counts as interrupted after post_restore succeeded")
	}
}

// TestRetentionAfterBackups: backup.keep forgets old snapshots in the
// background after successful backups.
func TestRetentionAfterBackups(t *testing.T) {
	r := newDataRig(t, false)
	c := r.start(t, r.config(t, "exec sleep 600", "", `  keep { last = 2 }`))
	r.waitRunning(t, c)
	var ids []string
	for i := 0; i < 5; i++ {
		os.WriteFile(filepath.Join(r.data, "n"), []byte(fmt.Sprint(i)), 0o600)
		ids = append(ids, r.notify(t, true, ""))
	}
	repo := r.repo(t)
	var list []*snapshot.Manifest
	waitFor(t, 30*time.Second, "retention to keep the last 2 snapshots", func() bool {
		var err error
		list, err = repo.Snapshots(context.Background())
		return err == nil && len(list) == 2
	})
	if list[0].ID != ids[3] || list[1].ID != ids[4] {
		t.Errorf("kept %s, %s; want the last two %s, %s", list[0].ID, list[1].ID, ids[3], ids[4])
	}
	// Earlier runs may have given way to the next backup (and already
	// forgotten snapshots); the run after the last backup is not interrupted.
	cl, err := control.Dial(r.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var text string
	waitFor(t, 10*time.Second, "a retention run that succeeded", func() bool {
		text, err = cl.Metrics(context.Background())
		return err == nil && strings.Contains(text, `lifeboat_retention_runs_total{result="success"}`)
	})
	data, _ := r.status(t)["data"].(map[string]any)
	ret, _ := data["retention"].(map[string]any)
	if ret == nil || ret["policy"] == "keep everything" || ret["last_run"] == nil || ret["last_error"] != nil {
		t.Errorf("retention status after a successful run: %v", ret)
	}
	// The metrics docs/metrics.md lists for the data lifecycle.
	for _, want := range []string{
		`lifeboat_backup_triggers_total{source="notify"} 5`,
		`lifeboat_backups_total{result="success"} 5`,
		"lifeboat_backup_pending 0", "lifeboat_backup_running 0", "lifeboat_backup_consecutive_failures 0",
		"lifeboat_backup_last_success_timestamp_seconds ", "lifeboat_backup_last_duration_seconds ",
		"lifeboat_backup_last_size_bytes ", "lifeboat_backup_new_bytes_total ", "lifeboat_backup_uploaded_bytes_total ",
		"lifeboat_restore_bytes 0", "lifeboat_restore_corrupt_snapshots_total 0",
		`lifeboat_retention_runs_total{result="success"}`, "lifeboat_retention_forgotten_snapshots_total ",
		"lifeboat_retention_deleted_bytes_total ",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// TestRestoreModes: always replaces a dir that holds data with the latest
// snapshot; if-empty keeps it; never leaves even an empty dir alone.
func TestRestoreModes(t *testing.T) {
	r := newDataRig(t, false)
	c := r.start(t, r.config(t, "exec sleep 600", "", ""))
	r.waitRunning(t, c)
	writeData(t, r.data, "snap", 1<<20)
	r.notify(t, true, "")
	want := treeDigest(t, r.data)
	c.kill()

	// Local edits since the snapshot.
	writeData(t, r.data, "local", 1<<10)
	local := treeDigest(t, r.data)
	for _, tc := range []struct {
		mode, want string
	}{{"if-empty", local}, {"always", want}} {
		c := r.start(t, r.config(t, "exec sleep 600", fmt.Sprintf("  restore = %q", tc.mode), `  final = false`))
		r.waitRunning(t, c)
		if got := treeDigest(t, r.data); got != tc.want {
			t.Errorf("restore = %s: data dir is not what it should be:\n%s\nwant:\n%s", tc.mode, got, tc.want)
		}
		c.kill()
	}
	os.RemoveAll(r.data)
	c = r.start(t, r.config(t, "exec sleep 600", `  restore = "never"`, `  final = false`))
	r.waitRunning(t, c)
	if empty, _ := snapshot.DirIsEmpty(r.data); !empty {
		t.Errorf("restore = never restored something")
	}
}

// snapshotsWith lists the snapshots whose reason contains word.
func snapshotsWith(t *testing.T, repo *snapshot.Repository, word string) []*snapshot.Manifest {
	t.Helper()
	list, err := repo.Snapshots(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []*snapshot.Manifest
	for _, m := range list {
		if strings.Contains(m.Reason, word) {
			out = append(out, m)
		}
	}
	return out
}

// TestBackupSources: backup.schedule, backup.watch and backup.signal each
// reach the backup loop in a running lifeboat, and status shows them.
func TestBackupSources(t *testing.T) {
	t.Run("schedule", func(t *testing.T) {
		r := newDataRig(t, false)
		c := r.start(t, r.config(t, "exec sleep 600", "", `  schedule = "@every 1s"`))
		r.waitRunning(t, c)
		os.WriteFile(filepath.Join(r.data, "f"), []byte("x"), 0o600)
		repo := r.repo(t)
		waitFor(t, 20*time.Second, "two scheduled snapshots", func() bool {
			return len(snapshotsWith(t, repo, "schedule")) >= 2
		})
		data, _ := r.status(t)["data"].(map[string]any)
		src, _ := data["sources"].(map[string]any)
		if src["schedule"] != "@every 1s" || src["next_schedule"] == nil {
			t.Errorf("status data.sources = %v", src)
		}
	})
	t.Run("watch and signal", func(t *testing.T) {
		r := newDataRig(t, false)
		cfg := r.config(t, "exec sleep 600", "", `
  signal = "SIGUSR1"
  watch {
    enabled   = true
    debounce  = "100ms"
    max_delay = "1s"
  }`)
		c := r.start(t, cfg)
		r.waitRunning(t, c)
		repo := r.repo(t)
		os.MkdirAll(filepath.Join(r.data, "db"), 0o700)
		os.WriteFile(filepath.Join(r.data, "db", "written"), []byte("by the app"), 0o600)
		var m *snapshot.Manifest
		waitFor(t, 20*time.Second, "a snapshot from the watch", func() bool {
			l := snapshotsWith(t, repo, "watch")
			if len(l) > 0 {
				m = l[len(l)-1]
			}
			return m != nil && m.Stats.Files >= 1
		})
		data, _ := r.status(t)["data"].(map[string]any)
		if src, _ := data["sources"].(map[string]any); src["watch_dirs"] == nil {
			t.Errorf("status data.sources = %v, want watch_dirs", src)
		}
		c.signal(syscall.SIGUSR1)
		waitFor(t, 20*time.Second, "a snapshot from SIGUSR1", func() bool {
			return len(snapshotsWith(t, repo, "signal")) == 1
		})
		// The signal was lifeboat's, not the app's: sleep would have died.
		if st := r.status(t); st["app"].(map[string]any)["running"] != true {
			t.Errorf("the app got the backup signal: %v", st["app"])
		}
	})
}

// TestFinalBackupTimeout: a final backup that cannot finish (its stream
// command hangs) is cut off at backup.final_timeout; lifeboat exits with
// the app's status and says the final backup failed.
func TestFinalBackupTimeout(t *testing.T) {
	r := newDataRig(t, false)
	hang := filepath.Join(r.dir, "hang")
	stream := fmt.Sprintf(`
  final_timeout = "2s"
  stream "stuck" {
    command = ["/bin/sh", "-c", "if [ -e %s ]; then exec sleep 600; fi; echo ok"]
  }`, hang)
	app := `trap 'exit 3' TERM; while :; do sleep 0.05; done`
	c := r.start(t, r.config(t, app, "", stream))
	r.waitRunning(t, c)
	os.WriteFile(hang, nil, 0o600)
	t0 := time.Now()
	c.signal(syscall.SIGTERM)
	code := c.wait(t, 30*time.Second)
	if code != 3 {
		t.Errorf("exit status %d, want the app's 3", code)
	}
	if d := time.Since(t0); d > 15*time.Second {
		t.Errorf("lifeboat took %s to exit with final_timeout = 2s", d)
	}
	if !strings.Contains(c.out.String(), "final backup failed") {
		t.Errorf("no error about the final backup:\n%s", c.out.String())
	}
}

// TestStoreDownAtStart: the store is not reachable when the container
// starts; lifeboat retries, and once MinIO is back it restores and starts
// the app.
func TestStoreDownAtStart(t *testing.T) {
	r := newDataRig(t, false)
	m := testrig.StartMinIO(t)
	r.storeURL = m.StoreURL("lifeboat", "down-test")
	r.env = m.Env()
	r.opts = storage.Options{AccessKey: m.AccessKey, SecretKey: m.SecretKey, CreateBucket: true}
	cfg := r.config(t, "exec sleep 600", "", "")
	c := r.start(t, cfg)
	r.waitRunning(t, c)
	writeData(t, r.data, "one", 1<<20)
	r.notify(t, true, "")
	want := treeDigest(t, r.data)
	c.kill()
	os.RemoveAll(r.data)

	m.Stop()
	c2 := r.start(t, cfg)
	waitFor(t, 30*time.Second, "a retry to be logged", func() bool {
		return strings.Contains(c2.out.String(), "cannot open the store; retrying")
	})
	if r.startCount() != 1 {
		t.Fatalf("the app started without its data")
	}
	m.Start(t)
	r.waitRunning(t, c2)
	if got := treeDigest(t, r.data); got != want {
		t.Fatalf("restore after the store came back differs:\n%s\nwant:\n%s", got, want)
	}
}

// TestKeyMismatchFailsAtOnce: an encryption key for an unencrypted
// repository is a mistake in the settings: exit 2 at once, not two minutes
// of retries as if the store were down.
func TestKeyMismatchFailsAtOnce(t *testing.T) {
	r := newDataRig(t, false)
	cfg := r.config(t, "exec sleep 600", "", "")
	c := r.start(t, cfg)
	r.waitRunning(t, c)
	c.kill()
	r.env = append(r.env, "LIFEBOAT_ENCRYPTION_KEY=not-for-this-repo")
	c2 := r.start(t, cfg)
	if code := c2.wait(t, 20*time.Second); code != 2 {
		t.Fatalf("exit %d, want 2:\n%s", code, c2.out.String())
	}
	if out := c2.out.String(); strings.Contains(out, "retrying") || !strings.Contains(out, "not encrypted") {
		t.Errorf("want an immediate error naming the mismatch:\n%s", out)
	}
}

package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat/lifeboat/internal/testrig"
	"github.com/lifeboat/lifeboat/supervisor/snapshot"
	"golang.org/x/sys/unix"
)

// The snapshot commands' tests run the real binary against a file:// store
// and a real MinIO.

// makeData fills dir with a small tree of every kind the CLI must carry.
func makeData(t *testing.T, dir string) {
	t.Helper()
	for name, content := range map[string]string{
		"a.txt":          "alpha\n",
		"sub/b.bin":      strings.Repeat("b", 300<<10),
		"sub/deep/c.log": strings.Repeat("line of log\n", 5000),
	} {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, "empty"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("sub/b.bin", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
}

// treeOf describes a directory: path -> kind, mode and content (or target),
// without the restore markers.
func treeOf(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == snapshot.RestoredMarker || rel == snapshot.RestoringMarker {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		desc := info.Mode().String()
		switch {
		case info.Mode()&fs.ModeSymlink != 0:
			tgt, _ := os.Readlink(p)
			desc += " -> " + tgt
		case info.Mode().IsRegular():
			b, _ := os.ReadFile(p)
			desc += " " + string(b)
		}
		out[rel] = desc
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func sameTree(t *testing.T, want, got string) {
	t.Helper()
	w, g := treeOf(t, want), treeOf(t, got)
	for p, d := range w {
		if g[p] != d {
			t.Errorf("%s: restored %.60q, want %.60q", p, g[p], d)
		}
	}
	for p := range g {
		if _, ok := w[p]; !ok {
			t.Errorf("%s: restored but not in the source", p)
		}
	}
}

func expectCode(t *testing.T, r cliResult, code int, stderrHas string) {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", r.code, code, r.stdout, r.stderr)
	}
	if stderrHas != "" && !strings.Contains(r.stderr, stderrHas) {
		t.Fatalf("stderr lacks %q:\n%s", stderrHas, r.stderr)
	}
}

// snapshotRoundTrip is the shared test: backup, list, restore, refuse a
// non-empty target, --force, an older snapshot by id prefix.
func snapshotRoundTrip(t *testing.T, env []string) {
	data := filepath.Join(t.TempDir(), "data")
	makeData(t, data)

	r := cliRun(t, env, "backup", "--data", data, "--tag", "first", "--tag", "cli")
	expectCode(t, r, 0, "lifeboat backup: snapshot ")
	first := strings.TrimSpace(r.stdout)
	if len(first) != 16 || strings.ContainsAny(first, " \n") {
		t.Fatalf("stdout must be the snapshot id alone, got %q", r.stdout)
	}

	if err := os.WriteFile(filepath.Join(data, "a.txt"), []byte("changed\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	r = cliRun(t, env, "backup", "--data", data, "--json", "--reason", "test")
	expectCode(t, r, 0, "")
	var m snapshot.Manifest
	if err := json.Unmarshal([]byte(r.stdout), &m); err != nil {
		t.Fatalf("backup --json: %v\n%s", err, r.stdout)
	}
	if m.Parent != first || m.Reason != "test" || m.Stats.Files != 3 {
		t.Errorf("second manifest: parent %q reason %q files %d", m.Parent, m.Reason, m.Stats.Files)
	}
	// Only a.txt changed: the rest was not re-read, nothing big was stored.
	if m.Stats.ReadBytes != int64(len("changed\n")) || m.Stats.NewBytes > 1<<10 {
		t.Errorf("incremental backup read %d bytes and added %d", m.Stats.ReadBytes, m.Stats.NewBytes)
	}

	r = cliRun(t, env, "snapshots", "--json")
	expectCode(t, r, 0, "")
	var list []snapshot.Manifest
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil || len(list) != 2 {
		t.Fatalf("snapshots --json: %v, %d snapshots\n%s", err, len(list), r.stdout)
	}
	if list[0].ID != first || strings.Join(list[0].Tags, ",") != "first,cli" || list[1].ID != m.ID {
		t.Errorf("snapshots in the wrong order or without tags: %+v", list)
	}
	r = cliRun(t, env, "snapshots")
	expectCode(t, r, 0, "")
	if !strings.Contains(r.stdout, m.ID+" *") || !strings.Contains(r.stdout, "first,cli") || !strings.HasPrefix(r.stdout, "ID ") ||
		!strings.Contains(r.stdout, "2 snapshots") {
		t.Errorf("table:\n%s", r.stdout)
	}

	dst := filepath.Join(t.TempDir(), "restored")
	r = cliRun(t, env, "restore", "--to", dst)
	expectCode(t, r, 0, "lifeboat restore: snapshot "+m.ID)
	sameTree(t, data, dst)
	if id, ok := snapshot.RestoredFrom(dst); !ok || id != m.ID {
		t.Errorf("completion marker says %q %v", id, ok)
	}

	r = cliRun(t, env, "restore", "--to", dst, "--snapshot", first[:6])
	expectCode(t, r, 1, "not empty")
	if !strings.Contains(r.stderr, "--force") {
		t.Errorf("the refusal must say how to go on: %s", r.stderr)
	}
	if b, _ := os.ReadFile(filepath.Join(dst, "a.txt")); string(b) != "changed\n" {
		t.Errorf("a refused restore changed the target: a.txt = %q", b)
	}
	r = cliRun(t, env, "restore", "--to", dst, "--snapshot", first[:6], "--force")
	expectCode(t, r, 0, "snapshot "+first)
	if b, _ := os.ReadFile(filepath.Join(dst, "a.txt")); string(b) != "alpha\n" {
		t.Errorf("restore --force of the first snapshot: a.txt = %q", b)
	}

	r = cliRun(t, env, "restore", "--to", t.TempDir(), "--snapshot", "ffffffffffffffff")
	expectCode(t, r, 1, `snapshot "ffffffffffffffff": no snapshot`)
}

func TestSnapshotCLIFileStore(t *testing.T) {
	store := "file://" + filepath.Join(t.TempDir(), "store")
	snapshotRoundTrip(t, []string{"LIFEBOAT_STORE=" + store})
}

func TestSnapshotCLIMinIO(t *testing.T) {
	m := testrig.StartMinIO(t)
	env := append(m.Env(), "LIFEBOAT_STORE="+m.StoreURL("cli-bucket", "lifeboat"))
	snapshotRoundTrip(t, env)
}

func TestSnapshotCLIErrors(t *testing.T) {
	dir := t.TempDir()
	store := "file://" + filepath.Join(dir, "store")
	data := filepath.Join(dir, "data")
	makeData(t, data)

	// Usage and config errors: 2, before anything is touched.
	expectCode(t, cliRun(t, nil, "backup", "--store", "http://example.com/x", "--data", data), 2, `scheme "http" is not supported`)
	expectCode(t, cliRun(t, nil, "backup", "--store", store, "--data", filepath.Join(dir, "missing")), 2, "does not exist")
	expectCode(t, cliRun(t, nil, "snapshots", "--store", store, "extra"), 2, "usage: lifeboat snapshots")
	expectCode(t, cliRun(t, nil, "restore", "--bogus"), 2, "flag provided but not defined")
	if _, err := os.Stat(filepath.Join(dir, "store")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a usage error created the store: %v", err)
	}

	// A store without a repository is not silently made one by the readers.
	r := cliRun(t, nil, "snapshots", "--store", store)
	expectCode(t, r, 1, "no repository in this store")
	if _, err := os.Stat(filepath.Join(dir, "store", "config")); err == nil {
		t.Error("snapshots created a repository")
	}
	expectCode(t, cliRun(t, nil, "restore", "--store", store, "--to", filepath.Join(dir, "out")), 1, "no repository")

	// A repository whose only backup failed (a stream command that exits
	// non-zero) exists but lists no snapshot, and has no latest.
	cfg := filepath.Join(dir, "fail.hcl")
	os.WriteFile(cfg, []byte(`backup {
  stream "s" { command = ["false"] }
}
`), 0o600)
	expectCode(t, cliRun(t, nil, "backup", "--config", cfg, "--store", store, "--data", data), 1, "nothing was committed")
	r = cliRun(t, nil, "snapshots", "--store", store)
	expectCode(t, r, 0, "")
	if r.stdout != "no snapshots\n" {
		t.Errorf("empty list: %q", r.stdout)
	}
	expectCode(t, cliRun(t, nil, "restore", "--store", store, "--to", filepath.Join(dir, "out")), 1, "no snapshot")
}

func TestSnapshotCLIEncryption(t *testing.T) {
	dir := t.TempDir()
	store := "file://" + filepath.Join(dir, "store")
	data := filepath.Join(dir, "data")
	makeData(t, data)
	const key = "correct horse battery staple"
	env := []string{"LIFEBOAT_STORE=" + store}

	r := cliRun(t, append(env, "LIFEBOAT_ENCRYPTION_KEY="+key), "backup", "--data", data)
	expectCode(t, r, 0, "")
	if strings.Contains(r.stderr+r.stdout, key) {
		t.Error("the key appeared in the output")
	}
	r = cliRun(t, env, "snapshots")
	expectCode(t, r, 1, "is encrypted: give its key")
	r = cliRun(t, append(env, "LIFEBOAT_ENCRYPTION_KEY=wrong"), "snapshots")
	expectCode(t, r, 1, "wrong")
	if strings.Contains(r.stderr, "wrong\n") && strings.Count(r.stderr, "wrong") > 1 {
		t.Errorf("the wrong key itself must not be echoed: %s", r.stderr)
	}

	// The same key from the config's key file (with the newline echo leaves).
	keyFile := filepath.Join(dir, "key")
	os.WriteFile(keyFile, []byte(key+"\n"), 0o600)
	cfg := filepath.Join(dir, "lifeboat.hcl")
	os.WriteFile(cfg, []byte("store {\n  encryption_key_file = \""+keyFile+"\"\n}\n"), 0o600)
	dst := filepath.Join(dir, "out")
	r = cliRun(t, env, "restore", "--config", cfg, "--to", dst)
	expectCode(t, r, 0, "")
	sameTree(t, data, dst)
}

// TestSnapshotCLIStreams backs up the config's stream commands and gets a
// stream back on stdout and through its restore_command.
func TestSnapshotCLIStreams(t *testing.T) {
	m := testrig.StartMinIO(t)
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	makeData(t, data)
	out := filepath.Join(dir, "dump.out")
	cfg := filepath.Join(dir, "lifeboat.hcl")
	os.WriteFile(cfg, []byte(`
data { path = "`+data+`" }
backup {
  tags = ["from-config"]
  stream "dump" {
    command         = ["sh", "-c", "seq 1 200000"]
    restore_command = ["sh", "-c", "cat > `+out+`"]
  }
}
`), 0o600)
	env := append(m.Env(), "LIFEBOAT_STORE="+m.StoreURL("streams", ""), "LIFEBOAT_CONFIG="+cfg)
	r := cliRun(t, env, "backup", "--json")
	expectCode(t, r, 0, "")
	var man snapshot.Manifest
	json.Unmarshal([]byte(r.stdout), &man)
	if len(man.Tags) != 1 || man.Tags[0] != "from-config" {
		t.Errorf("tags from the config: %v", man.Tags)
	}
	want, _ := exec.Command("seq", "1", "200000").Output()

	r = cliRun(t, env, "restore", "--stream", "dump")
	expectCode(t, r, 0, "into stdout")
	if r.stdout != string(want) {
		t.Errorf("stream on stdout: %d bytes, want %d", len(r.stdout), len(want))
	}
	expectCode(t, cliRun(t, env, "restore", "--stream", "nope"), 2, `has no stream "nope"`)

	dst := filepath.Join(dir, "restored")
	r = cliRun(t, env, "restore", "--to", dst)
	expectCode(t, r, 0, "")
	sameTree(t, data, dst)
	if b, _ := os.ReadFile(out); !bytes.Equal(b, want) {
		t.Errorf("restore_command got %d bytes, want %d", len(b), len(want))
	}

	// A stream command that fails fails the backup: never an empty success.
	os.WriteFile(cfg, []byte(`
data { path = "`+data+`" }
backup {
  stream "dump" { command = ["sh", "-c", "echo partial; echo disk on fire >&2; exit 3"] }
}
`), 0o600)
	r = cliRun(t, env, "backup")
	expectCode(t, r, 1, "disk on fire")
	if !strings.Contains(r.stderr, "nothing was committed") || r.stdout != "" {
		t.Errorf("failed backup: stdout %q stderr %s", r.stdout, r.stderr)
	}
}

// TestSnapshotCLIProgressOnATerminal runs a backup with stderr on a real
// pseudo-terminal (one redrawn line) and on a pipe (no redraws at all).
func TestSnapshotCLIProgressOnATerminal(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	makeData(t, data)
	store := "file://" + filepath.Join(dir, "store")

	ptm, pts := openPTY(t)
	cmd := exec.Command(testrig.BuildLifeboat(t), "backup", "--store", store, "--data", data)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	var stdout bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, pts
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pts.Close() // the child holds it now; EOF on ptm when the child is gone
	var screen bytes.Buffer
	copied := make(chan struct{})
	go func() { io.Copy(&screen, ptm); close(copied) }()
	waitErr := make(chan error, 1)
	go func() { waitErr <- cmd.Wait() }()
	select {
	case err := <-waitErr:
		if err != nil {
			t.Fatalf("backup on a terminal: %v\n%s", err, screen.String())
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatal("backup on a terminal did not finish")
	}
	<-copied
	s := screen.String()
	if !strings.Contains(s, "\r\x1b[Kbackup  ") || !strings.Contains(s, "100%") || !strings.Contains(s, "3 / 3 files") {
		t.Errorf("no progress line on the terminal: %q", s)
	}
	if strings.TrimSpace(stdout.String()) == "" || strings.Contains(stdout.String(), "\x1b") {
		t.Errorf("stdout must carry the id only: %q", stdout.String())
	}

	r := cliRun(t, nil, "backup", "--store", store, "--data", data, "--full")
	expectCode(t, r, 0, "")
	if strings.Contains(r.stderr, "\r") || strings.Contains(r.stderr, "\x1b") {
		t.Errorf("terminal codes on a pipe: %q", r.stderr)
	}
}

// openPTY opens a pseudo-terminal pair.
func openPTY(t *testing.T) (ptm, pts *os.File) {
	t.Helper()
	fd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Skipf("no /dev/ptmx: %v", err)
	}
	ptm = os.NewFile(uintptr(fd), "/dev/ptmx")
	t.Cleanup(func() { ptm.Close() })
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	pts, err = os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	unix.IoctlSetWinsize(int(pts.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 24, Col: 160})
	return ptm, pts
}

package hooks

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lifeboat/lifeboat/supervisor/process"
)

// logBuf collects JSON log lines from concurrent writers.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuf) records(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(l.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

func newRunner(t *testing.T) (Runner, *logBuf) {
	t.Helper()
	lb := &logBuf{}
	log := slog.New(slog.NewJSONHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug}))
	return Runner{Logger: log, TempDir: t.TempDir()}, lb
}

func sh(script string) []string { return []string{"/bin/sh", "-c", script} }

func TestEnvironment(t *testing.T) {
	r, _ := newRunner(t)
	r.Env = []string{"PATH=" + os.Getenv("PATH"), "INHERITED=base", "OVERRIDDEN=base"}
	h := Hook{
		Name: "pre_backup",
		Command: sh(`{
			echo "hook=$LIFEBOAT_HOOK"
			echo "phase=$LIFEBOAT_PHASE"
			echo "data=$LIFEBOAT_DATA"
			echo "snapshot=$LIFEBOAT_SNAPSHOT"
			echo "reason=$LIFEBOAT_REASON"
			echo "fencing=$LIFEBOAT_FENCING_TOKEN"
			echo "inherited=$INHERITED"
			echo "overridden=$OVERRIDDEN"
			echo "own=$OWN"
			echo "in_set=${LIFEBOAT_METADATA_IN+yes}"
		} >> "$LIFEBOAT_METADATA_FILE"`),
		Env: map[string]string{"OVERRIDDEN": "hook", "OWN": "mine", "LIFEBOAT_PHASE": "from-hook-env"},
	}
	vars := map[string]string{
		VarPhase:        "backup",
		VarData:         "/data",
		"snapshot":      "abc123",
		VarReason:       "push refs/heads/main",
		VarFencingToken: "42",
	}
	res, err := r.Run(context.Background(), h, vars)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"hook": "pre_backup", "phase": "backup", "data": "/data", "snapshot": "abc123",
		"reason": "push refs/heads/main", "fencing": "42", "inherited": "base",
		"overridden": "hook", "own": "mine", "in_set": "",
	}
	if fmt.Sprint(res.Metadata) != fmt.Sprint(want) {
		t.Fatalf("env seen by the hook:\n got %v\nwant %v", res.Metadata, want)
	}
	if res.ExitCode != 0 || res.Duration <= 0 {
		t.Fatalf("result %+v", res)
	}
}

func TestMetadataRoundTrip(t *testing.T) {
	r, _ := newRunner(t)
	backup := Hook{Name: "pre_backup", Command: sh(`
		printf 'gtid.pos=0-1-42\nbinlog=mysql-bin.000003=77\n\n# a comment\nempty=\n' >> "$LIFEBOAT_METADATA_FILE"
		echo "path=$LIFEBOAT_METADATA_FILE" >> "$LIFEBOAT_METADATA_FILE"
		echo "mode=$(stat -c %a "$LIFEBOAT_METADATA_FILE")" >> "$LIFEBOAT_METADATA_FILE"
	`)}
	res, err := r.Run(context.Background(), backup, nil)
	if err != nil {
		t.Fatal(err)
	}
	md := res.Metadata
	if md["gtid.pos"] != "0-1-42" || md["binlog"] != "mysql-bin.000003=77" || md["empty"] != "" || md["mode"] != "600" {
		t.Fatalf("metadata %v", md)
	}
	if _, err := os.Stat(md["path"]); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("metadata file %s still there after the run: %v", md["path"], err)
	}
	delete(md, "path")
	delete(md, "mode")

	restore := Hook{Name: "post_restore", Command: sh(`
		echo "env_gtid=$LIFEBOAT_META_GTID_POS" >> "$LIFEBOAT_METADATA_FILE"
		echo "env_binlog=$LIFEBOAT_META_BINLOG" >> "$LIFEBOAT_METADATA_FILE"
		echo "in_mode=$(stat -c %a "$LIFEBOAT_METADATA_IN")" >> "$LIFEBOAT_METADATA_FILE"
		sed 's/^/in./' "$LIFEBOAT_METADATA_IN" >> "$LIFEBOAT_METADATA_FILE"
	`)}
	res2, err := r.Run(context.Background(), restore, nil, WithMetadata(md))
	if err != nil {
		t.Fatal(err)
	}
	got := res2.Metadata
	if got["env_gtid"] != "0-1-42" || got["env_binlog"] != "mysql-bin.000003=77" || got["in_mode"] != "600" {
		t.Fatalf("restore hook saw %v", got)
	}
	for k, v := range md {
		if got["in."+k] != v {
			t.Errorf("LIFEBOAT_METADATA_IN: %s=%q, want %q", k, got["in."+k], v)
		}
	}
	left, _ := os.ReadDir(r.TempDir)
	if len(left) != 0 {
		t.Fatalf("files left in the temp dir: %v", left)
	}
}

func TestMalformedMetadata(t *testing.T) {
	r, _ := newRunner(t)
	for _, tc := range []struct{ script, want string }{
		{`printf 'ok=1\nnot a pair\n' > "$LIFEBOAT_METADATA_FILE"`, `metadata line 2 is not key=value: it has no '='`},
		{`printf 'bad key=1\n' > "$LIFEBOAT_METADATA_FILE"`, `metadata line 1 is not key=value: the key (7 bytes before the first '=')`},
		{`printf '=novalue\n' > "$LIFEBOAT_METADATA_FILE"`, `metadata line 1 is not key=value: the key (0 bytes`},
		{`printf 'ok=1\nhunter2-secret\n' > "$LIFEBOAT_METADATA_FILE"`, `metadata line 2 is not key=value`},
		{`head -c 70000 /dev/zero | tr '\0' a > "$LIFEBOAT_METADATA_FILE"`, `larger than 65536 bytes`},
	} {
		_, err := r.Run(context.Background(), Hook{Name: "pre_backup", Command: sh(tc.script)}, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "hook pre_backup") {
			t.Errorf("%s: error %v, want one naming the hook and %s", tc.script, err, tc.want)
		}
		if err != nil && (strings.Contains(err.Error(), "hunter2") || strings.Contains(err.Error(), "novalue") || strings.Contains(err.Error(), "bad key")) {
			t.Errorf("%s: error %v quotes the malformed line", tc.script, err)
		}
	}
}

func TestNonZeroExit(t *testing.T) {
	r, _ := newRunner(t)
	res, err := r.Run(context.Background(), Hook{Name: "pre_backup", Command: sh(`echo partial=1 >> "$LIFEBOAT_METADATA_FILE"; exit 3`)}, nil)
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Code != 3 || err.Error() != "hook pre_backup exited with status 3" {
		t.Fatalf("error %v", err)
	}
	if res.ExitCode != 3 || res.Metadata["partial"] != "1" {
		t.Fatalf("result %+v", res)
	}
}

func TestStartFailure(t *testing.T) {
	r, _ := newRunner(t)
	res, err := r.Run(context.Background(), Hook{Name: "init", Command: []string{"/nonexistent/hook"}}, nil)
	if err == nil || !strings.Contains(err.Error(), "hook init: cannot start") || res.ExitCode != 127 {
		t.Fatalf("err %v res %+v", err, res)
	}
	if _, err := r.Run(context.Background(), Hook{Name: "init"}, nil); err == nil {
		t.Fatal("a hook without a command ran")
	}
	if _, err := r.Run(context.Background(), Hook{Name: "init", Command: []string{"true"}, User: "no-such-user-xyz"}, nil); err == nil || !strings.Contains(err.Error(), "no-such-user-xyz") {
		t.Fatalf("unknown user: %v", err)
	}
}

// gone reports whether pid has exited (absent, or a zombie nobody reaped yet).
func gone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && len(s) > i+2 && s[i+2] == 'Z'
}

func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !gone(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("process %d still alive", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestTimeoutKillsGroupIgnoringSIGTERM(t *testing.T) {
	r, lb := newRunner(t)
	r.KillGrace = 300 * time.Millisecond
	// trap "" TERM is inherited by the children: nothing in the group
	// dies of SIGTERM, only SIGKILL ends it.
	h := Hook{Name: "pre_backup", Timeout: time.Second, Command: sh(`
		trap "" TERM
		sleep 60 &
		echo "child=$!" >> "$LIFEBOAT_METADATA_FILE"
		echo "main=$$" >> "$LIFEBOAT_METADATA_FILE"
		sleep 60
	`)}
	t0 := time.Now()
	res, err := r.Run(context.Background(), h, nil)
	elapsed := time.Since(t0)
	var te *TimeoutError
	if !errors.As(err, &te) || err.Error() != "hook pre_backup timed out after 1s" {
		t.Fatalf("error %v", err)
	}
	if elapsed > 4*time.Second {
		t.Fatalf("Run took %s with timeout 1s and grace 300ms", elapsed)
	}
	if res.ExitCode != 128+9 {
		t.Fatalf("exit code %d, want 137 (SIGKILL)", res.ExitCode)
	}
	for _, k := range []string{"main", "child"} {
		pid, err := strconv.Atoi(res.Metadata[k])
		if err != nil {
			t.Fatalf("metadata %v: %v", res.Metadata, err)
		}
		waitGone(t, pid)
	}
	if !strings.Contains(lb.String(), "SIGKILL") {
		t.Fatalf("no SIGKILL logged:\n%s", lb)
	}
}

func TestTimeoutSIGTERMEnough(t *testing.T) {
	r, _ := newRunner(t)
	r.KillGrace = 30 * time.Second
	t0 := time.Now()
	res, err := r.Run(context.Background(), Hook{Name: "on_demote", Timeout: 200 * time.Millisecond, Command: []string{"sleep", "60"}}, nil)
	if !errors.As(err, new(*TimeoutError)) {
		t.Fatalf("error %v", err)
	}
	if d := time.Since(t0); d > 10*time.Second {
		t.Fatalf("a hook that dies of SIGTERM took %s: the runner waited out the grace period", d)
	}
	if res.ExitCode != 128+15 {
		t.Fatalf("exit code %d, want 143", res.ExitCode)
	}
}

func TestContextCancel(t *testing.T) {
	r, _ := newRunner(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := r.Run(ctx, Hook{Name: "pre_restore", Command: []string{"sleep", "60"}}, nil)
		done <- err
	}()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "hook pre_restore") {
			t.Fatalf("error %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

func TestCanceledBeforeStart(t *testing.T) {
	r, _ := newRunner(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	marker := filepath.Join(t.TempDir(), "ran")
	res, err := r.Run(ctx, Hook{Name: "post_backup", Command: []string{"touch", marker}}, nil)
	if !errors.Is(err, context.Canceled) || res.ExitCode != -1 {
		t.Fatalf("err %v res %+v", err, res)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the hook ran with a canceled context")
	}
}

func TestOutputLoggedWithHookName(t *testing.T) {
	r, lb := newRunner(t)
	long := strings.Repeat("x", maxLine+100)
	h := Hook{Name: "post_backup", Command: sh(`echo "hello out"; echo "hello err" >&2; echo >&2; printf '%s\n' "` + long + `"; printf 'no newline'`)}
	if _, err := r.Run(context.Background(), h, nil); err != nil {
		t.Fatal(err)
	}
	type line struct{ stream, text string }
	var got []line
	total := 0
	for _, rec := range lb.records(t) {
		if rec["msg"] != "hook output" {
			continue
		}
		if rec["hook"] != "post_backup" {
			t.Fatalf("output record without the hook's name: %v", rec)
		}
		s := rec["line"].(string)
		if strings.Trim(s, "x") == "" && s != "" {
			total += len(s)
			continue
		}
		got = append(got, line{rec["stream"].(string), s})
	}
	for _, want := range []line{{"stdout", "hello out"}, {"stderr", "hello err"}, {"stderr", ""}} {
		found := false
		for _, g := range got {
			found = found || g == want
		}
		if !found {
			t.Errorf("missing %v in %v", want, got)
		}
	}
	var tail bool
	for _, g := range got {
		tail = tail || (g.stream == "stdout" && strings.HasPrefix(g.text, "no newline"))
	}
	if !tail {
		t.Errorf("line without newline lost: %v", got)
	}
	if total != len(long) {
		t.Errorf("long line: %d of %d bytes logged", total, len(long))
	}
}

func TestSecretsNotLogged(t *testing.T) {
	r, lb := newRunner(t)
	const secret = "s3cr3t-Vault-Value-9f8e"
	h := Hook{Name: "pre_backup", Env: map[string]string{"DB_PASSWORD": secret},
		Command: sh(`test "$DB_PASSWORD" = "` + secret + `" && echo ok=1 >> "$LIFEBOAT_METADATA_FILE"; echo working; exit 4`)}
	res, err := r.Run(context.Background(), h, nil)
	if err == nil || res.Metadata["ok"] != "1" {
		t.Fatalf("hook did not see its env or did not fail: %v %v", res, err)
	}
	h.Timeout, h.Command = 100*time.Millisecond, []string{"sleep", "5"}
	_, err2 := r.Run(context.Background(), h, nil)
	for _, s := range []string{lb.String(), err.Error(), err2.Error()} {
		if strings.Contains(s, secret) {
			t.Fatalf("secret leaked:\n%s", s)
		}
	}
	if !strings.Contains(lb.String(), "working") {
		t.Fatal("the hook's output was not logged at all: the check above proves nothing")
	}
}

func TestRunAsNobody(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to switch users")
	}
	nobody, err := process.LookupUser("nobody")
	if err != nil {
		t.Skip("no user nobody:", err)
	}
	r, _ := newRunner(t)
	r.TempDir = "" // /tmp: a private t.TempDir is not reachable by nobody
	h := Hook{Name: "post_restore", User: "nobody", Dir: "/", Command: sh(`{
		echo "uid=$(id -u)"; echo "gid=$(id -g)"; echo "user=$USER"
		echo "in=$(cat "$LIFEBOAT_METADATA_IN")"
	} >> "$LIFEBOAT_METADATA_FILE"`)}
	res, err := r.Run(context.Background(), h, nil, WithMetadata(map[string]string{"k": "v"}))
	if err != nil {
		t.Fatal(err)
	}
	if res.Metadata["uid"] != fmt.Sprint(nobody.Uid) || res.Metadata["gid"] != fmt.Sprint(nobody.Gid) ||
		res.Metadata["user"] != "nobody" || res.Metadata["in"] != "k=v" {
		t.Fatalf("metadata %v, want uid %d gid %d", res.Metadata, nobody.Uid, nobody.Gid)
	}
	h.User = fmt.Sprintf("%d:%d", nobody.Uid+1000, nobody.Gid+1000) // ids in no /etc file
	h.Command = sh(`echo "ids=$(id -u):$(id -g)" >> "$LIFEBOAT_METADATA_FILE"`)
	res, err = r.Run(context.Background(), h, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Metadata["ids"] != h.User {
		t.Fatalf("ran as %q, want %q", res.Metadata["ids"], h.User)
	}
}

// TestWithReaper runs hooks the way lifeboat does as PID 1: a reaper owns
// wait4(-1), and every exit status must still reach its own hook.
func TestWithReaper(t *testing.T) {
	reaper := process.NewReaper(slog.New(slog.DiscardHandler))
	defer reaper.Close()
	r, _ := newRunner(t)
	r.Starter = process.CodeStarter{Reaper: reaper}
	r.KillGrace = 200 * time.Millisecond

	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code := i % 4
			res, err := r.Run(context.Background(), Hook{Name: fmt.Sprintf("h%d", i),
				Command: sh(fmt.Sprintf(`echo i=%d >> "$LIFEBOAT_METADATA_FILE"; (sleep 0.05; true) & exit %d`, i, code))}, nil)
			switch {
			case res.ExitCode != code:
				errs <- fmt.Errorf("hook %d: exit code %d, want %d (err %v)", i, res.ExitCode, code, err)
			case code == 0 && err != nil, code != 0 && !errors.As(err, new(*ExitError)):
				errs <- fmt.Errorf("hook %d: error %v", i, err)
			case res.Metadata["i"] != strconv.Itoa(i):
				errs <- fmt.Errorf("hook %d: metadata %v", i, res.Metadata)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	res, err := r.Run(context.Background(), Hook{Name: "pre_backup", Timeout: 200 * time.Millisecond,
		Command: sh(`trap "" TERM; sleep 60`)}, nil)
	if !errors.As(err, new(*TimeoutError)) || res.ExitCode != 137 {
		t.Fatalf("timeout under the reaper: %v %+v", err, res)
	}
}

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lifeboat/lifeboat/internal/testrig"
	"github.com/lifeboat/lifeboat/supervisor/control"
)

// The CLI tests run the built binary against a real control server on a
// real unix socket; only the supervisor behind it is a stand-in.

type cliStatus struct {
	Phase   string `json:"phase"`
	Version string `json:"version"`
	App     struct {
		PID      int  `json:"pid"`
		Up       bool `json:"up"`
		Restarts int  `json:"restarts"`
	} `json:"app"`
	Phases []cliPhase `json:"phases"`
}

type cliPhase struct {
	Name     string `json:"name"`
	Duration string `json:"duration"`
	Error    string `json:"error,omitempty"`
}

// cliSupervisor answers like the real one: backup is the only event; with
// wait it answers with a snapshot id, or the hook failure.
type cliSupervisor struct {
	mu   sync.Mutex
	reqs []control.NotifyRequest
	fail error
}

func (f *cliSupervisor) notify(ctx context.Context, event string, req control.NotifyRequest) (control.NotifyResponse, error) {
	if event != "backup" {
		return control.NotifyResponse{}, fmt.Errorf("unknown event %q; the supervisor knows: backup: %w", event, control.ErrUnknownEvent)
	}
	f.mu.Lock()
	f.reqs = append(f.reqs, req)
	fail := f.fail
	f.mu.Unlock()
	if !req.Wait {
		return control.NotifyResponse{Message: "backup queued"}, nil
	}
	if fail != nil {
		return control.NotifyResponse{}, fail
	}
	return control.NotifyResponse{Snapshot: "5f1c2a9e"}, nil
}

func cliServer(t *testing.T, sup *cliSupervisor) *control.Server {
	t.Helper()
	dir, err := os.MkdirTemp("", "lbcli")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	st := cliStatus{Phase: "serve", Version: "1.0.0"}
	st.App.PID, st.App.Up, st.App.Restarts = 42, true, 1
	st.Phases = []cliPhase{{Name: "restore", Duration: "1.2s"}, {Name: "render", Duration: "3ms"}}
	s, err := control.New(control.Options{
		Socket: filepath.Join(dir, "lb.sock"),
		Status: func(context.Context) (any, error) { return st, nil },
		Notify: sup.notify,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Close(ctx)
	})
	return s
}

type cliResult struct {
	code           int
	stdout, stderr string
}

// cliRun runs the lifeboat binary with env added to a clean environment
// (no LIFEBOAT_* from the caller).
func cliRun(t *testing.T, env []string, args ...string) cliResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, testrig.BuildLifeboat(t), args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}, env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return cliResult{code, out.String(), errb.String()}
}

func TestCLIStatus(t *testing.T) {
	s := cliServer(t, &cliSupervisor{})
	r := cliRun(t, nil, "status", "--socket", s.Path())
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	// Order as the supervisor wrote it, nested sections, a table of phases.
	for _, want := range []string{
		"phase:    serve\nversion:  1.0.0\napp:\n  pid:       42\n  up:        yes\n  restarts:  1\n",
		"phases:\n  NAME     DURATION\n  restore  1.2s\n  render   3ms\n(via " + s.Path() + ")\n",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("status output lacks\n%s\ngot:\n%s", want, r.stdout)
		}
	}

	r = cliRun(t, []string{"LIFEBOAT_SOCKET=" + s.Path()}, "status", "--json")
	var got cliStatus
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &got) != nil || got.App.PID != 42 || len(got.Phases) != 2 {
		t.Fatalf("status --json: exit %d, %q %s", r.code, r.stdout, r.stderr)
	}
}

func TestCLISocketFromConfig(t *testing.T) {
	s := cliServer(t, &cliSupervisor{})
	cfg := filepath.Join(t.TempDir(), "lifeboat.hcl")
	os.WriteFile(cfg, []byte(fmt.Sprintf("control {\n  socket = %q\n}\n", s.Path())), 0o644)
	for _, env := range [][]string{nil, {"LIFEBOAT_CONFIG=" + cfg}} {
		args := []string{"status", "--json"}
		if env == nil {
			args = append(args, "--config", cfg)
		}
		if r := cliRun(t, env, args...); r.code != 0 {
			t.Fatalf("env %v: exit %d: %s", env, r.code, r.stderr)
		}
	}
	// An explicitly named config that does not load is a usage error.
	bad := filepath.Join(t.TempDir(), "bad.hcl")
	os.WriteFile(bad, []byte("contrl {}\n"), 0o644)
	if r := cliRun(t, nil, "status", "--config", bad); r.code != 2 || !strings.Contains(r.stderr, bad) {
		t.Fatalf("bad config: exit %d: %s", r.code, r.stderr)
	}
}

func TestCLINothingListening(t *testing.T) {
	path := filepath.Join(t.TempDir(), "none.sock")
	for _, args := range [][]string{{"status"}, {"status", "--json"}, {"notify", "backup"}, {"notify", "backup", "--wait"}} {
		r := cliRun(t, []string{"LIFEBOAT_SOCKET=" + path}, args...)
		want := "no lifeboat supervisor is listening on " + path + " (is `lifeboat run` running? set LIFEBOAT_SOCKET)"
		if r.code != 1 || !strings.Contains(r.stderr, want) || r.stdout != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", args, r.code, r.stdout, r.stderr)
		}
	}
}

func TestCLINotify(t *testing.T) {
	sup := &cliSupervisor{}
	s := cliServer(t, sup)
	env := []string{"LIFEBOAT_SOCKET=" + s.Path()}

	r := cliRun(t, env, "notify", "backup", "--reason", "before migration")
	if r.code != 0 || !strings.Contains(r.stderr, "backup accepted: backup queued") || r.stdout != "" {
		t.Fatalf("notify: exit %d %q %q", r.code, r.stdout, r.stderr)
	}
	// Flags before the event work too; --wait prints only the id on stdout.
	r = cliRun(t, env, "notify", "--wait", "--reason=nightly", "backup")
	if r.code != 0 || r.stdout != "5f1c2a9e\n" {
		t.Fatalf("notify --wait: exit %d %q %q", r.code, r.stdout, r.stderr)
	}
	r = cliRun(t, env, "notify", "backup", "--wait", "--json")
	var resp control.NotifyResponse
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &resp) != nil || resp.Snapshot != "5f1c2a9e" || resp.Event != "backup" {
		t.Fatalf("notify --json: exit %d %q %q", r.code, r.stdout, r.stderr)
	}
	sup.mu.Lock()
	reqs := append([]control.NotifyRequest(nil), sup.reqs...)
	sup.mu.Unlock()
	want := []control.NotifyRequest{{Reason: "before migration"}, {Reason: "nightly", Wait: true}, {Wait: true}}
	if fmt.Sprint(reqs) != fmt.Sprint(want) {
		t.Fatalf("supervisor got %+v, want %+v", reqs, want)
	}
}

func TestCLINotifyErrors(t *testing.T) {
	sup := &cliSupervisor{fail: errors.New("snapshot failed: hook pre_backup exited with status 3")}
	s := cliServer(t, sup)
	env := []string{"LIFEBOAT_SOCKET=" + s.Path()}

	r := cliRun(t, env, "notify", "backup", "--wait")
	if r.code != 1 || r.stdout != "" || !strings.Contains(r.stderr, "lifeboat notify backup: snapshot failed: hook pre_backup exited with status 3") {
		t.Fatalf("failed backup: exit %d %q %q", r.code, r.stdout, r.stderr)
	}
	r = cliRun(t, env, "notify", "bakup")
	if r.code != 2 || !strings.Contains(r.stderr, `unknown event "bakup"`) {
		t.Fatalf("unknown event: exit %d %q", r.code, r.stderr)
	}
	for _, args := range [][]string{{"notify"}, {"notify", "backup", "extra"}, {"notify", "--bogus", "backup"}, {"status", "extra"}} {
		if r := cliRun(t, env, args...); r.code != 2 {
			t.Errorf("%v: exit %d, want 2 (usage)", args, r.code)
		}
	}
}

func TestCLISocketIsOwnerOnly(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run the client as another user")
	}
	s := cliServer(t, &cliSupervisor{})
	// Let others reach the directory, so only the socket's own mode decides.
	os.Chmod(filepath.Dir(s.Path()), 0o755)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, testrig.BuildLifeboat(t), "status", "--socket", s.Path())
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), "permission denied; it is mode 0600") {
		t.Fatalf("as nobody: %v: %s", err, out)
	}
}

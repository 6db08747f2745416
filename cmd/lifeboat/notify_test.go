package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lifeboat/lifeboat/internal/testrig"
	"github.com/lifeboat/lifeboat/supervisor/control"
)

// TestCLIAgainstLifeboatRun runs the real supervisor (`lifeboat run --
// sleep`) and talks to it with the real CLI: status, metrics, notify
// errors, and the socket's removal when the supervisor stops.
func TestCLIAgainstLifeboatRun(t *testing.T) {
	bin := testrig.BuildLifeboat(t)
	dir, err := os.MkdirTemp("", "lbrun")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "lb.sock")
	data := filepath.Join(dir, "data")
	os.Mkdir(data, 0o755)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	run := exec.CommandContext(ctx, bin, "run", "--socket", sock, "--data", data, "--log-format", "json", "--", "sleep", "600")
	run.Env = []string{"PATH=" + os.Getenv("PATH")}
	// A file, not a buffer: the logs are read while lifeboat still writes.
	logf, err := os.Create(filepath.Join(dir, "run.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	run.Stdout, run.Stderr = logf, logf
	logs := func() string { b, _ := os.ReadFile(logf.Name()); return string(b) }
	run.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- run.Wait() }()
	t.Cleanup(func() {
		testrig.KillTree(run.Process.Pid) // the app leads a process group of its own
		<-exited
	})

	env := []string{"LIFEBOAT_SOCKET=" + sock}
	// Wait until the app runs, as the status says.
	var st struct {
		Phase string `json:"phase"`
		App   struct {
			Running bool `json:"running"`
			Pid     int  `json:"pid"`
		} `json:"app"`
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		r := cliRun(t, env, "status", "--json")
		if r.code == 0 && json.Unmarshal([]byte(r.stdout), &st) == nil && st.App.Running {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("app never ran per status: exit %d %q %q\nlogs:\n%s", r.code, r.stdout, r.stderr, logs())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st.App.Pid <= 0 {
		t.Fatalf("status: %+v", st)
	}
	fi, err := os.Lstat(sock)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket: %v %v", fi, err)
	}

	r := cliRun(t, env, "status")
	if r.code != 0 || !strings.Contains(r.stdout, "app:") || !strings.Contains(r.stdout, "(via "+sock+")") {
		t.Fatalf("status: exit %d %q %q", r.code, r.stdout, r.stderr)
	}

	c, err := control.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	text, err := c.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"lifeboat_app_up 1", "lifeboat_build_info{", `lifeboat_phase{phase="serve"} 1`, "process_resident_memory_bytes"} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	r = cliRun(t, env, "notify", "bakup")
	if r.code != 2 || !strings.Contains(r.stderr, `unknown event "bakup"`) {
		t.Errorf("notify bakup: exit %d %q", r.code, r.stderr)
	}

	// A second supervisor on the same socket is refused; the first goes on.
	second := exec.CommandContext(ctx, bin, "run", "--socket", sock, "--", "true")
	second.Env = run.Env
	out, err := second.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "another supervisor is listening on "+sock) {
		t.Errorf("second supervisor: %v\n%s", err, out)
	}
	if r := cliRun(t, env, "status", "--json"); r.code != 0 {
		t.Errorf("first supervisor broken by the second: %q", r.stderr)
	}

	// On SIGTERM the supervisor stops the app, exits, and removes its socket.
	run.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
		exited <- nil // for the cleanup
	case <-ctx.Done():
		t.Fatalf("lifeboat run did not exit on SIGTERM\n%s", logs())
	}
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left after the supervisor exited: %v", err)
	}
	r = cliRun(t, env, "status")
	if r.code != 1 || !strings.Contains(r.stderr, "no lifeboat supervisor is listening on "+sock) {
		t.Errorf("status after exit: %d %q", r.code, r.stderr)
	}
}

package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat/lifeboat/internal/testrig"
)

// TestAppGetsTheTerminal runs lifeboat on a real pseudo-terminal (util-linux
// script(1) allocates it): the app must see its stdin and stdout as that
// terminal, read what is typed, and its output must come through as the
// app wrote it.
func TestAppGetsTheTerminal(t *testing.T) {
	bin := testrig.BuildLifeboat(t)
	script := testrig.Binary(t, "script")
	sock := filepath.Join(t.TempDir(), "lb.sock")
	app := `test -t 0 && test -t 1 && echo stdin-and-stdout-are-a-tty; read line; echo "typed:$line"`
	inner := bin + " run --log-level error --socket " + sock + " -- sh -c '" + app + "'"

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, script, "--quiet", "--return", "--command", inner, "/dev/null")
	cmd.Stdin = strings.NewReader("hello-through-the-pty\n")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "TERM=dumb"}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("lifeboat on a terminal: %v\n%s", err, out)
	}
	for _, want := range []string{"stdin-and-stdout-are-a-tty", "typed:hello-through-the-pty"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// TestSecondSupervisorOnDefaultSocketRefused checks that a second
// `lifeboat run` on the default socket (/run/lifeboat.sock, here a private
// tmpfs in a mount namespace) refuses to start its app instead of running
// without a socket, while the first keeps serving.
func TestSecondSupervisorOnDefaultSocketRefused(t *testing.T) {
	needRoot(t)
	bin := testrig.BuildLifeboat(t)
	unshare := testrig.Binary(t, "unshare")
	marker := filepath.Join(t.TempDir(), "second-app-ran")
	sh := `set -u
mount -t tmpfs tmpfs /run
"$LB" run --log-format json -- sleep 60 &
first=$!
i=0
until [ -S /run/lifeboat.sock ]; do
  i=$((i+1)); [ $i -gt 200 ] && { echo "first supervisor never opened /run/lifeboat.sock"; exit 90; }
  sleep 0.05
done
"$LB" run --log-format json -- touch "$MARKER"
echo "second-exit=$?"
"$LB" status >/dev/null && echo first-still-serving
kill -TERM $first; wait $first || true
`
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, unshare, "--mount", "--propagation", "private", "sh", "-c", sh)
	env := []string{"PATH=" + os.Getenv("PATH"), "LB=" + bin, "MARKER=" + marker}
	cmd.Env = env // no LIFEBOAT_SOCKET or XDG_RUNTIME_DIR: the default path
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	text := string(out)
	if !strings.Contains(text, "second-exit=1") || !strings.Contains(text, "another supervisor is listening on /run/lifeboat.sock") {
		t.Errorf("second supervisor on the default socket was not refused with exit 1:\n%s", text)
	}
	if !strings.Contains(text, "first-still-serving") {
		t.Errorf("first supervisor stopped serving:\n%s", text)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Errorf("the second supervisor started its app")
	}
}

// TestAppUserMayUseTheSocket runs the app as nobody; the app itself calls
// `lifeboat status` over the control socket, which lifeboat (root) opened
// for the app user's primary group.
func TestAppUserMayUseTheSocket(t *testing.T) {
	needRoot(t)
	bin := testrig.BuildLifeboat(t)
	dir, err := os.MkdirTemp("", "lbgrp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	sock := filepath.Join(dir, "lb.sock")
	app := fmt.Sprintf(`id -u; %s status --socket %s >/dev/null && echo app-reached-the-socket`, bin, sock)
	in := start(t, runOpts{pid1: true, socket: sock, config: "app {\n  user = \"nobody\"\n}\n"}, "sh", "-c", app)
	if code := in.wait(30 * time.Second); code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, in.stdout, in.stderr)
	}
	if out := in.stdout.String(); !strings.Contains(out, "65534") || !strings.Contains(out, "app-reached-the-socket") {
		t.Errorf("the app (as nobody) could not use the socket:\n%s\n%s", out, in.stderr)
	}
}

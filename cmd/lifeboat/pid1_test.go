package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lifeboat/lifeboat/internal/testrig"
	"github.com/lifeboat/lifeboat/supervisor/control"
)

// These tests run the real lifeboat binary as PID 1 of a new PID namespace
// (unshare --pid --fork --mount-proc), the way a container runtime starts
// an entrypoint, with small shell scripts as the app.

// instance is one lifeboat run under test.
type instance struct {
	t      *testing.T
	cmd    *exec.Cmd
	stderr *syncBuffer
	stdout *syncBuffer
	done   chan struct{}
	status int
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// runOpts describes one run.
type runOpts struct {
	config string   // HCL text; "" for none
	pid1   bool     // run as PID 1 of a new PID namespace
	prefix []string // wrapper inside the namespace (e.g. setpriv)
	env    []string
	socket string // control socket path; "" for one in a temp dir
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		testrig.Missing(t, "PID-namespace tests need root (unshare --pid)")
	}
}

// start starts lifeboat run -- app... and returns at once.
func start(t *testing.T, o runOpts, app ...string) *instance {
	t.Helper()
	bin := testrig.BuildLifeboat(t)
	if o.socket == "" {
		o.socket = filepath.Join(t.TempDir(), "lb.sock")
	}
	args := []string{"run", "--log-format", "json", "--log-level", "debug", "--socket", o.socket}
	if o.config != "" {
		p := filepath.Join(t.TempDir(), "lifeboat.hcl")
		if err := os.WriteFile(p, []byte(o.config), 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--config", p)
	}
	args = append(args, "--")
	args = append(args, app...)
	var cmd *exec.Cmd
	if o.pid1 {
		needRoot(t)
		unshare := testrig.Binary(t, "unshare")
		full := append([]string{"--pid", "--fork", "--mount-proc", "--kill-child"}, o.prefix...)
		full = append(full, bin)
		cmd = exec.Command(unshare, append(full, args...)...)
	} else {
		cmd = exec.Command(bin, args...)
	}
	cmd.Env = append(os.Environ(), o.env...)
	in := &instance{t: t, cmd: cmd, stderr: &syncBuffer{}, stdout: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stderr, cmd.Stdout = in.stderr, in.stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		err := cmd.Wait()
		in.status = 0
		if ee, ok := err.(*exec.ExitError); ok {
			in.status = ee.ExitCode()
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				in.status = 128 + int(ws.Signal())
			}
		}
		close(in.done)
	}()
	t.Cleanup(func() {
		select {
		case <-in.done:
		default:
			cmd.Process.Kill()
			<-in.done
		}
	})
	return in
}

// lifeboatPid is the host pid of lifeboat itself (the child of unshare when
// it runs as PID 1 of a namespace).
func (in *instance) lifeboatPid() int {
	in.t.Helper()
	if !strings.HasSuffix(in.cmd.Path, "unshare") {
		return in.cmd.Process.Pid
	}
	parent := strconv.Itoa(in.cmd.Process.Pid)
	var pid int
	waitFor(in.t, 10*time.Second, "lifeboat to start under unshare", func() bool {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%s/task/%s/children", parent, parent))
		if err != nil {
			return false
		}
		f := strings.Fields(string(b))
		if len(f) == 0 {
			return false
		}
		pid, _ = strconv.Atoi(f[0])
		return pid != 0
	})
	return pid
}

func (in *instance) signal(sig syscall.Signal) {
	in.t.Helper()
	if err := syscall.Kill(in.lifeboatPid(), sig); err != nil {
		in.t.Fatalf("kill %v: %v", sig, err)
	}
}

// wait waits for lifeboat to exit and returns its status.
func (in *instance) wait(timeout time.Duration) int {
	in.t.Helper()
	select {
	case <-in.done:
		return in.status
	case <-time.After(timeout):
		in.t.Fatalf("lifeboat still running after %s; stderr:\n%s", timeout, in.stderr.String())
		return -1
	}
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func fileContains(path, s string) func() bool {
	return func() bool {
		b, _ := os.ReadFile(path)
		return strings.Contains(string(b), s)
	}
}

func TestExitStatusPassthrough(t *testing.T) {
	for _, code := range []int{0, 1, 3, 42, 255} {
		in := start(t, runOpts{pid1: true}, "sh", "-c", fmt.Sprintf("exit %d", code))
		if got := in.wait(30 * time.Second); got != code {
			t.Errorf("app exit %d: lifeboat exited %d; stderr:\n%s", code, got, in.stderr)
		}
	}
}

func TestDeathBySignalIs128PlusN(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGUSR1, syscall.SIGSEGV} {
		in := start(t, runOpts{pid1: true}, "sh", "-c", fmt.Sprintf("kill -%d $$", int(sig)))
		if got, want := in.wait(30*time.Second), 128+int(sig); got != want {
			t.Errorf("app killed by %v: lifeboat exited %d, want %d; stderr:\n%s", sig, got, want, in.stderr)
		}
	}
}

func TestCommandNotFoundAndNotExecutable(t *testing.T) {
	in := start(t, runOpts{pid1: true}, "no-such-command-anywhere")
	if got := in.wait(30 * time.Second); got != 127 {
		t.Errorf("not found: status %d, want 127", got)
	}
	if !strings.Contains(in.stderr.String(), "command not found: no-such-command-anywhere") {
		t.Errorf("no clear message:\n%s", in.stderr)
	}
	script := filepath.Join(t.TempDir(), "not-executable.sh")
	os.WriteFile(script, []byte("#!/bin/sh\nexit 0\n"), 0o644)
	in = start(t, runOpts{pid1: true}, script)
	if got := in.wait(30 * time.Second); got != 126 {
		t.Errorf("not executable: status %d, want 126", got)
	}
	if !strings.Contains(in.stderr.String(), "cannot execute") {
		t.Errorf("no clear message:\n%s", in.stderr)
	}
}

func TestNoAppCommandIsUsageError(t *testing.T) {
	in := start(t, runOpts{})
	if got := in.wait(30 * time.Second); got != 2 {
		t.Errorf("status %d, want 2", got)
	}
}

// zombieCheck spawns n double-forked sleeps, which become orphans of PID 1
// (or of the subreaper), waits until none is alive, and then until none is
// a zombie, printing the counts. Unreaped orphans stay zombies to the end.
const zombieCheck = `
n=$1
for i in $(seq $n); do sh -c 'sleep 0.3 &'; done
end=$(( $(date +%s) + 20 ))
seen=0
while :; do
  live=0; zombies=0
  for st in /proc/[0-9]*/stat; do
    read -r line < "$st" 2>/dev/null || continue
    case "$line" in
      *"(sleep)"*) s=${line##*) }; state=${s%% *}
        # Only this app's process group ($$ leads it): other tests' sleeps
        # on the same host are not ours to count.
        set -- $s; [ "$3" = "$$" ] || continue
        if [ "$state" = Z ]; then zombies=$((zombies+1)); else live=$((live+1)); fi ;;
    esac
  done
  [ $live -gt $seen ] && seen=$live
  if [ $live -eq 0 ] && [ $zombies -eq 0 ]; then break; fi
  if [ $(date +%s) -gt $end ]; then break; fi
  sleep 0.05
done
echo "live=$live zombies=$zombies"
echo "seen=$seen" >&2
`

func TestOrphansAreReapedAsPID1(t *testing.T) {
	in := start(t, runOpts{pid1: true}, "sh", "-c", zombieCheck, "zombie-check", "200")
	if got := in.wait(60 * time.Second); got != 0 {
		t.Fatalf("status %d; stderr:\n%s", got, in.stderr)
	}
	sawOrphans(t, in.stderr.String())
	if out := strings.TrimSpace(in.stdout.String()); out != "live=0 zombies=0" {
		t.Fatalf("200 orphans not all reaped: %s", out)
	}
}

func TestSubreaperWhenNotPID1(t *testing.T) {
	// The orphan's parent must become lifeboat itself, and it must be reaped.
	dir := t.TempDir()
	script := `sh -c 'sleep 0.5 & echo $! > ` + dir + `/orphan'
while [ ! -s ` + dir + `/orphan ] ; do sleep 0.01; done
grep PPid /proc/$(cat ` + dir + `/orphan)/status | tr -d '\t' > ` + dir + `/ppid
` + zombieCheck
	in := start(t, runOpts{}, "sh", "-c", script, "subreaper", "20")
	pid := in.lifeboatPid()
	if got := in.wait(60 * time.Second); got != 0 {
		t.Fatalf("status %d; stderr:\n%s", got, in.stderr)
	}
	ppid, _ := os.ReadFile(dir + "/ppid")
	if strings.TrimSpace(string(ppid)) != fmt.Sprintf("PPid:%d", pid) {
		t.Errorf("orphan's parent is %q, want lifeboat (pid %d)", ppid, pid)
	}
	sawOrphans(t, in.stderr.String())
	if out := strings.TrimSpace(in.stdout.String()); out != "live=0 zombies=0" {
		t.Fatalf("orphans not reaped by the subreaper: %s", out)
	}
}

// sawOrphans fails the test when the zombie check never saw one of its
// orphans alive: its counting would then prove nothing.
func sawOrphans(t *testing.T, stderr string) {
	t.Helper()
	if !regexp.MustCompile(`seen=[1-9]`).MatchString(stderr) {
		t.Fatalf("the zombie check never saw an orphan (its filter matches nothing); stderr:\n%s", stderr)
	}
}

// trapAll is an app that records every signal it gets in $OUT.
const trapAll = `
for s in HUP INT QUIT USR1 USR2 WINCH TERM; do
  trap "echo $s >> $OUT; case $s in INT|TERM) exit 0;; esac" $s
done
echo ready > $READY
while :; do sleep 0.02; done
`

func TestEverySignalReachesTheApp(t *testing.T) {
	for _, last := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		dir := t.TempDir()
		out, ready := filepath.Join(dir, "out"), filepath.Join(dir, "ready")
		in := start(t, runOpts{pid1: true, env: []string{"OUT=" + out, "READY=" + ready}}, "sh", "-c", trapAll)
		waitFor(t, 10*time.Second, "the app to be ready", fileContains(ready, "ready"))
		for _, sig := range []syscall.Signal{syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGWINCH} {
			in.signal(sig)
			name := strings.TrimPrefix(sigName(sig), "SIG")
			waitFor(t, 10*time.Second, name+" to reach the app", fileContains(out, name))
		}
		in.signal(last)
		if got := in.wait(20 * time.Second); got != 0 {
			t.Errorf("after %v: status %d, want 0 (the app exits 0 from its trap); stderr:\n%s", last, got, in.stderr)
		}
		if name := strings.TrimPrefix(sigName(last), "SIG"); !fileContains(out, name)() {
			t.Errorf("%s did not reach the app", name)
		}
	}
}

func sigName(s syscall.Signal) string {
	return map[syscall.Signal]string{syscall.SIGHUP: "SIGHUP", syscall.SIGINT: "SIGINT", syscall.SIGQUIT: "SIGQUIT",
		syscall.SIGUSR1: "SIGUSR1", syscall.SIGUSR2: "SIGUSR2", syscall.SIGWINCH: "SIGWINCH", syscall.SIGTERM: "SIGTERM"}[s]
}

func TestGroupModeReachesGrandchild(t *testing.T) {
	app := `
trap 'echo app >> $OUT' USR1
sh -c 'trap "echo grandchild >> $OUT; exit 0" USR1; echo ready > $READY; while :; do sleep 0.02; done' &
while :; do sleep 0.02; done
`
	for _, group := range []bool{true, false} {
		dir := t.TempDir()
		out, ready := filepath.Join(dir, "out"), filepath.Join(dir, "ready")
		in := start(t, runOpts{pid1: true, config: fmt.Sprintf("app {\n  signal_group = %t\n  stop_timeout = \"2s\"\n}\n", group),
			env: []string{"OUT=" + out, "READY=" + ready}}, "sh", "-c", app)
		waitFor(t, 10*time.Second, "the app to be ready", fileContains(ready, "ready"))
		in.signal(syscall.SIGUSR1)
		waitFor(t, 10*time.Second, "USR1 to reach the app", fileContains(out, "app"))
		if group {
			waitFor(t, 10*time.Second, "USR1 to reach the grandchild", fileContains(out, "grandchild"))
		} else if fileContains(out, "grandchild")() {
			t.Error("without signal_group the grandchild got the signal")
		}
		in.signal(syscall.SIGTERM)
		in.wait(20 * time.Second)
	}
}

func TestIgnoredTermIsKilledAfterStopTimeout(t *testing.T) {
	dir := t.TempDir()
	ready := filepath.Join(dir, "ready")
	in := start(t, runOpts{pid1: true, config: "app {\n  stop_timeout = \"1s\"\n}\n", env: []string{"READY=" + ready}},
		"sh", "-c", `trap '' TERM; echo ready > $READY; while :; do sleep 0.02; done`)
	waitFor(t, 10*time.Second, "the app to be ready", fileContains(ready, "ready"))
	t0 := time.Now()
	in.signal(syscall.SIGTERM)
	got := in.wait(20 * time.Second)
	if got != 137 {
		t.Errorf("status %d, want 137 (SIGKILL)", got)
	}
	if d := time.Since(t0); d < time.Second {
		t.Errorf("killed after %s, before stop_timeout", d)
	}
	if !strings.Contains(in.stderr.String(), "did not stop in time") {
		t.Errorf("log does not say why the app was killed:\n%s", in.stderr)
	}
}

func TestSecondTermKillsAtOnce(t *testing.T) {
	dir := t.TempDir()
	ready := filepath.Join(dir, "ready")
	in := start(t, runOpts{pid1: true, config: "app {\n  stop_timeout = \"5m\"\n}\n", env: []string{"READY=" + ready}},
		"sh", "-c", `trap '' TERM; echo ready > $READY; while :; do sleep 0.02; done`)
	waitFor(t, 10*time.Second, "the app to be ready", fileContains(ready, "ready"))
	in.signal(syscall.SIGTERM)
	waitFor(t, 10*time.Second, "lifeboat to start stopping", func() bool { return strings.Contains(in.stderr.String(), "stopping app") })
	in.signal(syscall.SIGTERM)
	if got := in.wait(10 * time.Second); got != 137 {
		t.Errorf("status %d, want 137", got)
	}
}

func TestAppRunsAsConfiguredUser(t *testing.T) {
	needRoot(t)
	in := start(t, runOpts{pid1: true, config: "app {\n  user = \"nobody\"\n}\n"}, "sh", "-c", `echo "$(id -u):$(id -g):$HOME"`)
	if got := in.wait(30 * time.Second); got != 0 {
		t.Fatalf("status %d; stderr:\n%s", got, in.stderr)
	}
	if out := strings.TrimSpace(in.stdout.String()); !strings.HasPrefix(out, "65534:65534:") {
		t.Errorf("app ran as %q, want nobody (65534:65534)", out)
	}
	in = start(t, runOpts{pid1: true, config: "app {\n  user = \"1234:4321\"\n}\n"}, "sh", "-c", `echo "$(id -u):$(id -g)"`)
	in.wait(30 * time.Second)
	if out := strings.TrimSpace(in.stdout.String()); out != "1234:4321" {
		t.Errorf("numeric user: app ran as %q, want 1234:4321", out)
	}
	in = start(t, runOpts{pid1: true, config: "app {\n  user = \"no-such-user\"\n}\n"}, "true")
	if got := in.wait(30 * time.Second); got != 126 || !strings.Contains(in.stderr.String(), `user \"no-such-user\": not found`) {
		t.Errorf("unknown user: status %d, stderr:\n%s", got, in.stderr)
	}
}

func TestLifeboatRunsAsNonRootUser(t *testing.T) {
	setpriv := testrig.Binary(t, "setpriv")
	// A socket directory the unprivileged lifeboat can write.
	dir, err := os.MkdirTemp("", "lifeboat-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o777)
	in := start(t, runOpts{pid1: true, socket: filepath.Join(dir, "lb.sock"), prefix: []string{setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"}},
		"sh", "-c", zombieCheck+`id -u`, "zombie-check", "20")
	if got := in.wait(60 * time.Second); got != 0 {
		t.Fatalf("status %d; stderr:\n%s", got, in.stderr)
	}
	if out := in.stdout.String(); !strings.Contains(out, "live=0 zombies=0") || !strings.Contains(out, "65534") {
		t.Errorf("as nobody: %s", out)
	}
}

func TestRestartPolicies(t *testing.T) {
	cases := []struct {
		policy   string
		app      string
		wantRuns int
		want     int
	}{
		{"never", "exit 1", 1, 1},
		{"on-failure", "exit 1", 3, 1},
		{"on-failure", "exit 0", 1, 0},
		{"always", "exit 0", 3, 0},
	}
	for _, tc := range cases {
		dir := t.TempDir()
		out := filepath.Join(dir, "runs")
		cfg := fmt.Sprintf("app {\n  restart {\n    policy = %q\n    max_restarts = 2\n    backoff_initial = \"10ms\"\n    backoff_max = \"20ms\"\n  }\n}\n", tc.policy)
		in := start(t, runOpts{pid1: true, config: cfg, env: []string{"OUT=" + out}}, "sh", "-c", "echo run >> $OUT; "+tc.app)
		got := in.wait(30 * time.Second)
		b, _ := os.ReadFile(out)
		runs := strings.Count(string(b), "run")
		if runs != tc.wantRuns || got != tc.want {
			t.Errorf("%s / %s: %d runs, status %d; want %d runs, status %d", tc.policy, tc.app, runs, got, tc.wantRuns, tc.want)
		}
	}
}

func TestTermDuringRestartBackoffStops(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "runs")
	cfg := "app {\n  restart {\n    policy = \"always\"\n    max_restarts = 100\n    backoff_initial = \"1m\"\n    backoff_max = \"1m\"\n  }\n}\n"
	in := start(t, runOpts{pid1: true, config: cfg, env: []string{"OUT=" + out}}, "sh", "-c", "echo run >> $OUT; exit 3")
	waitFor(t, 10*time.Second, "the app to run once", fileContains(out, "run"))
	waitFor(t, 10*time.Second, "the restart backoff", func() bool { return strings.Contains(in.stderr.String(), "restarting") })
	in.signal(syscall.SIGTERM)
	if got := in.wait(10 * time.Second); got != 3 {
		t.Errorf("status %d, want the app's last status 3", got)
	}
}

func TestStatusAndMetricsOfRunningSupervisor(t *testing.T) {
	dir := t.TempDir()
	sock, ready := filepath.Join(dir, "lb.sock"), filepath.Join(dir, "ready")
	in := start(t, runOpts{pid1: true, socket: sock, env: []string{"READY=" + ready}},
		"sh", "-c", `echo ready > $READY; while :; do sleep 0.02; done`)
	waitFor(t, 10*time.Second, "the app to be ready", fileContains(ready, "ready"))
	bin := testrig.BuildLifeboat(t)
	var st struct {
		Phase string
		App   struct {
			Command string
			Running bool
			Pid     int
		}
		Phases []struct{ Name string }
	}
	waitFor(t, 10*time.Second, "status to show the serve phase", func() bool {
		out, err := exec.Command(bin, "status", "--json", "--socket", sock).Output()
		return err == nil && json.Unmarshal(out, &st) == nil && st.Phase == "serve"
	})
	// Inside the PID namespace lifeboat is 1 and the app is its child.
	if !st.App.Running || st.App.Pid < 2 || st.App.Command != "sh" {
		t.Errorf("status app = %+v", st.App)
	}
	if len(st.Phases) < 2 || st.Phases[0].Name != "load" || st.Phases[1].Name != "start" {
		t.Errorf("status phases = %+v", st.Phases)
	}
	out, err := exec.Command(bin, "status", "--socket", sock).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "serve") {
		t.Errorf("status table: %v\n%s", err, out)
	}
	c, err := control.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	metrics, err := c.Metrics(context.Background())
	c.Close()
	for _, want := range []string{"lifeboat_app_up 1", "lifeboat_build_info", `lifeboat_phase_duration_seconds{phase="start"}`} {
		if err != nil || !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %q (err %v)", want, err)
		}
	}
	// No backups configured: notify says so and exits non-zero.
	out, err = exec.Command(bin, "notify", "backup", "--socket", sock).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "backups are not configured") {
		t.Errorf("notify backup without backups: %v\n%s", err, out)
	}
	in.signal(syscall.SIGTERM)
	if got := in.wait(20 * time.Second); got != 143 {
		t.Errorf("status %d, want 143 (the app died of SIGTERM)", got)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left behind after exit: %v", err)
	}
	if !strings.Contains(in.stderr.String(), `"phase":"shutdown"`) {
		t.Errorf("no shutdown phase line:\n%s", in.stderr)
	}
}

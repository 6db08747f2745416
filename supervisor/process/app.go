package process

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"golang.org/x/term"
)

// Restart policies.
const (
	RestartNever     = "never"
	RestartOnFailure = "on-failure"
	RestartAlways    = "always"
)

// Spec is how to run the app.
type Spec struct {
	Command     []string
	Env         []string // configured env, KEY=VALUE, added to the inherited env
	Dir         string   // working directory; "" inherits lifeboat's
	User        string   // "name", "uid", "name:group" or "uid:gid"; "" runs as lifeboat's user
	SignalGroup bool     // forward signals to the app's whole process group

	// StopSignal is sent to stop the app; 0 sends the signal lifeboat
	// received (SIGTERM or SIGINT).
	StopSignal  unix.Signal
	StopTimeout time.Duration

	RestartPolicy  string // never | on-failure | always
	MaxRestarts    int
	BackoffInitial time.Duration
	BackoffMax     time.Duration
}

// StartError is a failure to start the app at all; Status is 127 when the
// command was not found and 126 when it could not be executed.
type StartError struct {
	Command string
	Status  int
	Err     error
}

func (e *StartError) Error() string {
	what := "cannot execute"
	if e.Status == 127 {
		what = "command not found"
	}
	return fmt.Sprintf("%s: %s: %v", what, e.Command, e.Err)
}

func (e *StartError) Unwrap() error { return e.Err }

// App runs and supervises the app: one incarnation at a time, restarted
// per the policy, stopped on request.
type App struct {
	spec   Spec
	reaper *Reaper
	log    *slog.Logger

	mu          sync.Mutex
	pid         int
	started     time.Time
	restarts    int
	stopping    bool        // Stop was called: no more restarts
	restarting  bool        // Restart was called: start again once this incarnation ends
	stopSignals int         // how many stop requests arrived
	killTimer   *time.Timer // SIGKILL after StopTimeout
	lastExit    *Exit

	stopCh   chan struct{} // closed by the first Stop
	stopOnce sync.Once

	startedCh chan struct{} // closed when the first incarnation is running
	startOnce sync.Once

	// OnStart and OnExit, when set before Run, are called as each
	// incarnation starts and ends (for metrics and status).
	OnStart func(pid int, restart bool)
	OnExit  func(Exit)
}

// NewApp prepares the app; Run starts it.
func NewApp(spec Spec, reaper *Reaper, log *slog.Logger) *App {
	return &App{spec: spec, reaper: reaper, log: log, stopCh: make(chan struct{}), startedCh: make(chan struct{})}
}

// Pid is the current incarnation's pid, 0 when not running.
func (a *App) Pid() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.pid
}

// Started is closed once the app's first incarnation is running.
func (a *App) Started() <-chan struct{} { return a.startedCh }

// Restarts is how many times the app was restarted.
func (a *App) Restarts() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.restarts
}

// StartedAt is when the current incarnation started.
func (a *App) StartedAt() time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.started
}

// LastExit is how the previous incarnation ended, nil before the first exit.
func (a *App) LastExit() *Exit {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.lastExit
}

// Run starts the app and supervises it until it ends for good: it exits
// and the policy says not to restart, the restart limit is reached, Stop was
// called, or ctx ends (which kills it). It returns the last exit, or a
// *StartError when the command could not be started.
func (a *App) Run(ctx context.Context) (Exit, error) {
	backoff := a.spec.BackoffInitial
	for {
		exit, err := a.runOnce(ctx)
		if err != nil {
			return Exit{Code: startStatusOf(err)}, err
		}
		a.mu.Lock()
		a.lastExit = &exit
		stopping, restarting := a.stopping, a.restarting
		a.restarting = false
		a.mu.Unlock()
		if stopping || ctx.Err() != nil {
			return exit, nil
		}
		if restarting {
			a.log.Info("app restarted on request", "previous", exit.String())
			a.countRestart()
			continue
		}
		if !a.shouldRestart(exit) {
			return exit, nil
		}
		if a.Restarts() >= a.spec.MaxRestarts {
			a.log.Error("app keeps failing: restart limit reached", "exit", exit.String(), "restarts", a.Restarts(), "max_restarts", a.spec.MaxRestarts)
			return exit, nil
		}
		a.log.Warn("app ended; restarting", "exit", exit.String(), "in", backoff, "restart", a.Restarts()+1, "max_restarts", a.spec.MaxRestarts)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return exit, nil
		case <-a.stopCh:
			return exit, nil
		}
		a.countRestart()
		backoff = min(backoff*2, a.spec.BackoffMax)
	}
}

func (a *App) countRestart() {
	a.mu.Lock()
	a.restarts++
	a.stopSignals = 0
	a.mu.Unlock()
}

func (a *App) shouldRestart(e Exit) bool {
	switch a.spec.RestartPolicy {
	case RestartAlways:
		return true
	case RestartOnFailure:
		return e.Status() != 0
	}
	return false
}

func (a *App) runOnce(ctx context.Context) (Exit, error) {
	cmd, err := a.command()
	if err != nil {
		return Exit{}, err
	}
	wait, err := a.reaper.Start(cmd)
	if err != nil {
		return Exit{}, &StartError{Command: a.spec.Command[0], Status: startStatusOf(err), Err: err}
	}
	a.mu.Lock()
	a.pid = cmd.Process.Pid
	a.started = time.Now()
	a.mu.Unlock()
	restart := true
	a.startOnce.Do(func() { restart = false; close(a.startedCh) })
	if a.OnStart != nil {
		a.OnStart(cmd.Process.Pid, restart)
	}
	a.log.Debug("app started", "pid", cmd.Process.Pid, "command", a.spec.Command[0])

	ended := make(chan Exit, 1)
	go func() { ended <- wait() }()
	var exit Exit
	select {
	case exit = <-ended:
	case <-ctx.Done():
		a.killGroup()
		exit = <-ended
	}
	if a.OnExit != nil {
		a.OnExit(exit)
	}
	a.mu.Lock()
	a.pid = 0
	if a.killTimer != nil {
		a.killTimer.Stop()
		a.killTimer = nil
	}
	a.mu.Unlock()
	return exit, nil
}

func startStatusOf(err error) int {
	var se *StartError
	if errors.As(err, &se) {
		return se.Status
	}
	return startStatus(err)
}

// command builds the exec.Cmd: own process group (and the terminal's
// foreground when stdin is one), user, workdir, env, stdio passed through.
func (a *App) command() (*exec.Cmd, error) {
	if len(a.spec.Command) == 0 {
		return nil, &StartError{Command: "(none)", Status: 127, Err: errors.New("no command: give it in app.command or after --")}
	}
	name := a.spec.Command[0]
	path, err := exec.LookPath(name)
	if err != nil {
		return nil, &StartError{Command: name, Status: startStatus(err), Err: unwrapExec(err)}
	}
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		return nil, &StartError{Command: name, Status: 126, Err: errors.New("is a directory")}
	}
	cmd := exec.Command(path, a.spec.Command[1:]...)
	cmd.Args[0] = name
	cmd.Dir = a.spec.Dir
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	attr := &syscall.SysProcAttr{Setpgid: true}
	if term.IsTerminal(int(os.Stdin.Fd())) {
		// Like a shell's job control: the app's group owns the terminal, so
		// it can read it and gets ^C and ^Z from it.
		attr.Foreground = true
		attr.Ctty = int(os.Stdin.Fd())
	}
	env := os.Environ()
	if a.spec.User != "" {
		u, err := LookupUser(a.spec.User)
		if err != nil {
			return nil, &StartError{Command: name, Status: 126, Err: err}
		}
		attr.Credential = u.Credential()
		for _, kv := range u.LoginEnv() {
			k, v, _ := cutEnv(kv)
			env = setEnv(env, k, v)
		}
	}
	for _, kv := range a.spec.Env {
		k, v, _ := cutEnv(kv)
		env = setEnv(env, k, v)
	}
	cmd.Env = env
	cmd.SysProcAttr = attr
	return cmd, nil
}

func unwrapExec(err error) error {
	var ee *exec.Error
	if errors.As(err, &ee) {
		return ee.Err
	}
	return err
}

// Signal forwards sig to the app, or to its process group in group mode.
func (a *App) Signal(sig unix.Signal) error {
	a.mu.Lock()
	pid := a.pid
	a.mu.Unlock()
	if pid == 0 {
		return errors.New("app is not running")
	}
	target := pid
	if a.spec.SignalGroup {
		target = -pid
	}
	return unix.Kill(target, sig)
}

// Stop asks the app to stop for good: it sends the stop signal (the
// configured one, or received when none is configured) and SIGKILLs the
// whole process group after StopTimeout. A second Stop kills at once.
func (a *App) Stop(received unix.Signal) {
	a.stopOnce.Do(func() { close(a.stopCh) })
	a.mu.Lock()
	a.stopping = true
	a.stopSignals++
	n, pid := a.stopSignals, a.pid
	a.mu.Unlock()
	if pid == 0 {
		return
	}
	if n > 1 {
		a.log.Warn("second stop request: killing the app now", "pid", pid)
		a.killGroup()
		return
	}
	sig := a.spec.StopSignal
	if sig == 0 {
		sig = received
	}
	a.log.Info("stopping app", "signal", unix.SignalName(sig), "pid", pid, "timeout", a.spec.StopTimeout.String())
	a.Signal(sig)
	a.armKill(pid)
}

// Restart stops the current incarnation with the stop signal and starts
// the app again, whatever the restart policy (templates ask for this).
func (a *App) Restart() {
	a.mu.Lock()
	if a.stopping || a.pid == 0 {
		a.mu.Unlock()
		return
	}
	a.restarting = true
	pid := a.pid
	a.mu.Unlock()
	sig := a.spec.StopSignal
	if sig == 0 {
		sig = unix.SIGTERM
	}
	a.Signal(sig)
	a.armKill(pid)
}

func (a *App) armKill(pid int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.killTimer != nil {
		return
	}
	a.killTimer = time.AfterFunc(a.spec.StopTimeout, func() {
		if a.Pid() == pid {
			a.log.Warn("app did not stop in time: killing its process group", "pid", pid, "stop_timeout", a.spec.StopTimeout)
			a.killGroup()
		}
	})
}

// killGroup SIGKILLs the app's whole process group.
func (a *App) killGroup() {
	a.mu.Lock()
	pid := a.pid
	a.mu.Unlock()
	if pid != 0 {
		unix.Kill(-pid, unix.SIGKILL)
		unix.Kill(pid, unix.SIGKILL) // in case it left its group
	}
}

func cutEnv(kv string) (string, string, bool) {
	for i := 0; i < len(kv); i++ {
		if kv[i] == '=' {
			return kv[:i], kv[i+1:], true
		}
	}
	return kv, "", false
}

func setEnv(env []string, key, val string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if k, _, _ := cutEnv(kv); k != key {
			out = append(out, kv)
		}
	}
	return append(out, key+"="+val)
}

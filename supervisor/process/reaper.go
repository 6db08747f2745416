// Package process does lifeboat's PID 1 duties: it starts the app as the
// configured user in its own process group, forwards signals to it, reaps
// every zombie (orphans included), stops the app with a timeout, and maps
// how the app ended to an exit status.
//
// Exactly one goroutine in the process calls wait4: the Reaper. Every child
// lifeboat starts — the app, hooks, stream commands — must be started
// through it, because exec.Cmd.Wait in the same process would race wait4(-1)
// and lose the child's status to ECHILD.
package process

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Exit is how a child ended.
type Exit struct {
	Code   int         // exit code when it exited; -1 when killed by a signal
	Signal unix.Signal // the signal that killed it; 0 when it exited
}

// Status maps an Exit to a shell-style status: the code, or 128+N when
// killed by signal N.
func (e Exit) Status() int {
	if e.Signal != 0 {
		return 128 + int(e.Signal)
	}
	return e.Code
}

func (e Exit) String() string {
	if e.Signal != 0 {
		return fmt.Sprintf("killed by %s", unix.SignalName(e.Signal))
	}
	return fmt.Sprintf("exited with status %d", e.Code)
}

// Err is nil for a zero exit, otherwise an error describing the exit.
func (e Exit) Err() error {
	if e.Signal == 0 && e.Code == 0 {
		return nil
	}
	return &ExitError{Exit: e}
}

// ExitError is a non-zero Exit as an error.
type ExitError struct{ Exit Exit }

func (e *ExitError) Error() string { return e.Exit.String() }

// Reaper owns wait4 for the whole process. It must be the only caller of
// wait (no exec.Cmd.Wait, no os.Process.Wait) once started.
type Reaper struct {
	log *slog.Logger

	// mu is held while starting a child and registering its pid, and while
	// reaping, so a child that exits at once cannot be reaped before its
	// waiter is registered.
	mu      sync.Mutex
	waiters map[int]chan Exit
	orphans int // reaped children nobody waited for

	sigchld chan os.Signal
	stop    chan struct{}
	done    chan struct{}
}

// NewReaper starts the reaper goroutine. Call Close to stop it.
func NewReaper(log *slog.Logger) *Reaper {
	r := &Reaper{
		log:     log,
		waiters: map[int]chan Exit{},
		sigchld: make(chan os.Signal, 64),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	signal.Notify(r.sigchld, unix.SIGCHLD)
	go r.loop()
	return r
}

// Close stops the reaper goroutine.
func (r *Reaper) Close() {
	signal.Stop(r.sigchld)
	close(r.stop)
	<-r.done
}

// Orphans is how many children were reaped that nobody started through the
// reaper: orphaned grandchildren reparented to lifeboat.
func (r *Reaper) Orphans() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.orphans
}

func (r *Reaper) loop() {
	defer close(r.done)
	for {
		select {
		case <-r.stop:
			return
		case <-r.sigchld:
			r.reapAll()
		}
	}
}

// reapAll collects every exited child. SIGCHLDs coalesce, so one signal may
// stand for many exits: loop until wait4 says there is nothing left.
func (r *Reaper) reapAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if err == unix.EINTR {
			continue
		}
		if pid <= 0 || err != nil {
			return
		}
		if !ws.Exited() && !ws.Signaled() {
			continue // stopped or continued, not gone
		}
		exit := Exit{Code: ws.ExitStatus()}
		if ws.Signaled() {
			exit = Exit{Code: -1, Signal: ws.Signal()}
		}
		if ch, ok := r.waiters[pid]; ok {
			delete(r.waiters, pid)
			ch <- exit // buffered
			continue
		}
		r.orphans++
		r.log.Debug("reaped orphan", "pid", pid, "exit", exit.String())
	}
}

// Start starts cmd and returns a function that waits for it to end.
// cmd's Stdin, Stdout and Stderr must be nil or *os.File (use os.Pipe for
// capture): other kinds make os/exec start copying goroutines that only
// cmd.Wait would finish. Never call cmd.Wait on a command started here.
func (r *Reaper) Start(cmd *exec.Cmd) (wait func() Exit, err error) {
	for _, f := range []any{cmd.Stdin, cmd.Stdout, cmd.Stderr} {
		switch f.(type) {
		case nil, *os.File:
		default:
			return nil, errors.New("process: Reaper.Start needs *os.File or nil stdio (use os.Pipe)")
		}
	}
	ch := make(chan Exit, 1)
	r.mu.Lock()
	err = cmd.Start()
	if err == nil {
		r.waiters[cmd.Process.Pid] = ch
	}
	r.mu.Unlock()
	if err != nil {
		return nil, err
	}
	// A SIGCHLD that arrived while we held mu was consumed by reapAll
	// waiting on mu, or is still queued; either way the child is reaped.
	var once sync.Once
	var exit Exit
	return func() Exit {
		once.Do(func() { exit = <-ch })
		return exit
	}, nil
}

// StartCode adapts Start to the starter interface of the hook runner and
// the snapshot engine: wait returns the exit code (128+N for signal N) and
// a non-nil error for a non-zero exit.
func (r *Reaper) StartCode(cmd *exec.Cmd) (wait func() (int, error), err error) {
	w, err := r.Start(cmd)
	if err != nil {
		return nil, err
	}
	return func() (int, error) {
		e := w()
		return e.Status(), e.Err()
	}, nil
}

// SetSubreaper makes this process adopt orphaned descendants, as PID 1
// does, so their zombies are reaped here. PID 1 needs no call.
func SetSubreaper() error {
	if os.Getpid() == 1 {
		return nil
	}
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("PR_SET_CHILD_SUBREAPER: %w", err)
	}
	return nil
}

// errNotStarted maps start errors to the shell's statuses.
func startStatus(err error) int {
	var pe *os.PathError
	var ee *exec.Error
	switch {
	case errors.As(err, &ee) && errors.Is(ee.Err, exec.ErrNotFound):
		return 127
	case errors.Is(err, syscall.ENOENT):
		return 127
	case errors.As(err, &pe) && (errors.Is(pe.Err, syscall.EACCES) || errors.Is(pe.Err, syscall.ENOEXEC) || errors.Is(pe.Err, syscall.EISDIR)):
		return 126
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.ENOEXEC), errors.Is(err, exec.ErrDot):
		return 126
	}
	return 126
}

// CodeStarter is the reaper seen through the starter interface of the hook
// runner and the snapshot engine (Start returning an exit-code wait):
// pass process.CodeStarter{Reaper: r} wherever a Starter is taken.
type CodeStarter struct{ Reaper *Reaper }

// Start starts cmd under the reaper; see Reaper.StartCode.
func (s CodeStarter) Start(cmd *exec.Cmd) (wait func() (int, error), err error) {
	return s.Reaper.StartCode(cmd)
}

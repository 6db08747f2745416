package process

import (
	"os"
	"os/signal"

	"golang.org/x/sys/unix"
)

// Forwardable lists the signals lifeboat catches and relays to the app: all
// catchable signals except SIGCHLD (lifeboat's own reaping), SIGURG (the Go
// runtime's preemption), the synchronous fault signals (they describe
// lifeboat's own crash), and SIGTTIN/SIGTTOU, which, as in tini, are
// swallowed so that lifeboat never stops on terminal access.
func Forwardable() []os.Signal {
	skip := map[unix.Signal]bool{
		unix.SIGKILL: true, unix.SIGSTOP: true, unix.SIGCHLD: true, unix.SIGURG: true,
		unix.SIGSEGV: true, unix.SIGBUS: true, unix.SIGFPE: true, unix.SIGILL: true, unix.SIGTRAP: true,
		unix.SIGTTIN: true, unix.SIGTTOU: true,
		32: true, 33: true, // reserved by glibc for threads
	}
	var out []os.Signal
	for n := 1; n <= 64; n++ {
		if !skip[unix.Signal(n)] {
			out = append(out, unix.Signal(n))
		}
	}
	return out
}

// CatchSignals starts catching every forwardable signal on a buffered
// channel, which the supervisor drains, and swallows SIGTTIN/SIGTTOU:
// they are caught on a channel nobody reads (a full one just drops them),
// so lifeboat never stops on terminal access. Not signal.Ignore: ignored
// dispositions survive exec, and the app would inherit them.
func CatchSignals() chan os.Signal {
	ch := make(chan os.Signal, 128)
	signal.Notify(ch, Forwardable()...)
	signal.Notify(make(chan os.Signal, 1), unix.SIGTTIN, unix.SIGTTOU)
	return ch
}

// CatchSignalsAsync runs CatchSignals in the background and returns a
// function that waits for it and returns the channel. Installing a handler
// costs a round trip to the Go runtime's signal thread per signal, 1-2 ms
// for all of them, which this overlaps with loading the config and opening
// the control socket instead of adding it to every container start.
func CatchSignalsAsync() func() chan os.Signal {
	done := make(chan struct{})
	var ch chan os.Signal
	go func() {
		ch = CatchSignals()
		close(done)
	}()
	return func() chan os.Signal {
		<-done
		return ch
	}
}

package process

import (
	"os"
	"os/signal"
	"sync"

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

// CatchSignals starts catching every forwardable signal (and swallowing
// SIGTTIN/SIGTTOU) on a buffered channel, which the supervisor drains.
func CatchSignals() (ch chan os.Signal, stop func()) {
	ch = make(chan os.Signal, 128)
	signal.Notify(ch, Forwardable()...)
	swallow := make(chan os.Signal, 8)
	signal.Notify(swallow, unix.SIGTTIN, unix.SIGTTOU)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-swallow:
			case <-done:
				return
			}
		}
	}()
	return ch, func() {
		signal.Stop(ch)
		signal.Stop(swallow)
		close(done)
	}
}

// CatchSignalsAsync runs CatchSignals in the background and returns a
// function that waits for it and returns the channel. Installing a handler
// costs a round trip to the Go runtime's signal thread per signal, 1-2 ms
// for all of them, which this overlaps with loading the config and opening
// the control socket instead of adding it to every container start.
func CatchSignalsAsync() func() chan os.Signal {
	ready := make(chan chan os.Signal, 1)
	go func() {
		ch, _ := CatchSignals()
		ready <- ch
	}()
	var once sync.Once
	var ch chan os.Signal
	return func() chan os.Signal {
		once.Do(func() { ch = <-ready })
		return ch
	}
}

// Package early starts, while the libraries' package initialisation still
// runs, the work `lifeboat run` needs first and that costs milliseconds on
// its own:
//   - catching every forwardable signal: os/signal makes one round trip to
//     the Go runtime's signal thread per signal, 1-4 ms for all of them;
//   - the os package's one-time probe of pidfd support (a fork), which
//     otherwise runs when the app is started.
//
// Package init runs before main, single-threaded, for about 5 ms (Consul,
// Vault, MinIO and Prometheus clients); a goroutine started here runs on
// the other core meanwhile, so both costs leave the container's start path.
// For every other command importing this package does nothing: `lifeboat
// status` must still die of Ctrl-C.
package early

import (
	"os"

	"github.com/lifeboat/lifeboat/supervisor/process"
)

var signals func() chan os.Signal

func init() {
	if len(os.Args) < 2 || os.Args[1] != "run" {
		return
	}
	signals = process.CatchSignalsAsync()
	go func() {
		// FindProcess of ourselves opens a pidfd, which needs the probe.
		if p, err := os.FindProcess(os.Getpid()); err == nil {
			p.Release()
		}
	}()
}

// Signals returns the signal catcher started at init for `lifeboat run`,
// or nil when init did not start one (supervisor.Run then starts it).
func Signals() func() chan os.Signal {
	return signals
}

package logging

import (
	"context"
	"log/slog"
	"time"
)

// Phase logs the start of a lifecycle phase at debug level and returns a
// func that logs its end, once, with the duration: "phase done" at info, or
// "phase failed" with the error at error level. Calling the returned func
// again does nothing, so it is safe to both defer it and call it early.
//
//	done := logging.Phase(ctx, log, "restore")
//	err := restore(ctx)
//	done(err)
//
// The returned duration is what was logged, so the caller can also record
// it as a metric.
func Phase(ctx context.Context, log *slog.Logger, name string, attrs ...any) func(err error) time.Duration {
	start := time.Now()
	log.DebugContext(ctx, "phase start", append([]any{"phase", name}, attrs...)...)
	var logged bool
	var took time.Duration
	return func(err error) time.Duration {
		if logged {
			return took
		}
		logged = true
		took = time.Since(start)
		args := append([]any{"phase", name, "duration", roundDuration(took)}, attrs...)
		if err != nil {
			log.ErrorContext(ctx, "phase failed", append(args, "error", err)...)
		} else {
			log.InfoContext(ctx, "phase done", args...)
		}
		return took
	}
}

// roundDuration keeps log lines readable: 1.234s, 12.3ms, not 1.234567891s.
func roundDuration(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond)
	default:
		return d.Round(time.Microsecond)
	}
}

// Package progress shows how far a long operation (a backup, a restore, a
// verify) has come: bytes, files, rate and ETA. On a terminal it redraws
// one status line in place; anywhere else (a log collector, a pipe, CI) it
// writes a plain slog line every Interval, so logs stay readable and small.
//
// The package knows nothing of the snapshot engine: callers translate their
// own counters into a Stats and hand it to Update from any goroutine.
package progress

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/term"
)

// Defaults.
const (
	// DefaultLogInterval is how often a log line is written when the output
	// is not a terminal: often enough to show life in a container's log,
	// rare enough not to drown it.
	DefaultLogInterval = 10 * time.Second
	// DefaultRedrawInterval bounds terminal redraws; faster is flicker.
	DefaultRedrawInterval = 200 * time.Millisecond
	// DefaultWidth is the line width when the terminal's is unknown.
	DefaultWidth = 100
	// rateWindow is the span of recent samples the rate (and so the ETA)
	// is computed over: long enough to smooth pack-sized upload bursts,
	// short enough to follow a change of pace.
	rateWindow = 5 * time.Second
)

// Stats is a snapshot of an operation's counters. Totals may grow while the
// operation runs (a backup learns them as it walks the tree); zero totals
// mean unknown.
type Stats struct {
	Files      int64
	TotalFiles int64
	Bytes      int64 // bytes processed (read for a backup, written for a restore)
	TotalBytes int64
	// Transferred is the bytes sent to or received from the store; shown
	// when non-zero ("uploaded" or "downloaded", after Options.TransferVerb).
	Transferred int64
	Elapsed     time.Duration
	Done        bool
}

// Options configure a Display.
type Options struct {
	// Op names the operation in every line: "backup", "restore".
	Op string
	// TransferVerb labels Transferred: "uploaded" (default) or "downloaded".
	TransferVerb string
	// Out is the terminal the line is drawn on (usually os.Stderr).
	Out io.Writer
	// TTY selects the redrawn line; false selects log lines. Use IsTerminal
	// to decide.
	TTY bool
	// Logger receives the periodic lines when TTY is false; nil discards them.
	Logger *slog.Logger
	// LogInterval is the time between log lines; 0 means DefaultLogInterval.
	LogInterval time.Duration
	// Width is the terminal width; 0 asks the terminal, then DefaultWidth.
	Width int
	// Now is the clock; nil means time.Now (tests pass their own).
	Now func() time.Time
}

// IsTerminal reports whether w is a terminal.
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// Display renders progress. It is safe for concurrent use.
type Display struct {
	opts Options

	mu       sync.Mutex
	last     Stats
	lastDraw time.Time // last terminal redraw or log line
	drawn    bool      // a terminal line is on screen and not yet ended
	logged   bool      // a periodic log line was written
	finished bool
	samples  []sample // recent (time, bytes), oldest first
}

type sample struct {
	at    time.Time
	bytes int64
}

// New returns a Display.
func New(opts Options) *Display {
	if opts.Op == "" {
		opts.Op = "progress"
	}
	if opts.TransferVerb == "" {
		opts.TransferVerb = "uploaded"
	}
	if opts.Out == nil {
		opts.Out = io.Discard
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.LogInterval <= 0 {
		opts.LogInterval = DefaultLogInterval
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Width <= 0 {
		opts.Width = DefaultWidth
		if f, ok := opts.Out.(*os.File); ok && opts.TTY {
			if w, _, err := term.GetSize(int(f.Fd())); err == nil && w > 20 {
				opts.Width = w
			}
		}
	}
	return &Display{opts: opts}
}

// Update records s and redraws or logs when it is time. A Stats with Done
// set ends the display (as Finish does); a caller that must first learn
// whether the operation succeeded passes Done false and then calls Finish
// or Abort.
func (d *Display) Update(s Stats) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.finished {
		return
	}
	now := d.opts.Now()
	d.last = s
	d.addSample(now, s.Bytes)
	if s.Done {
		d.finishLocked()
		return
	}
	if d.opts.TTY {
		if !d.lastDraw.IsZero() && now.Sub(d.lastDraw) < DefaultRedrawInterval {
			return
		}
		d.lastDraw = now
		d.draw()
		return
	}
	if d.lastDraw.IsZero() {
		d.lastDraw = now // the first line comes one interval in: short operations log nothing extra
		return
	}
	if now.Sub(d.lastDraw) >= d.opts.LogInterval {
		d.lastDraw = now
		d.logLine("in progress", s)
	}
}

// Finish ends the display as a success: on a terminal the last counters are
// drawn as the final line (with the total time) and ended with a newline; otherwise a final log line is written if any
// periodic line was. Calling it again does nothing.
func (d *Display) Finish() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.finished {
		return
	}
	d.finishLocked()
}

// Abort ends the display without a final line: on a terminal the partial
// line is cleared, so an error message that follows starts on a clean line.
func (d *Display) Abort() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.finished {
		return
	}
	d.finished = true
	if d.opts.TTY && d.drawn {
		fmt.Fprint(d.opts.Out, "\r\x1b[K")
	}
}

func (d *Display) finishLocked() {
	d.finished = true
	d.last.Done = true
	if d.opts.TTY {
		if d.drawn || d.last.Bytes > 0 || d.last.Files > 0 {
			d.draw()
			fmt.Fprint(d.opts.Out, "\n")
		}
		return
	}
	// A short operation's only record is the caller's summary; a long one
	// that logged progress closes its series with a final line.
	if d.logged {
		d.logLine("done", d.last)
	}
}

func (d *Display) draw() {
	line := Line(d.opts.Op, d.opts.TransferVerb, d.last, d.rate())
	if w := d.opts.Width - 1; len(line) > w && w > 0 {
		line = line[:w]
	}
	fmt.Fprint(d.opts.Out, "\r\x1b[K"+line)
	d.drawn = true
}

func (d *Display) logLine(msg string, s Stats) {
	d.logged = true
	attrs := []any{"op", d.opts.Op, "files", s.Files, "bytes", s.Bytes}
	if s.TotalFiles > 0 {
		attrs = append(attrs, "total_files", s.TotalFiles)
	}
	if s.TotalBytes > 0 {
		attrs = append(attrs, "total_bytes", s.TotalBytes, "percent", percent(s.Bytes, s.TotalBytes))
	}
	if s.Transferred > 0 {
		attrs = append(attrs, d.opts.TransferVerb+"_bytes", s.Transferred)
	}
	rate := d.rate()
	if rate > 0 {
		attrs = append(attrs, "rate", FormatBytes(int64(rate))+"/s")
		if eta, ok := ETA(s, rate); ok && !s.Done {
			attrs = append(attrs, "eta", FormatDuration(eta))
		}
	}
	attrs = append(attrs, "elapsed", FormatDuration(s.Elapsed))
	d.opts.Logger.Info(d.opts.Op+" "+msg, attrs...)
}

func (d *Display) addSample(now time.Time, bytes int64) {
	d.samples = append(d.samples, sample{now, bytes})
	cut := 0
	for cut < len(d.samples)-2 && now.Sub(d.samples[cut+1].at) >= rateWindow {
		cut++
	}
	d.samples = d.samples[cut:]
}

// rate is bytes per second over the recent window, or over the whole
// operation when the window holds a single sample.
func (d *Display) rate() float64 {
	if len(d.samples) >= 2 {
		a, b := d.samples[0], d.samples[len(d.samples)-1]
		if dt := b.at.Sub(a.at).Seconds(); dt > 0 {
			return float64(b.bytes-a.bytes) / dt
		}
	}
	if d.last.Elapsed > 0 {
		return float64(d.last.Bytes) / d.last.Elapsed.Seconds()
	}
	return 0
}

// ETA is the time left at rate bytes/s; ok is false when it is unknown.
func ETA(s Stats, rate float64) (time.Duration, bool) {
	if s.TotalBytes <= 0 || rate <= 0 || s.Bytes > s.TotalBytes {
		return 0, false
	}
	left := float64(s.TotalBytes-s.Bytes) / rate
	if left > 100*24*3600 {
		return 0, false
	}
	return time.Duration(left * float64(time.Second)), true
}

// Line formats one status line:
//
//	backup  1.2 GiB / 3.4 GiB (35%)  1,234 / 5,000 files  112 MiB/s  ETA 0:20  uploaded 800 MiB
func Line(op, transferVerb string, s Stats, rate float64) string {
	var b strings.Builder
	b.WriteString(op)
	b.WriteString("  ")
	b.WriteString(FormatBytes(s.Bytes))
	if s.TotalBytes > 0 {
		fmt.Fprintf(&b, " / %s (%d%%)", FormatBytes(s.TotalBytes), percent(s.Bytes, s.TotalBytes))
	}
	b.WriteString("  ")
	b.WriteString(FormatCount(s.Files))
	if s.TotalFiles > 0 {
		b.WriteString(" / ")
		b.WriteString(FormatCount(s.TotalFiles))
	}
	b.WriteString(" files")
	if rate > 0 && !s.Done {
		fmt.Fprintf(&b, "  %s/s", FormatBytes(int64(rate)))
		if eta, ok := ETA(s, rate); ok {
			fmt.Fprintf(&b, "  ETA %s", FormatDuration(eta))
		}
	}
	if s.Done {
		fmt.Fprintf(&b, "  in %s", FormatDuration(s.Elapsed))
		if s.Elapsed > 0 {
			fmt.Fprintf(&b, " (%s/s)", FormatBytes(int64(float64(s.Bytes)/s.Elapsed.Seconds())))
		}
	}
	if s.Transferred > 0 {
		fmt.Fprintf(&b, "  %s %s", transferVerb, FormatBytes(s.Transferred))
	}
	return b.String()
}

func percent(n, total int64) int {
	if total <= 0 {
		return 0
	}
	p := int(n * 100 / total)
	return min(max(p, 0), 100)
}

// FormatBytes is n in binary units with three significant digits: "0 B",
// "512 B", "1.50 KiB", "12.3 MiB", "456 GiB".
func FormatBytes(n int64) string {
	if n < 0 {
		return "-" + FormatBytes(-n)
	}
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	units := []string{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	v := float64(n) / 1024
	i := 0
	for v >= 999.5 && i < len(units)-1 {
		v /= 1024
		i++
	}
	switch {
	case v < 9.995:
		return fmt.Sprintf("%.2f %s", v, units[i])
	case v < 99.95:
		return fmt.Sprintf("%.1f %s", v, units[i])
	}
	return fmt.Sprintf("%.0f %s", v, units[i])
}

// FormatCount is n with thousands separators: 1234567 -> "1,234,567".
func FormatCount(n int64) string {
	s := fmt.Sprint(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// FormatDuration is d as m:ss, or h:mm:ss from an hour on; below ten
// seconds it keeps a tenth ("3.2s") so short operations read sensibly.
func FormatDuration(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	if d < 10*time.Second {
		return fmt.Sprintf("%.1fs", d.Seconds())
	}
	s := int64(d.Round(time.Second) / time.Second)
	h, m, sec := s/3600, s/60%60, s%60
	if h > 0 {
		return fmt.Sprintf("%d:%02d:%02d", h, m, sec)
	}
	return fmt.Sprintf("%d:%02d", m, sec)
}

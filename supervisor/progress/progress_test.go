package progress

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestFormatBytes(t *testing.T) {
	for _, tc := range []struct {
		n    int64
		want string
	}{
		{0, "0 B"}, {1023, "1023 B"}, {1024, "1.00 KiB"}, {1536, "1.50 KiB"},
		{10 * 1024, "10.0 KiB"}, {999 * 1024, "999 KiB"}, {1023 * 1024, "1.00 MiB"},
		{12345678, "11.8 MiB"}, {1 << 30, "1.00 GiB"}, {5 << 40, "5.00 TiB"}, {-2048, "-2.00 KiB"},
	} {
		if got := FormatBytes(tc.n); got != tc.want {
			t.Errorf("FormatBytes(%d) = %q, want %q", tc.n, got, tc.want)
		}
	}
}

func TestFormatCountAndDuration(t *testing.T) {
	for n, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", 1234567: "1,234,567", -1234: "-1,234"} {
		if got := FormatCount(n); got != want {
			t.Errorf("FormatCount(%d) = %q, want %q", n, got, want)
		}
	}
	for d, want := range map[time.Duration]string{
		0: "0.0s", 3200 * time.Millisecond: "3.2s", 75 * time.Second: "1:15",
		3723 * time.Second: "1:02:03", -time.Second: "0.0s",
	} {
		if got := FormatDuration(d); got != want {
			t.Errorf("FormatDuration(%v) = %q, want %q", d, got, want)
		}
	}
}

func TestLine(t *testing.T) {
	s := Stats{Files: 1234, TotalFiles: 5000, Bytes: 1 << 30, TotalBytes: 4 << 30, Transferred: 800 << 20, Elapsed: 10 * time.Second}
	got := Line("backup", "uploaded", s, 100<<20)
	want := "backup  1.00 GiB / 4.00 GiB (25%)  1,234 / 5,000 files  100 MiB/s  ETA 0:31  uploaded 800 MiB"
	if got != want {
		t.Errorf("Line:\n got %q\nwant %q", got, want)
	}
	s.Done, s.Bytes, s.Files = true, 4<<30, 5000
	got = Line("restore", "downloaded", s, 0)
	want = "restore  4.00 GiB / 4.00 GiB (100%)  5,000 / 5,000 files  in 0:10 (410 MiB/s)  downloaded 800 MiB"
	if got != want {
		t.Errorf("Line done:\n got %q\nwant %q", got, want)
	}
	// Unknown totals: no percent, no ETA.
	got = Line("backup", "uploaded", Stats{Files: 3, Bytes: 2048}, 1024)
	if want := "backup  2.00 KiB  3 files  1.00 KiB/s"; got != want {
		t.Errorf("Line without totals: %q, want %q", got, want)
	}
}

func TestETA(t *testing.T) {
	if _, ok := ETA(Stats{Bytes: 10}, 5); ok {
		t.Error("ETA without a total must be unknown")
	}
	if _, ok := ETA(Stats{Bytes: 10, TotalBytes: 20}, 0); ok {
		t.Error("ETA at rate 0 must be unknown")
	}
	if d, ok := ETA(Stats{Bytes: 10, TotalBytes: 30}, 5); !ok || d != 4*time.Second {
		t.Errorf("ETA = %v %v, want 4s", d, ok)
	}
}

// clock is a manual clock for the display.
type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }
func newClock() *clock                   { return &clock{t: time.Unix(1_700_000_000, 0)} }
func stats(b, tb int64, el time.Duration) Stats {
	return Stats{Bytes: b, TotalBytes: tb, Files: b / 100, TotalFiles: tb / 100, Elapsed: el}
}

func TestTerminalRedrawsOneLine(t *testing.T) {
	var out bytes.Buffer
	c := newClock()
	d := New(Options{Op: "backup", Out: &out, TTY: true, Width: 120, Now: c.now})
	for i := int64(1); i <= 10; i++ {
		c.advance(100 * time.Millisecond)
		d.Update(stats(i*1000, 10000, time.Duration(i)*100*time.Millisecond))
	}
	d.Update(Stats{Bytes: 10000, TotalBytes: 10000, Files: 100, TotalFiles: 100, Elapsed: time.Second, Done: true})
	d.Update(stats(1, 1, 0)) // after the end: ignored
	s := out.String()
	if strings.Count(s, "\n") != 1 || !strings.HasSuffix(s, "\n") {
		t.Fatalf("want exactly one line ended at finish, got %q", s)
	}
	draws := strings.Split(strings.TrimSuffix(s, "\n"), "\r\x1b[K")
	// Redraws are throttled to DefaultRedrawInterval: 10 updates 100ms apart
	// give 5 or 6 draws, plus the final one.
	if n := len(draws) - 1; n < 5 || n > 7 {
		t.Errorf("%d draws for 10 updates at 100ms, want about 6: %q", n, s)
	}
	for _, l := range draws[1:] {
		if len(l) > 119 {
			t.Errorf("line longer than the terminal: %d %q", len(l), l)
		}
	}
	last := draws[len(draws)-1]
	if !strings.Contains(last, "100%") || !strings.Contains(last, "in 1.0s") {
		t.Errorf("final line %q lacks the totals", last)
	}
	if !strings.Contains(draws[3], "ETA") {
		t.Errorf("mid-way line %q has no ETA", draws[3])
	}
	// A narrow terminal gets a cut line, never a wrapped one.
	out.Reset()
	d = New(Options{Op: "backup", Out: &out, TTY: true, Width: 30, Now: c.now})
	d.Update(stats(5000, 10000, time.Second))
	if l := strings.TrimPrefix(out.String(), "\r\x1b[K"); len(l) != 29 {
		t.Errorf("line on a 30-column terminal is %d long: %q", len(l), l)
	}
}

func TestAbortClearsTheLine(t *testing.T) {
	var out bytes.Buffer
	c := newClock()
	d := New(Options{Op: "restore", Out: &out, TTY: true, Now: c.now})
	d.Update(stats(10, 100, time.Second))
	d.Abort()
	d.Finish()
	if !strings.HasSuffix(out.String(), "\r\x1b[K") || strings.Contains(out.String(), "\n") {
		t.Errorf("abort must clear the line and print no newline: %q", out.String())
	}
}

func TestLogLinesWhenNotATerminal(t *testing.T) {
	var out, logs bytes.Buffer
	c := newClock()
	log := slog.New(slog.NewJSONHandler(&logs, nil))
	d := New(Options{Op: "backup", Out: &out, TTY: false, Logger: log, LogInterval: 10 * time.Second, Now: c.now})
	// 35 s of updates every 250 ms: lines at 10, 20, 30 s, then "done".
	for i := int64(0); i <= 140; i++ {
		d.Update(stats(i*1<<20, 140<<20, time.Duration(i)*250*time.Millisecond))
		c.advance(250 * time.Millisecond)
	}
	d.Finish()
	if out.Len() != 0 {
		t.Errorf("nothing may be drawn on a non-terminal: %q", out.String())
	}
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	if len(lines) != 4 {
		t.Fatalf("want 3 periodic lines and one final, got %d:\n%s", len(lines), logs.String())
	}
	var first map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &first); err != nil {
		t.Fatal(err)
	}
	if first["msg"] != "backup in progress" || first["percent"] != float64(28) || first["rate"] != "4.00 MiB/s" || first["eta"] == nil {
		t.Errorf("first line: %v", first)
	}
	if !strings.Contains(lines[3], `"msg":"backup done"`) {
		t.Errorf("last line: %s", lines[3])
	}
}

func TestShortOperationLogsNothing(t *testing.T) {
	var logs bytes.Buffer
	c := newClock()
	d := New(Options{Op: "backup", Logger: slog.New(slog.NewTextHandler(&logs, nil)), Now: c.now})
	d.Update(stats(1, 2, time.Second))
	c.advance(time.Second)
	d.Update(Stats{Bytes: 2, TotalBytes: 2, Done: true})
	if logs.Len() != 0 {
		t.Errorf("a short operation must leave the summary to the caller: %s", logs.String())
	}
}

// TestIsTerminalOnARealPTY checks the decision the CLI makes from a real
// pseudo-terminal, and that a pipe is not one.
func TestIsTerminalOnARealPTY(t *testing.T) {
	fd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Skipf("no /dev/ptmx: %v", err)
	}
	ptm := os.NewFile(uintptr(fd), "/dev/ptmx")
	defer ptm.Close()
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	pts, err := os.OpenFile("/dev/pts/"+itoa(n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer pts.Close()
	if err := unix.IoctlSetWinsize(int(pts.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 24, Col: 42}); err != nil {
		t.Fatal(err)
	}
	if !IsTerminal(pts) {
		t.Fatal("a pty is a terminal")
	}
	d := New(Options{Out: pts, TTY: true})
	if d.opts.Width != 42 {
		t.Errorf("width from the terminal = %d, want 42", d.opts.Width)
	}
	r, w, _ := os.Pipe()
	defer r.Close()
	defer w.Close()
	if IsTerminal(w) || IsTerminal(&bytes.Buffer{}) {
		t.Error("a pipe or buffer is not a terminal")
	}
}

func itoa(n int) string { return FormatCount(int64(n)) } // < 1000 ptys here: no separators

// TestFinishMarksDone: a caller that passes Done false (it learns success
// only afterwards) still gets the final line with the total time.
func TestFinishMarksDone(t *testing.T) {
	var out bytes.Buffer
	c := newClock()
	d := New(Options{Op: "restore", TransferVerb: "downloaded", Out: &out, TTY: true, Width: 200, Now: c.now})
	d.Update(Stats{Bytes: 50, TotalBytes: 100, Elapsed: time.Second})
	c.advance(50 * time.Millisecond) // inside the redraw throttle: not drawn by Update
	d.Update(Stats{Bytes: 100, TotalBytes: 100, Files: 2, TotalFiles: 2, Transferred: 40, Elapsed: 2 * time.Second})
	d.Finish()
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\r\x1b[K")
	last := lines[len(lines)-1]
	if want := "restore  100 B / 100 B (100%)  2 / 2 files  in 2.0s (50 B/s)  downloaded 40 B"; last != want {
		t.Errorf("final line %q, want %q", last, want)
	}
}

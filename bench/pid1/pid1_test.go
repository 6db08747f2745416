// Package pid1 benchmarks lifeboat as an init against tini and dumb-init:
// the wall time of `INIT -- /bin/true` (start-up overhead) and the
// supervisor's resident memory while the app sleeps. All three run in the
// same benchmark run, so the ratios are what matter, not the absolute times.
//
//	go test ./bench/pid1 -run XXX -bench . -benchtime 200x
package pid1

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat/lifeboat/internal/testrig"
)

type initCmd struct {
	name string
	argv func(app ...string) []string
}

func inits(b *testing.B) []initCmd {
	lifeboat := testrig.BuildLifeboat(b)
	sock := filepath.Join(b.TempDir(), "lb.sock")
	tini := testrig.Binary(b, "tini")
	dumb := testrig.Binary(b, "dumb-init")
	return []initCmd{
		{"bare", func(app ...string) []string { return app }},
		{"tini", func(app ...string) []string { return append([]string{tini, "-s", "--"}, app...) }},
		{"dumb-init", func(app ...string) []string { return append([]string{dumb, "--"}, app...) }},
		{"lifeboat", func(app ...string) []string {
			return append([]string{lifeboat, "run", "--log-level", "warn", "--socket", sock, "--"}, app...)
		}},
	}
}

// BenchmarkStartTrue is the wall time of INIT -- /bin/true.
func BenchmarkStartTrue(b *testing.B) {
	for _, in := range inits(b) {
		argv := in.argv("/bin/true")
		b.Run(in.name, func(b *testing.B) {
			times := make([]time.Duration, 0, b.N)
			for i := 0; i < b.N; i++ {
				cmd := exec.Command(argv[0], argv[1:]...)
				t0 := time.Now()
				out, err := cmd.CombinedOutput()
				times = append(times, time.Since(t0))
				if err != nil {
					b.Fatalf("%s: %v\n%s", in.name, err, out)
				}
			}
			// The goal is about the median; ns/op is the mean.
			slices.Sort(times)
			b.ReportMetric(float64(times[len(times)/2].Microseconds())/1000, "median-ms")
		})
	}
}

// BenchmarkIdleRSS reports the init's resident set size while its app sleeps.
func BenchmarkIdleRSS(b *testing.B) {
	for _, in := range inits(b) {
		if in.name == "bare" {
			continue
		}
		argv := in.argv("sleep", "60")
		b.Run(in.name, func(b *testing.B) {
			var total float64
			for i := 0; i < b.N; i++ {
				total += idleRSS(b, argv)
			}
			b.ReportMetric(total/float64(b.N), "RSS-KiB")
		})
	}
}

func idleRSS(b *testing.B, argv []string) float64 {
	cmd := exec.Command(argv[0], argv[1:]...)
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	// Idle means: the app (sleep) is running as the init's child and the
	// init has settled.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if len(testrig.Children(cmd.Process.Pid)) > 0 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // let the init settle; this is a measurement, not a wait for a condition
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(st), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(line)
			kib, _ := strconv.ParseFloat(f[1], 64)
			return kib
		}
	}
	b.Fatal("no VmRSS")
	return 0
}

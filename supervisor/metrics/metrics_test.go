package metrics

import (
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestSupervisorMetrics(t *testing.T) {
	reg := NewRegistry()
	m, err := NewSupervisor(reg, BuildInfo{Version: "1.2.3", Revision: "abc"})
	if err != nil {
		t.Fatal(err)
	}
	m.EnterPhase("restore")
	m.PhaseDone("restore", 1500*time.Millisecond, nil)
	m.EnterPhase("render")
	m.PhaseDone("render", 20*time.Millisecond, errors.New("boom"))
	m.EnterPhase("serve")
	m.AppStarted(42, false)
	m.AppExited(1, false)
	m.AppStarted(43, true)
	m.AppExited(137, true)
	m.AppStarted(44, true)

	want := `
# HELP lifeboat_app_exits_total Times the app exited, by outcome: success (status 0), failure (non-zero), signal (killed by a signal).
# TYPE lifeboat_app_exits_total counter
lifeboat_app_exits_total{outcome="failure"} 1
lifeboat_app_exits_total{outcome="signal"} 1
lifeboat_app_exits_total{outcome="success"} 0
# HELP lifeboat_app_last_exit_status Exit status of the app's last exit (128+N for signal N); -1 before it first exits.
# TYPE lifeboat_app_last_exit_status gauge
lifeboat_app_last_exit_status 137
# HELP lifeboat_app_pid PID of the running app, 0 when it is not running.
# TYPE lifeboat_app_pid gauge
lifeboat_app_pid 44
# HELP lifeboat_app_restarts_total Times the app was restarted after it exited (app.restart).
# TYPE lifeboat_app_restarts_total counter
lifeboat_app_restarts_total 2
# HELP lifeboat_app_starts_total Times the app was started (the first start and every restart).
# TYPE lifeboat_app_starts_total counter
lifeboat_app_starts_total 3
# HELP lifeboat_app_up 1 while the app process runs, 0 otherwise.
# TYPE lifeboat_app_up gauge
lifeboat_app_up 1
# HELP lifeboat_build_info Always 1; labels say which lifeboat build runs.
# TYPE lifeboat_build_info gauge
lifeboat_build_info{goversion="` + runtime.Version() + `",revision="abc",version="1.2.3"} 1
# HELP lifeboat_phase 1 for the lifecycle phase the supervisor is in, 0 for phases it has been in before.
# TYPE lifeboat_phase gauge
lifeboat_phase{phase="render"} 0
lifeboat_phase{phase="restore"} 0
lifeboat_phase{phase="serve"} 1
# HELP lifeboat_phase_duration_seconds How long the last run of each lifecycle phase took (load, connect, elect, restore, render, start, shutdown).
# TYPE lifeboat_phase_duration_seconds gauge
lifeboat_phase_duration_seconds{phase="render"} 0.02
lifeboat_phase_duration_seconds{phase="restore"} 1.5
# HELP lifeboat_phase_failures_total Lifecycle phases that ended with an error, by phase.
# TYPE lifeboat_phase_failures_total counter
lifeboat_phase_failures_total{phase="render"} 1
`
	names := []string{"lifeboat_app_exits_total", "lifeboat_app_last_exit_status", "lifeboat_app_pid",
		"lifeboat_app_restarts_total", "lifeboat_app_starts_total", "lifeboat_app_up", "lifeboat_build_info",
		"lifeboat_phase", "lifeboat_phase_duration_seconds", "lifeboat_phase_failures_total"}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), names...); err != nil {
		t.Fatal(err)
	}
	// Runtime and process collectors are there too.
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, mf := range mfs {
		have[mf.GetName()] = true
	}
	for _, n := range []string{"go_goroutines", "process_resident_memory_bytes", "lifeboat_start_time_seconds", "lifeboat_app_start_time_seconds"} {
		if !have[n] {
			t.Errorf("registry lacks %s", n)
		}
	}
}

func TestNilSupervisorIsNoop(t *testing.T) {
	var m *Supervisor
	m.EnterPhase("x")
	m.PhaseDone("x", time.Second, nil)
	m.AppStarted(1, false)
	m.AppExited(0, false)
}

func TestDoubleRegistrationFails(t *testing.T) {
	reg := NewRegistry()
	if _, err := NewSupervisor(reg, BuildInfo{}); err != nil {
		t.Fatal(err)
	}
	if _, err := NewSupervisor(reg, BuildInfo{}); err == nil {
		t.Fatal("second NewSupervisor on one registry should fail")
	}
}

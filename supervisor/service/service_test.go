package service_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/lifeboat/lifeboat/internal/testrig"
	"github.com/lifeboat/lifeboat/supervisor/process"
	"github.com/lifeboat/lifeboat/supervisor/service"
	"github.com/prometheus/client_golang/prometheus"
)

const (
	tick     = 100 * time.Millisecond // check interval in these tests
	deadline = 15 * time.Second
)

// syncBuffer is a log sink the test reads while the service writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func client(t *testing.T, c *testrig.Consul) *api.Client {
	t.Helper()
	cfg := api.DefaultConfig()
	cfg.Address = c.HTTPAddr
	cl, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

// running is a Registration whose Run goroutine the test owns.
type running struct {
	*service.Registration
	logs *syncBuffer
	reg  *prometheus.Registry
}

// start creates and runs a Registration; Close (deregistration) runs at
// the end of the test unless the test closed it already.
func start(t *testing.T, opts service.Options) *running {
	t.Helper()
	logs := &syncBuffer{}
	opts.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	reg := prometheus.NewRegistry()
	opts.Metrics = reg
	if opts.RetryMax == 0 {
		opts.RetryMax = time.Second
	}
	r, err := service.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(context.Background()) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := r.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		if t.Failed() {
			t.Logf("service log:\n%s", logs.String())
		}
	})
	return &running{Registration: r, logs: logs, reg: reg}
}

// waitFor polls cond until it returns nil or the deadline passes.
func waitFor(t *testing.T, what string, cond func() error) {
	t.Helper()
	end := time.Now().Add(deadline)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("%s: not within %s: %v", what, deadline, err)
		}
		time.Sleep(20 * time.Millisecond) // poll tick
	}
}

// agentService is the agent's copy of the service, or an error.
func agentService(cl *api.Client, id string) (*api.AgentService, error) {
	svc, _, err := cl.Agent().Service(id, nil)
	return svc, err
}

// checkIs waits until the agent's check checkID has state and its output
// contains out.
func checkIs(t *testing.T, cl *api.Client, checkID, state, out string) *api.AgentCheck {
	t.Helper()
	var got *api.AgentCheck
	waitFor(t, fmt.Sprintf("check %s %s with output %q", checkID, state, out), func() error {
		checks, err := cl.Agent().Checks()
		if err != nil {
			return err
		}
		c, ok := checks[checkID]
		if !ok {
			return fmt.Errorf("no check %s in %v", checkID, keys(checks))
		}
		if c.Status != state || !strings.Contains(c.Output, out) {
			return fmt.Errorf("check is %s with output %q", c.Status, c.Output)
		}
		got = c
		return nil
	})
	return got
}

func keys[V any](m map[string]V) []string {
	var k []string
	for x := range m {
		k = append(k, x)
	}
	slices.Sort(k)
	return k
}

func tagsAre(cl *api.Client, id string, want ...string) func() error {
	return func() error {
		svc, err := agentService(cl, id)
		if err != nil {
			return err
		}
		got := slices.Clone(svc.Tags)
		w := slices.Clone(want)
		slices.Sort(got)
		slices.Sort(w)
		if !slices.Equal(got, w) {
			return fmt.Errorf("tags %v, want %v", svc.Tags, want)
		}
		return nil
	}
}

// flakyHTTP is an app health endpoint whose answer the test sets.
func flakyHTTP(t *testing.T) (*httptest.Server, *atomic.Int32) {
	var code atomic.Int32
	code.Store(200)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(int(code.Load()))
		fmt.Fprintf(w, "app says %d", code.Load())
	}))
	t.Cleanup(srv.Close)
	return srv, &code
}

// TestService runs the cases that share one dev agent.
func TestService(t *testing.T) {
	c := testrig.StartConsul(t)
	cl := client(t, c)

	t.Run("RegisteredWithTagsMetaAndHTTPCheck", func(t *testing.T) {
		srv, code := flakyHTTP(t)
		r := start(t, service.Options{
			Client: cl, Name: "db", ID: "db-http", Port: 3306, Address: "127.0.0.1",
			Tags: []string{"mysql", "v1"}, Meta: map[string]string{"version": "10.11"},
			Check: &service.Check{HTTP: srv.URL + "/health", Interval: tick, Timeout: time.Second},
		})
		waitFor(t, "service registered", tagsAre(cl, "db-http", "mysql", "v1"))
		svc, err := agentService(cl, "db-http")
		if err != nil {
			t.Fatal(err)
		}
		if svc.Service != "db" || svc.Port != 3306 || svc.Address != "127.0.0.1" || svc.Meta["version"] != "10.11" {
			t.Errorf("agent has %+v", svc)
		}
		if r.CheckID() != "service:db-http" {
			t.Errorf("check id %q", r.CheckID())
		}
		checkIs(t, cl, r.CheckID(), api.HealthPassing, "200 OK")
		code.Store(500)
		ch := checkIs(t, cl, r.CheckID(), api.HealthCritical, "app says 500")
		if ch.ServiceID != "db-http" {
			t.Errorf("check belongs to %q", ch.ServiceID)
		}
		code.Store(429)
		checkIs(t, cl, r.CheckID(), api.HealthWarning, "429")
		code.Store(200)
		checkIs(t, cl, r.CheckID(), api.HealthPassing, "app says 200")

		// Consul's catalog view is what clients use: passing only.
		waitFor(t, "healthy in the catalog", func() error {
			entries, _, err := cl.Health().Service("db", "", true, nil)
			if err != nil || len(entries) != 1 {
				return fmt.Errorf("%d healthy entries, %v", len(entries), err)
			}
			return nil
		})
		st := r.Status()
		if !st.Registered || st.Check == nil || st.Check.Kind != "http" || st.Check.State != service.StatePassing || st.Registrations != 1 {
			t.Errorf("status %+v check %+v", st, st.Check)
		}
		if n := metric(t, r.reg, "lifeboat_service_registered"); n != 1 {
			t.Errorf("lifeboat_service_registered = %v", n)
		}
	})

	t.Run("TCPCheck", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			for {
				conn, err := l.Accept()
				if err != nil {
					return
				}
				conn.Close()
			}
		}()
		port := l.Addr().(*net.TCPAddr).Port
		r := start(t, service.Options{Client: cl, Name: "tcpapp", ID: "tcpapp", Port: port,
			Check: &service.Check{TCP: fmt.Sprintf(":%d", port), Interval: tick, Timeout: 500 * time.Millisecond}})
		checkIs(t, cl, r.CheckID(), api.HealthPassing, "Success")
		l.Close()
		checkIs(t, cl, r.CheckID(), api.HealthCritical, "connection refused")
	})

	t.Run("CommandCheckUnderTheReaper", func(t *testing.T) {
		// The real reaper, as in lifeboat run: it owns wait4 for this test
		// process while the check runs (closed before the agent stops).
		reaper := process.NewReaper(slog.New(slog.DiscardHandler))
		t.Cleanup(reaper.Close)
		dir := t.TempDir()
		status := filepath.Join(dir, "status")
		write := func(s string) {
			if err := os.WriteFile(status, []byte(s), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		write("0")
		r := start(t, service.Options{Client: cl, Name: "cmdapp", ID: "cmdapp",
			Starter: process.CodeStarter{Reaper: reaper},
			Check: &service.Check{Command: []string{"sh", "-c", `s=$(cat status); echo "status $s from $LIFEBOAT_TEST as ${LIFEBOAT_ROLE:-none}"; [ "$s" = sleep ] && sleep 30; exit $s`},
				Dir: dir, Env: []string{"LIFEBOAT_TEST=check-env"}, Interval: tick, Timeout: 500 * time.Millisecond}})
		checkIs(t, cl, r.CheckID(), api.HealthPassing, "status 0 from check-env as none")
		r.SetRole(service.RoleReplica)
		checkIs(t, cl, r.CheckID(), api.HealthPassing, "as replica")
		write("1")
		checkIs(t, cl, r.CheckID(), api.HealthWarning, "status 1")
		write("3")
		checkIs(t, cl, r.CheckID(), api.HealthCritical, "status 3")
		write("sleep")
		t0 := time.Now()
		checkIs(t, cl, r.CheckID(), api.HealthCritical, "timed out after 500ms and was killed")
		if d := time.Since(t0); d > 5*time.Second {
			t.Errorf("a hung check took %s to be reported", d)
		}
		write("0")
		checkIs(t, cl, r.CheckID(), api.HealthPassing, "status 0")
		if st := r.Status(); st.Check.Target != "sh" {
			t.Errorf("status shows the command as %q; want only the program", st.Check.Target)
		}
	})

	t.Run("RoleTag", func(t *testing.T) {
		r := start(t, service.Options{Client: cl, Name: "roles", ID: "roles", Tags: []string{"db"}, PrimaryTag: "rw", ReplicaTag: "ro"})
		waitFor(t, "registered without role", tagsAre(cl, "roles", "db"))
		r.SetRole("primary")
		waitFor(t, "primary tag", tagsAre(cl, "roles", "db", "rw"))
		r.SetRole("follower")
		waitFor(t, "replica tag", tagsAre(cl, "roles", "db", "ro"))
		if st := r.Status(); st.Role != service.RoleReplica || !slices.Contains(st.Tags, "ro") {
			t.Errorf("status %+v", st)
		}
		if v := metric(t, r.reg, "lifeboat_service_role", "role", "replica"); v != 1 {
			t.Errorf("lifeboat_service_role{role=replica} = %v", v)
		}
		r.SetRole("leader")
		waitFor(t, "primary tag again", tagsAre(cl, "roles", "db", "rw"))
		// A demoted leader is a candidate until it knows more: no tag.
		r.SetRole("candidate")
		waitFor(t, "no role tag", tagsAre(cl, "roles", "db"))
		r.SetRole("primary")
		waitFor(t, "primary tag", tagsAre(cl, "roles", "db", "rw"))
		r.SetRole("")
		waitFor(t, "no role tag", tagsAre(cl, "roles", "db"))
	})

	t.Run("MaintenanceOnOff", func(t *testing.T) {
		srv, _ := flakyHTTP(t)
		r := start(t, service.Options{Client: cl, Name: "maint", ID: "maint",
			Check: &service.Check{HTTP: srv.URL, Interval: tick, Timeout: time.Second}})
		checkIs(t, cl, r.CheckID(), api.HealthPassing, "200")
		h := r.MaintenanceHandler()
		call := func(body string) (int, string) {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest("POST", service.PathMaintenance, strings.NewReader(body)))
			return rec.Code, rec.Body.String()
		}
		if code, body := call(`{"reason":"x"}`); code != 400 || !strings.Contains(body, "enable") {
			t.Errorf("no enable: %d %s", code, body)
		}
		if code, body := call(`{"enable":"yes"}`); code != 400 {
			t.Errorf("bad body: %d %s", code, body)
		}
		code, body := call(`{"enable":true,"reason":"upgrading disks"}`)
		var st service.Status
		if code != 200 || json.Unmarshal([]byte(body), &st) != nil || !st.Maintenance || st.MaintenanceReason != "upgrading disks" {
			t.Fatalf("enable: %d %s", code, body)
		}
		mc := checkIs(t, cl, "_service_maintenance:maint", api.HealthCritical, "")
		if mc.Notes != "upgrading disks" {
			t.Errorf("maintenance notes %q", mc.Notes)
		}
		waitFor(t, "not healthy in the catalog", func() error {
			entries, _, err := cl.Health().Service("maint", "", true, nil)
			if err != nil || len(entries) != 0 {
				return fmt.Errorf("%d healthy entries, %v", len(entries), err)
			}
			return nil
		})
		if code, body := call(`{"enable":false}`); code != 200 {
			t.Fatalf("disable: %d %s", code, body)
		}
		checks, err := cl.Agent().Checks()
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := checks["_service_maintenance:maint"]; ok {
			t.Errorf("maintenance check still there after disable")
		}
		if r.Status().Maintenance {
			t.Errorf("status still says maintenance")
		}
	})

	t.Run("MaintenanceSurvivesRoleChanges", func(t *testing.T) {
		r := start(t, service.Options{Client: cl, Name: "maintroles", ID: "maintroles", PrimaryTag: "rw", ReplicaTag: "ro"})
		waitFor(t, "registered", tagsAre(cl, "maintroles"))
		if err := r.SetMaintenance(context.Background(), true, "draining"); err != nil {
			t.Fatal(err)
		}
		checkIs(t, cl, "_service_maintenance:maintroles", api.HealthCritical, "")
		// Watch the agent while the role flips: the instance must never be
		// routable, not even between a re-registration and its maintenance.
		stop := make(chan struct{})
		gaps := make(chan int, 1)
		go func() {
			n := 0
			for {
				select {
				case <-stop:
					gaps <- n
					return
				default:
				}
				if checks, err := cl.Agent().Checks(); err == nil {
					if _, ok := checks["_service_maintenance:maintroles"]; !ok {
						n++
					}
				}
			}
		}()
		for i := 0; i < 10; i++ {
			r.SetRole("primary")
			waitFor(t, "primary tag", tagsAre(cl, "maintroles", "rw"))
			r.SetRole("replica")
			waitFor(t, "replica tag", tagsAre(cl, "maintroles", "ro"))
		}
		close(stop)
		if n := <-gaps; n > 0 {
			t.Errorf("the maintenance check was missing %d times while the role changed", n)
		}
	})

	t.Run("DeregisteredOnClose", func(t *testing.T) {
		r, err := service.New(service.Options{Client: cl, Name: "gone", ID: "gone",
			Check: &service.Check{TCP: c.HTTPAddr, Interval: tick}})
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- r.Run(context.Background()) }()
		checkIs(t, cl, r.CheckID(), api.HealthPassing, "Success")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := r.Close(ctx); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Errorf("Run after Close: %v", err)
		}
		if _, err := agentService(cl, "gone"); err == nil || !strings.Contains(err.Error(), "404") {
			t.Errorf("service still on the agent after Close: %v", err)
		}
		checks, _ := cl.Agent().Checks()
		if _, ok := checks[r.CheckID()]; ok {
			t.Errorf("check still on the agent after Close")
		}
	})

	t.Run("DrainTurnsCriticalAndStays", func(t *testing.T) {
		srv, _ := flakyHTTP(t)
		r := start(t, service.Options{Client: cl, Name: "drain", ID: "drain",
			Check: &service.Check{HTTP: srv.URL, Interval: tick, Timeout: time.Second}})
		checkIs(t, cl, r.CheckID(), api.HealthPassing, "200")
		if err := r.Drain(context.Background(), "SIGTERM"); err != nil {
			t.Fatal(err)
		}
		// Drain reports before it returns: no wait needed.
		checks, err := cl.Agent().Checks()
		if err != nil {
			t.Fatal(err)
		}
		if ch := checks[r.CheckID()]; ch == nil || ch.Status != api.HealthCritical || ch.Output != "lifeboat is shutting down: SIGTERM" {
			t.Fatalf("after Drain: %+v", ch)
		}
		// The passing app must not flip it back: watch several intervals.
		for end := time.Now().Add(5 * tick); time.Now().Before(end); time.Sleep(tick / 4) {
			checks, err := cl.Agent().Checks()
			if err != nil {
				t.Fatal(err)
			}
			if ch := checks[r.CheckID()]; ch == nil || ch.Status != api.HealthCritical {
				t.Fatalf("check went back to %+v after Drain", ch)
			}
		}
	})

	t.Run("DrainWithoutCheckUsesMaintenance", func(t *testing.T) {
		r := start(t, service.Options{Client: cl, Name: "drain-nocheck", ID: "drain-nocheck"})
		passing := func() int {
			entries, _, err := cl.Health().Service("drain-nocheck", "", true, nil)
			if err != nil {
				t.Fatal(err)
			}
			return len(entries)
		}
		waitFor(t, "registered and passing", func() error {
			if passing() != 1 {
				return errors.New("not passing yet")
			}
			return nil
		})
		if err := r.Drain(context.Background(), "SIGTERM"); err != nil {
			t.Fatal(err)
		}
		if n := passing(); n != 0 {
			t.Fatalf("%d passing instances after Drain, want 0", n)
		}
		checks, err := cl.Agent().Checks()
		if err != nil {
			t.Fatal(err)
		}
		if ch := checks["_service_maintenance:drain-nocheck"]; ch == nil || ch.Status != api.HealthCritical || !strings.Contains(ch.Notes, "lifeboat is shutting down: SIGTERM") {
			t.Fatalf("maintenance check after Drain: %+v", ch)
		}
		if st := r.Status(); !st.Maintenance || !strings.Contains(st.MaintenanceReason, "shutting down") {
			t.Errorf("status after Drain: maintenance %v %q", st.Maintenance, st.MaintenanceReason)
		}
		if err := r.SetMaintenance(context.Background(), false, ""); err == nil {
			t.Error("maintenance lifted while draining")
		}
		// The agent forgets the service: the keeper registers it again,
		// still in maintenance.
		if err := cl.Agent().ServiceDeregister("drain-nocheck"); err != nil {
			t.Fatal(err)
		}
		checkIs(t, cl, "_service_maintenance:drain-nocheck", api.HealthCritical, "")
		if n := passing(); n != 0 {
			t.Fatalf("%d passing instances after the re-registration, want 0", n)
		}
	})

	t.Run("DrainBeforeRegistrationHolds", func(t *testing.T) {
		r, err := service.New(service.Options{Client: cl, Name: "drain-early", ID: "drain-early"})
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Drain(context.Background(), "SIGTERM"); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- r.Run(context.Background()) }()
		defer func() { r.Close(context.Background()); <-done }()
		checkIs(t, cl, "_service_maintenance:drain-early", api.HealthCritical, "")
	})

	t.Run("ChangedOutsideLifeboatIsRepaired", func(t *testing.T) {
		r := start(t, service.Options{Client: cl, Name: "tamper", ID: "tamper", Tags: []string{"a"}})
		waitFor(t, "registered", tagsAre(cl, "tamper", "a"))
		r.SetRole(service.RolePrimary)
		waitFor(t, "primary", tagsAre(cl, "tamper", "a", "primary"))
		if err := cl.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "tamper", Name: "tamper", Tags: []string{"a", "replica"}}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "tags repaired", tagsAre(cl, "tamper", "a", "primary"))
	})

	t.Run("NoSecretsInStatusOrLogs", func(t *testing.T) {
		srv, code := flakyHTTP(t)
		code.Store(503)
		u := strings.Replace(srv.URL, "http://", "http://monitor:hunter2-secret@", 1)
		r := start(t, service.Options{Client: cl, Name: "secret", ID: "secret",
			Check: &service.Check{HTTP: u + "/health", Interval: tick, Timeout: time.Second}})
		ch := checkIs(t, cl, r.CheckID(), api.HealthCritical, "503")
		b, _ := json.Marshal(r.Status())
		for what, s := range map[string]string{"status": string(b), "log": r.logs.String(), "consul output": ch.Output, "consul notes": ch.Notes} {
			if strings.Contains(s, "hunter2") {
				t.Errorf("password in %s: %s", what, s)
			}
		}
		if !strings.Contains(string(b), "monitor:xxxxx@") {
			t.Errorf("status does not name the redacted target: %s", b)
		}
	})
}

// TestReregistersAfterAgentRestart: a dev agent forgets everything when it
// restarts; the service comes back with its role tag, maintenance mode
// and a passing check.
func TestReregistersAfterAgentRestart(t *testing.T) {
	c := testrig.StartConsul(t)
	cl := client(t, c)
	srv, _ := flakyHTTP(t)
	r := start(t, service.Options{Client: cl, Name: "phoenix", ID: "phoenix", Tags: []string{"db"},
		Check: &service.Check{HTTP: srv.URL, Interval: tick, Timeout: time.Second}})
	r.SetRole(service.RolePrimary)
	waitFor(t, "primary", tagsAre(cl, "phoenix", "db", "primary"))
	checkIs(t, cl, r.CheckID(), api.HealthPassing, "200")
	if err := r.SetMaintenance(context.Background(), true, "before restart"); err != nil {
		t.Fatal(err)
	}

	c.Stop()
	waitFor(t, "status shows the agent gone", func() error {
		if st := r.Status(); st.LastError == "" && st.Registered {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
	c.Start(t)
	t0 := time.Now()
	waitFor(t, "registered again", tagsAre(cl, "phoenix", "db", "primary"))
	checkIs(t, cl, r.CheckID(), api.HealthPassing, "200")
	checkIs(t, cl, "_service_maintenance:phoenix", api.HealthCritical, "")
	t.Logf("service back %s after the agent was ready", time.Since(t0).Round(time.Millisecond))
	waitFor(t, "status registered", func() error {
		st := r.Status()
		if !st.Registered || st.Registrations < 2 || !st.Maintenance {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
	if n := metric(t, r.reg, "lifeboat_service_registrations_total"); n < 2 {
		t.Errorf("registrations_total = %v", n)
	}
}

// TestDrainWhileAgentDownHolds: a service without a check drains while
// its agent is down; the agent refuses the maintenance call, but the
// drain's maintenance is kept and goes out with the registration once the
// agent is back: the draining instance never turns passing again.
func TestDrainWhileAgentDownHolds(t *testing.T) {
	c := testrig.StartConsul(t)
	cl := client(t, c)
	r := start(t, service.Options{Client: cl, Name: "ebb", ID: "ebb"})
	waitFor(t, "registered", tagsAre(cl, "ebb"))

	c.Stop()
	if err := r.Drain(context.Background(), "SIGTERM"); err == nil {
		t.Fatal("Drain reported the agent took maintenance while it was down")
	}
	if st := r.Status(); !st.Maintenance {
		t.Fatalf("status after a refused drain: %+v", st)
	}
	c.Start(t)
	checkIs(t, cl, "_service_maintenance:ebb", api.HealthCritical, "")
	entries, _, err := cl.Health().Service("ebb", "", true, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Fatalf("%d passing instances of a draining service, want 0", len(entries))
	}
}

// TestFrozenAgent: an agent that answers nothing (SIGSTOP) holds no call
// longer than the request timeout; status says so; once it thaws, results
// flow again.
func TestFrozenAgent(t *testing.T) {
	c := testrig.StartConsul(t)
	cl := client(t, c)
	srv, code := flakyHTTP(t)
	r := start(t, service.Options{Client: cl, Name: "ice", ID: "ice", RequestTimeout: 300 * time.Millisecond,
		Check: &service.Check{HTTP: srv.URL, Interval: tick, Timeout: time.Second}})
	checkIs(t, cl, r.CheckID(), api.HealthPassing, "200")
	c.Freeze()
	thawed := false
	defer func() {
		if !thawed {
			c.Thaw()
		}
	}()
	waitFor(t, "status shows the frozen agent", func() error {
		if st := r.Status(); !strings.Contains(st.LastError, "reporting the check") {
			return fmt.Errorf("last_error %q", st.LastError)
		}
		return nil
	})
	if n := metric(t, r.reg, "lifeboat_service_ttl_update_errors_total"); n < 1 {
		t.Errorf("ttl_update_errors_total = %v", n)
	}
	c.Thaw()
	thawed = true
	code.Store(500)
	checkIs(t, cl, r.CheckID(), api.HealthCritical, "500")
	waitFor(t, "last_error cleared", func() error {
		if st := r.Status(); st.LastError != "" || !st.Registered {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
}

func TestNewRejects(t *testing.T) {
	cl, _ := api.NewClient(api.DefaultConfig())
	for _, tc := range []struct {
		opts service.Options
		want string
	}{
		{service.Options{Name: "x"}, "no Consul client"},
		{service.Options{Client: cl}, "name must not be empty"},
		{service.Options{Client: cl, Name: "x", Check: &service.Check{Command: []string{"true"}}}, "needs a Starter"},
		{service.Options{Client: cl, Name: "x", Check: &service.Check{HTTP: "/health"}}, "needs service.port"},
		{service.Options{Client: cl, Name: "x", Check: &service.Check{HTTP: "ftp://u:pw@h/"}}, "want a URL"},
		{service.Options{Client: cl, Name: "x", Check: &service.Check{TCP: "nohost"}}, "want host:port"},
		{service.Options{Client: cl, Name: "x", Check: &service.Check{}}, "exactly one"},
	} {
		_, err := service.New(tc.opts)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: got %v, want %q", tc.opts.Check, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), ":pw@") {
			t.Errorf("password in error: %v", err)
		}
	}
	r, err := service.New(service.Options{Client: cl, Name: "web", Port: 8080, Check: &service.Check{HTTP: "/healthz"}})
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	st := r.Status()
	if r.ID() != "web-"+host || st.Check.Target != "http://127.0.0.1:8080/healthz" || st.Check.Interval != "10s" || st.Check.TTL != "25s" {
		t.Errorf("defaults: id %q status %+v", r.ID(), st.Check)
	}
}

// metric is the value of the metric name (with label=value when given).
func metric(t *testing.T, reg *prometheus.Registry, name string, label ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(label); i += 2 {
				found := false
				for _, l := range m.GetLabel() {
					found = found || (l.GetName() == label[i] && l.GetValue() == label[i+1])
				}
				if !found {
					continue next
				}
			}
			if m.Counter != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("metric %s%v not registered", name, label)
	return 0
}

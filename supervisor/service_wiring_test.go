package supervisor_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/lifeboat/lifeboat/internal/testrig"
	"github.com/lifeboat/lifeboat/supervisor/control"
	"github.com/lifeboat/lifeboat/supervisor/service"
)

// serviceConfig writes a config whose app takes a second to stop after
// SIGTERM (so the drained service can be seen) and whose command check
// passes while DIR/healthy exists.
func serviceConfig(t *testing.T, dir, consulAddr, serviceBlock string) string {
	t.Helper()
	app := `trap 'sleep 1; exit 0' TERM; while :; do sleep 0.05; done`
	cfg := fmt.Sprintf(`
app {
  command = ["/bin/sh", "-c", %q]
  env = { CHECK_GREETING = "hello-from-app-env" }
}
data { path = "%[2]s/data" }
store { url = "file://%[2]s/store" }
control { socket = "%[2]s/lb.sock" }
consul { address = %[3]q }
%[4]s
`, app, dir, consulAddr, serviceBlock)
	p := filepath.Join(dir, "lifeboat.hcl")
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func agentCheck(cl *consulapi.Client, id string) *consulapi.AgentCheck {
	checks, err := cl.Agent().Checks()
	if err != nil {
		return nil
	}
	return checks[id]
}

// TestServiceEndToEnd: lifeboat run registers the service with tags and
// meta, runs the command check under its reaper with the app's env and
// reports it, shows it in status, switches maintenance over the control
// socket, turns the service critical as soon as it is asked to stop and
// deregisters it before it exits.
func TestServiceEndToEnd(t *testing.T) {
	c := testrig.StartConsul(t)
	cl, err := consulapi.NewClient(&consulapi.Config{Address: c.HTTPAddr})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	healthy := filepath.Join(dir, "healthy")
	cfg := serviceConfig(t, dir, c.HTTPAddr, fmt.Sprintf(`
service {
  name = "web"
  id   = "web-1"
  port = 8080
  tags = ["v1"]
  meta = { team = "storage" }
  check {
    command  = ["/bin/sh", "-c", "test -f %s || exit 2; echo \"ok $CHECK_GREETING $LIFEBOAT_SERVICE_NAME\""]
    interval = "200ms"
    timeout  = "2s"
  }
}`, healthy))
	l := startLifeboat(t, cfg)

	waitFor(t, 20*time.Second, "the service on the agent", func() bool {
		svc, _, err := cl.Agent().Service("web-1", nil)
		return err == nil && svc.Port == 8080 && slices.Equal(svc.Tags, []string{"v1"}) && svc.Meta["team"] == "storage"
	})
	checkID := "service:web-1"
	waitFor(t, 5*time.Second, "the check critical without the file", func() bool {
		ch := agentCheck(cl, checkID)
		return ch != nil && ch.Status == consulapi.HealthCritical && ch.ServiceID == "web-1"
	})
	if err := os.WriteFile(healthy, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the check passing with the app's env", func() bool {
		ch := agentCheck(cl, checkID)
		return ch != nil && ch.Status == consulapi.HealthPassing && strings.Contains(ch.Output, "ok hello-from-app-env web")
	})

	sock := filepath.Join(dir, "lb.sock")
	st := exec.Command(testrig.BuildLifeboat(t), "status", "--json")
	st.Env = []string{"LIFEBOAT_SOCKET=" + sock}
	out, err := st.Output()
	if err != nil {
		t.Fatalf("status: %v\n%s", err, l.out.String())
	}
	var status struct {
		Service *service.Status `json:"service"`
	}
	if err := json.Unmarshal(out, &status); err != nil || status.Service == nil {
		t.Fatalf("status has no service section: %v\n%s", err, out)
	}
	if s := status.Service; !s.Registered || s.ID != "web-1" || s.Check == nil || s.Check.State != service.StatePassing || s.Check.Target != "/bin/sh" {
		t.Errorf("status service: %s", out)
	}

	cc, err := control.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var ms service.Status
	if err := cc.Do(ctx, "POST", service.PathMaintenance, map[string]any{"enable": true, "reason": "disk swap"}, &ms); err != nil || !ms.Maintenance {
		t.Fatalf("maintenance on: %v %+v", err, ms)
	}
	if ch := agentCheck(cl, "_service_maintenance:web-1"); ch == nil || ch.Notes != "disk swap" {
		t.Errorf("maintenance check on the agent: %+v", ch)
	}
	if err := cc.Do(ctx, "POST", service.PathMaintenance, map[string]any{"enable": false}, &ms); err != nil || ms.Maintenance {
		t.Fatalf("maintenance off: %v %+v", err, ms)
	}
	if ch := agentCheck(cl, "_service_maintenance:web-1"); ch != nil {
		t.Errorf("maintenance check still there: %+v", ch)
	}
	err = cc.Do(ctx, "POST", service.PathMaintenance, map[string]any{"reason": "no enable"}, nil)
	if err == nil || !strings.Contains(err.Error(), "enable") {
		t.Errorf("maintenance without enable: %v", err)
	}

	// SIGTERM: critical while the app takes its second to stop, then gone.
	l.cmd.Process.Signal(syscall.SIGTERM)
	waitFor(t, 3*time.Second, "the service drained while the app stops", func() bool {
		ch := agentCheck(cl, checkID)
		return ch != nil && ch.Status == consulapi.HealthCritical && strings.Contains(ch.Output, "shutting down")
	})
	select {
	case <-l.done:
		t.Fatalf("lifeboat exited before the drain was seen")
	default:
	}
	code := l.wait(t, 20*time.Second)
	if _, _, err := cl.Agent().Service("web-1", nil); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("service still registered after lifeboat exited (%d): %v\n%s", code, err, l.out.String())
	}
	if t.Failed() {
		t.Logf("lifeboat output:\n%s", l.out.String())
	}
}

// TestServiceBadCheckIsUsageError: a check lifeboat cannot run is a config
// error: exit 2 before the app starts, naming the problem.
func TestServiceBadCheckIsUsageError(t *testing.T) {
	c := testrig.StartConsul(t)
	dir := t.TempDir()
	cfg := serviceConfig(t, dir, c.HTTPAddr, `
service {
  name = "web"
  check { http = "/health" }
}`)
	l := startLifeboat(t, cfg)
	if code := l.wait(t, 20*time.Second); code != 2 {
		t.Fatalf("exit %d, want 2; output:\n%s", code, l.out.String())
	}
	if !strings.Contains(l.out.String(), "needs service.port") {
		t.Errorf("output does not say what is wrong:\n%s", l.out.String())
	}
}

package supervisor_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/lifeboat/lifeboat/internal/testrig"
	"github.com/lifeboat/lifeboat/supervisor/election"
)

// electionConfig writes the config of one replica: an app that stops on
// SIGTERM, and election hooks that leave their variables in dir.
func electionConfig(t *testing.T, dir, consulAddr string, port int) string {
	t.Helper()
	app := `trap 'exit 0' TERM; while :; do sleep 0.05; done`
	hook := func(name, body string) string {
		return fmt.Sprintf("  hook %q {\n    command = [\"/bin/sh\", \"-c\", %q]\n    timeout = \"5s\"\n  }\n", name, body)
	}
	cfg := fmt.Sprintf(`
app { command = ["/bin/sh", "-c", %q] }
data { path = "%[2]s/data" }
store { url = "file://%[2]s/store" }
control { socket = "%[2]s/lb.sock" }
consul { address = %[3]q }
election {
  key       = "test/e2e/leader"
  ttl       = "10s"
  advertise = "127.0.0.1"
  port      = %[4]d
%[5]s%[6]s%[7]s}
service {
  name = "db"
  id   = "db-%[4]d"
  port = %[4]d
}
`, app, dir, consulAddr, port,
		hook("on_leader", `echo "$LIFEBOAT_ROLE $LIFEBOAT_FENCING_TOKEN" > `+dir+`/leader.tmp && mv `+dir+`/leader.tmp `+dir+`/leader`),
		hook("on_follower", `echo "$LIFEBOAT_LEADER $LIFEBOAT_FENCING_TOKEN" > `+dir+`/follower.tmp && mv `+dir+`/follower.tmp `+dir+`/follower`),
		hook("on_demote", `touch `+dir+`/demoted`))
	p := filepath.Join(dir, "lifeboat.hcl")
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func readTrim(p string) string {
	b, _ := os.ReadFile(p)
	return strings.TrimSpace(string(b))
}

func electionStatus(t *testing.T, dir string) *election.Status {
	t.Helper()
	st := exec.Command(testrig.BuildLifeboat(t), "status", "--json")
	st.Env = []string{"LIFEBOAT_SOCKET=" + filepath.Join(dir, "lb.sock")}
	out, err := st.Output()
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	var status struct {
		Election *election.Status `json:"election"`
	}
	if err := json.Unmarshal(out, &status); err != nil || status.Election == nil {
		t.Fatalf("status has no election section: %v\n%s", err, out)
	}
	return status.Election
}

// TestElectionEndToEnd: two lifeboat runs on one Consul: the first leads
// (on_leader with its fencing token), the second follows it (on_follower
// with the leader's address); status shows both; SIGTERM of the leader
// releases the lock after the app stopped and the follower takes over
// within a second, with a higher token; the service tags follow the role.
func TestElectionEndToEnd(t *testing.T) {
	c := testrig.StartConsul(t)
	dirA, dirB := t.TempDir(), t.TempDir()
	a := startLifeboat(t, electionConfig(t, dirA, c.HTTPAddr, 5001), "LIFEBOAT_NODE=a")
	waitFor(t, 20*time.Second, "a's on_leader", func() bool { return strings.HasPrefix(readTrim(dirA+"/leader"), "leader ") })
	tokA, _ := strconv.ParseUint(strings.Fields(readTrim(dirA + "/leader"))[1], 10, 64)
	if tokA == 0 {
		t.Fatalf("on_leader got no fencing token: %q", readTrim(dirA+"/leader"))
	}
	b := startLifeboat(t, electionConfig(t, dirB, c.HTTPAddr, 5002), "LIFEBOAT_NODE=b")
	waitFor(t, 20*time.Second, "b's on_follower", func() bool { return readTrim(dirB+"/follower") == fmt.Sprintf("127.0.0.1:5001 %d", tokA) })

	if st := electionStatus(t, dirA); st.Role != election.RoleLeader || st.FencingToken != tokA || !st.SessionHealthy || st.Node != "a" {
		t.Fatalf("a's status: %+v", st)
	}
	if st := electionStatus(t, dirB); st.Role != election.RoleFollower || st.Leader != "127.0.0.1:5001" || st.LeaderNode != "a" {
		t.Fatalf("b's status: %+v", st)
	}

	// The service registration carries the role tags.
	cl, err := consulapi.NewClient(&consulapi.Config{Address: c.HTTPAddr})
	if err != nil {
		t.Fatal(err)
	}
	hasTag := func(id, tag string) bool {
		svc, _, err := cl.Agent().Service(id, nil)
		return err == nil && slices.Contains(svc.Tags, tag)
	}
	waitFor(t, 10*time.Second, "primary and replica tags", func() bool { return hasTag("db-5001", "primary") && hasTag("db-5002", "replica") })

	a.cmd.Process.Signal(syscall.SIGTERM)
	if code := a.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("a exited %d; output:\n%s", code, a.out.String())
	}
	exited := time.Now()
	waitFor(t, 5*time.Second, "b's on_leader", func() bool { return strings.HasPrefix(readTrim(dirB+"/leader"), "leader ") })
	if d := time.Since(exited); d > 2*time.Second {
		t.Fatalf("b led %s after a exited; a graceful handover must not wait for ttl or lock_delay", d)
	}
	tokB, _ := strconv.ParseUint(strings.Fields(readTrim(dirB + "/leader"))[1], 10, 64)
	if tokB <= tokA {
		t.Fatalf("fencing token went from %d to %d", tokA, tokB)
	}
	if _, err := os.Stat(dirA + "/demoted"); err == nil {
		t.Error("a ran on_demote on a graceful stop; its app was already stopped")
	}
	if st := electionStatus(t, dirB); st.Role != election.RoleLeader || st.FencingToken != tokB {
		t.Fatalf("b's status after the handover: %+v", st)
	}
	waitFor(t, 10*time.Second, "b tagged primary", func() bool { return hasTag("db-5002", "primary") })
	_ = b
}

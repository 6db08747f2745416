package testrig

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

// Smoke tests: each real server starts, answers, and stops.

func TestConsulSmoke(t *testing.T) {
	c := StartConsul(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	code, body, err := httpGet(ctx, c.URL()+"/v1/agent/self")
	if err != nil || code != 200 || !strings.Contains(string(body), c.NodeName) {
		t.Fatalf("agent/self: %d %v %.200s", code, err, body)
	}
	c.Stop()
	if _, _, err := httpGet(ctx, c.URL()+"/v1/agent/self"); err == nil {
		t.Fatal("consul still answers after Stop")
	}
}

func TestVaultSmoke(t *testing.T) {
	v := StartVault(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	code, body, err := httpGet(ctx, v.Addr+"/v1/sys/health")
	if err != nil || code != 200 || !strings.Contains(string(body), `"sealed":false`) {
		t.Fatalf("sys/health: %d %v %s", code, err, body)
	}
	v.Stop()
	if _, _, err := httpGet(ctx, v.Addr+"/v1/sys/health"); err == nil {
		t.Fatal("vault still answers after Stop")
	}
}

func TestMinIOSmoke(t *testing.T) {
	m := StartMinIO(t)
	m.MakeBucket(t, "smoke")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ok, err := m.Client(t).BucketExists(ctx, "smoke")
	if err != nil || !ok {
		t.Fatalf("bucket exists: %v %v", ok, err)
	}
	// Data survives a restart.
	m.Stop()
	m.Start(t)
	ok, err = m.Client(t).BucketExists(ctx, "smoke")
	if err != nil || !ok {
		t.Fatalf("bucket after restart: %v %v", ok, err)
	}
}

func TestMariaDBSmoke(t *testing.T) {
	db := StartMariaDB(t, MariaDBOptions{ServerID: 7})
	if got := db.Exec(t, "SELECT @@server_id"); got != "7" {
		t.Fatalf("server_id = %q, want 7", got)
	}
	db.Exec(t, "CREATE DATABASE smoke; CREATE TABLE smoke.t (id INT PRIMARY KEY); INSERT INTO smoke.t VALUES (1),(2)")
	if got := db.Exec(t, "SELECT COUNT(*) FROM smoke.t"); got != "2" {
		t.Fatalf("count = %q, want 2", got)
	}
	if got := db.Exec(t, "SELECT @@log_bin"); got != "1" {
		t.Fatalf("log_bin = %q, want 1", got)
	}
	db.Stop()
	if _, err := db.Query("SELECT 1"); err == nil {
		t.Fatal("mariadb still answers after Stop")
	}
}

func TestConsulClusterSmoke(t *testing.T) {
	agents := StartConsulCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	code, body, err := httpGet(ctx, agents[0].URL()+"/v1/status/peers")
	if err != nil || code != 200 || strings.Count(string(body), ":") != 3 {
		t.Fatalf("peers: %d %v %s", code, err, body)
	}
	// The cluster keeps a leader with one agent frozen.
	agents[2].Freeze()
	defer agents[2].Thaw()
	if err := agents[0].waitReady(agents[0].ready); err != nil {
		t.Fatalf("after freezing one agent: %v", err)
	}
}

// TestFreePortOutsideEphemeralRange: FreePort's ports are distinct,
// bindable, and below the kernel's ephemeral range, where no outgoing
// connection can take them before the server binds.
func TestFreePortOutsideEphemeralRange(t *testing.T) {
	low := ephemeralLow()
	seen := map[int]bool{}
	for range 50 {
		p := FreePort(t)
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
		if low > 11000 && p >= low {
			t.Fatalf("port %d is in the ephemeral range (from %d)", p, low)
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			t.Fatalf("port %d: %v", p, err)
		}
		l.Close()
	}
}

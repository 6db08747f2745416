package testrig

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
)

// Consul is a `consul agent -dev` on loopback.
type Consul struct {
	*Server
	HTTPAddr string // "127.0.0.1:PORT", for api.Config.Address / CONSUL_HTTP_ADDR
	NodeName string
}

// StartConsul starts a single-node dev agent and waits until it has a leader
// and has registered its own node, so sessions can be created at once.
func StartConsul(t testing.TB) *Consul {
	t.Helper()
	bin := Binary(t, "consul")
	http, server, lan, wan := FreePort(t), FreePort(t), FreePort(t), FreePort(t)
	node := "testrig-" + strconv.Itoa(http)
	args := []string{"agent", "-dev", "-node", node,
		"-client", "127.0.0.1", "-bind", "127.0.0.1",
		"-http-port", strconv.Itoa(http), "-grpc-port", "-1", "-grpc-tls-port", "-1", "-dns-port", "-1",
		"-server-port", strconv.Itoa(server), "-serf-lan-port", strconv.Itoa(lan), "-serf-wan-port", strconv.Itoa(wan),
		"-log-level", "warn"}
	c := &Consul{Server: newServer(t, "consul", bin, args, nil), HTTPAddr: fmt.Sprintf("127.0.0.1:%d", http), NodeName: node}
	c.startAndWait(t, c.ready)
	t.Cleanup(c.Stop)
	return c
}

// Start starts a stopped agent again (a dev agent starts with empty state).
func (c *Consul) Start(t testing.TB) {
	t.Helper()
	c.startAndWait(t, c.ready)
}

// URL is the agent's HTTP base URL.
func (c *Consul) URL() string { return "http://" + c.HTTPAddr }

func (c *Consul) ready(ctx context.Context) error {
	code, body, err := httpGet(ctx, c.URL()+"/v1/status/leader")
	if err != nil {
		return err
	}
	if code != 200 || strings.Trim(strings.TrimSpace(string(body)), `"`) == "" {
		return fmt.Errorf("no leader yet: %d %s", code, body)
	}
	code, body, err = httpGet(ctx, c.URL()+"/v1/health/node/"+c.NodeName)
	if err != nil {
		return err
	}
	var checks []struct{ CheckID, Status string }
	if code != 200 || json.Unmarshal(body, &checks) != nil {
		return fmt.Errorf("node %s: %d %s", c.NodeName, code, body)
	}
	healthy := false
	for _, ch := range checks {
		healthy = healthy || (ch.CheckID == "serfHealth" && ch.Status == "passing")
	}
	if !healthy {
		return fmt.Errorf("node %s not healthy yet: %s", c.NodeName, body)
	}
	return nil
}

package testrig

import (
	"fmt"
	"strconv"
	"testing"
)

// StartConsulCluster starts n Consul server agents (not dev mode) on
// 127.0.0.11, 127.0.0.12, ... that form one cluster, and waits until every
// agent sees a leader and its own node healthy. Each agent is a separate
// process, so one can be stopped or frozen (Freeze) to play a node whose
// agent died or hung while the rest keep quorum.
func StartConsulCluster(t testing.TB, n int) []*Consul {
	t.Helper()
	bin := Binary(t, "consul")
	type node struct {
		ip                     string
		http, server, lan, wan int
	}
	nodes := make([]node, n)
	for i := range nodes {
		nodes[i] = node{ip: fmt.Sprintf("127.0.0.%d", 11+i), http: FreePort(t), server: FreePort(t), lan: FreePort(t), wan: FreePort(t)}
	}
	agents := make([]*Consul, n)
	for i, nd := range nodes {
		name := fmt.Sprintf("testrig-node%d-%d", i+1, nd.http)
		args := []string{"agent", "-server", "-bootstrap-expect", strconv.Itoa(n), "-node", name,
			"-bind", nd.ip, "-advertise", nd.ip, "-client", nd.ip,
			"-http-port", strconv.Itoa(nd.http), "-grpc-port", "-1", "-grpc-tls-port", "-1", "-dns-port", "-1",
			"-server-port", strconv.Itoa(nd.server), "-serf-lan-port", strconv.Itoa(nd.lan), "-serf-wan-port", strconv.Itoa(nd.wan),
			"-log-level", "warn",
			// Production timing scaled down: fast elections and failure detection.
			"-hcl", "performance { raft_multiplier = 1 }"}
		for j, peer := range nodes {
			if j != i {
				args = append(args, "-retry-join", fmt.Sprintf("%s:%d", peer.ip, peer.lan))
			}
		}
		c := &Consul{Server: newServer(t, name, bin, nil, nil), HTTPAddr: fmt.Sprintf("%s:%d", nd.ip, nd.http), NodeName: name}
		c.Server.args = append(args, "-data-dir", c.Server.dir+"/data")
		if err := c.start(); err != nil {
			t.Fatalf("testrig: %v", err)
		}
		t.Cleanup(c.Stop)
		agents[i] = c
	}
	for _, c := range agents {
		if err := c.waitReady(c.ready); err != nil {
			t.Fatalf("testrig: cluster: %v", err)
		}
	}
	return agents
}

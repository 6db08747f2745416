package consul_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/lifeboat/lifeboat/internal/testrig"
	"github.com/lifeboat/lifeboat/supervisor/consul"
)

func TestNewClientOptionsAndEnv(t *testing.T) {
	t.Setenv("CONSUL_HTTP_ADDR", "127.0.0.9:1234")
	t.Setenv("CONSUL_HTTP_TOKEN", "")
	tok := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tok, []byte("tok-from-file\n"), 0o600)
	for _, tc := range []struct {
		opts              consul.Options
		wantAddr, wantTok string
	}{
		{consul.Options{}, "127.0.0.9:1234", ""},
		{consul.Options{Address: "https://127.0.0.10:8501/", TokenFile: tok}, "127.0.0.10:8501", "tok-from-file"},
		{consul.Options{Address: "127.0.0.11:8500", Token: "t"}, "127.0.0.11:8500", "t"},
	} {
		c, err := consul.NewClient(tc.opts)
		if err != nil {
			t.Fatal(err)
		}
		// The client's config is not exported; the request URL shows the address.
		_, err = c.Agent().Self()
		if err == nil || !strings.Contains(err.Error(), tc.wantAddr) {
			t.Errorf("opts %+v: request did not go to %s: %v", tc.opts, tc.wantAddr, err)
		}
	}
	if _, err := consul.NewClient(consul.Options{TokenFile: "/nonexistent/token"}); err == nil || !strings.Contains(err.Error(), "token_file") {
		t.Errorf("missing token file: %v", err)
	}
}

// TestWatchBlocksAndRecovers: values arrive through blocking queries; a
// stopped agent is reported through onError; the watch recovers when an
// agent is back on the same address.
func TestWatchBlocksAndRecovers(t *testing.T) {
	srv := testrig.StartConsul(t)
	c, err := consul.NewClient(consul.Options{Address: srv.HTTPAddr})
	if err != nil {
		t.Fatal(err)
	}
	put := func(v string) {
		if _, err := c.KV().Put(&api.KVPair{Key: "w/k", Value: []byte(v)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	put("1")
	var mu sync.Mutex
	var values []string
	var errs int
	queries := 0
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		consul.Watch(ctx, func(q *api.QueryOptions) (any, *api.QueryMeta, error) {
			mu.Lock()
			queries++
			mu.Unlock()
			p, meta, err := c.KV().Get("w/k", q)
			if p == nil {
				return "", meta, err
			}
			return string(p.Value), meta, err
		}, consul.WatchOptions{RetryInitial: 20 * time.Millisecond, RetryMax: 100 * time.Millisecond},
			func(v any) { mu.Lock(); values = append(values, v.(string)); mu.Unlock() },
			func(error) { mu.Lock(); errs++; mu.Unlock() })
	}()
	defer func() { cancel(); <-done }()
	last := func() (string, int, int) {
		mu.Lock()
		defer mu.Unlock()
		if len(values) == 0 {
			return "", errs, queries
		}
		return values[len(values)-1], errs, queries
	}
	wait := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(10 * time.Millisecond) // poll tick
		}
	}
	wait("first value", func() bool { v, _, _ := last(); return v == "1" })
	put("2")
	t0 := time.Now()
	wait("second value", func() bool { v, _, _ := last(); return v == "2" })
	if d := time.Since(t0); d > time.Second {
		t.Errorf("change seen after %s", d)
	}
	// Blocking, not polling: a quiet second costs no queries.
	_, _, q0 := last()
	time.Sleep(time.Second) // measuring idleness, not waiting for a condition
	if _, _, q1 := last(); q1 != q0 {
		t.Errorf("%d queries in a quiet second; a blocking query makes none", q1-q0)
	}
	srv.Stop()
	wait("an error while the agent is down", func() bool { _, e, _ := last(); return e > 0 })
	srv.Start(t) // a fresh dev agent: empty KV
	put("3")
	wait("the value from the restarted agent", func() bool { v, _, _ := last(); return v == "3" })
}

// Package consul builds lifeboat's Consul client and runs Consul blocking
// queries. Sessions and service registration live in the election and
// service packages; they use the *api.Client made here.
package consul

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
)

// Defaults for blocking queries.
const (
	// DefaultWaitTime is how long one blocking query waits for a change
	// before Consul answers with the same index.
	DefaultWaitTime = 5 * time.Minute
	// DefaultRetryInitial and DefaultRetryMax bound the backoff between
	// failed queries while Consul is unreachable.
	DefaultRetryInitial = 250 * time.Millisecond
	DefaultRetryMax     = 30 * time.Second
	// queryGrace is added to a blocking query's client-side deadline.
	queryGrace = 5 * time.Second
)

// TLS is client TLS towards the Consul agent.
type TLS struct {
	CAFile             string
	CertFile           string
	KeyFile            string
	ServerName         string
	InsecureSkipVerify bool
}

// Options configure the client. Empty fields fall back to the
// conventional CONSUL_HTTP_* environment variables (CONSUL_HTTP_ADDR,
// CONSUL_HTTP_TOKEN, CONSUL_HTTP_TOKEN_FILE, CONSUL_HTTP_SSL, CONSUL_CACERT,
// ...), which consul/api reads, and then to the local agent.
type Options struct {
	Address    string // host:port, or a URL "https://host:port"
	Scheme     string // http or https
	Token      string
	TokenFile  string
	Datacenter string
	TLS        TLS
}

// NewClient returns a Consul API client for opts. It does not contact
// Consul; the first query does.
func NewClient(opts Options) (*api.Client, error) {
	cfg := api.DefaultConfig() // reads CONSUL_HTTP_* env
	if opts.Address != "" {
		addr := opts.Address
		if i := strings.Index(addr, "://"); i >= 0 {
			cfg.Scheme = addr[:i]
			addr = addr[i+3:]
		}
		cfg.Address = strings.TrimSuffix(addr, "/")
	}
	if opts.Scheme != "" {
		cfg.Scheme = opts.Scheme
	}
	if opts.Token != "" {
		cfg.Token = opts.Token
	}
	if opts.TokenFile != "" {
		// Read here rather than leaving it to consul/api, so a missing
		// file is a clear error at start instead of an anonymous request.
		b, err := os.ReadFile(opts.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("consul: reading token_file: %w", err)
		}
		cfg.Token = strings.TrimSpace(string(b))
		cfg.TokenFile = ""
	}
	if opts.Datacenter != "" {
		cfg.Datacenter = opts.Datacenter
	}
	t := opts.TLS
	if t.CAFile != "" {
		cfg.TLSConfig.CAFile = t.CAFile
	}
	if t.CertFile != "" {
		cfg.TLSConfig.CertFile = t.CertFile
	}
	if t.KeyFile != "" {
		cfg.TLSConfig.KeyFile = t.KeyFile
	}
	if t.ServerName != "" {
		cfg.TLSConfig.Address = t.ServerName
	}
	if t.InsecureSkipVerify {
		cfg.TLSConfig.InsecureSkipVerify = true
	}
	if t.CAFile != "" || t.CertFile != "" {
		if cfg.Scheme == "" || cfg.Scheme == "http" {
			cfg.Scheme = "https"
		}
	}
	c, err := api.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("consul: building client for %s: %w", cfg.Address, err)
	}
	return c, nil
}

// Query is one blocking query. It must pass q to the consul/api call (it
// carries the wait index and the context) and return the result and the
// query metadata.
type Query func(q *api.QueryOptions) (any, *api.QueryMeta, error)

// WatchOptions tune Watch.
type WatchOptions struct {
	WaitTime     time.Duration // default DefaultWaitTime
	RetryInitial time.Duration // default DefaultRetryInitial
	RetryMax     time.Duration // default DefaultRetryMax
	// AllowStale lets any server answer; fine for config reads.
	AllowStale bool
}

// Watch runs query as a Consul blocking query until ctx ends: it calls
// onValue with the first result and then with every result whose index
// moved, and onError with every failed query (the watch then retries with
// exponential backoff; the last value stays where the caller put it). It
// never polls: each call waits in Consul until the index moves or WaitTime
// passes. It returns ctx's error.
func Watch(ctx context.Context, query Query, opts WatchOptions, onValue func(any), onError func(error)) error {
	if opts.WaitTime <= 0 {
		opts.WaitTime = DefaultWaitTime
	}
	if opts.RetryInitial <= 0 {
		opts.RetryInitial = DefaultRetryInitial
	}
	if opts.RetryMax <= 0 {
		opts.RetryMax = DefaultRetryMax
	}
	var index uint64
	first := true
	backoff := opts.RetryInitial
	for {
		// Consul answers a blocking query after WaitTime plus up to
		// WaitTime/16 of jitter; a server that has not answered well after
		// that is hung (or partitioned), and the query is abandoned so the
		// outage shows in status instead of hiding in a silent wait.
		qctx, cancel := context.WithTimeout(ctx, opts.WaitTime+opts.WaitTime/8+queryGrace)
		q := (&api.QueryOptions{WaitIndex: index, WaitTime: opts.WaitTime, AllowStale: opts.AllowStale}).WithContext(qctx)
		v, meta, err := query(q)
		cancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			onError(err)
			t := time.NewTimer(backoff)
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-t.C:
			}
			backoff = min(backoff*2, opts.RetryMax)
			// After an outage the agent may be a new one with its own
			// index space: start over so the next answer is immediate.
			index = 0
			first = true
			continue
		}
		backoff = opts.RetryInitial
		newIndex := meta.LastIndex
		changed := first || newIndex != index
		// Reset rules from Consul's blocking-query docs: an index that goes
		// backwards means the state was reset; 0 must never be sent back.
		switch {
		case newIndex < index:
			newIndex = 0
		case newIndex == 0:
			newIndex = 1
		}
		index = newIndex
		if changed {
			first = false
			onValue(v)
		}
	}
}

// IsNotFound reports whether err is Consul's 404 for a missing object.
func IsNotFound(err error) bool {
	var se api.StatusError
	return errors.As(err, &se) && se.Code == 404
}

// IsUnknownCheck reports whether err is the agent's answer to a TTL update
// of a check it does not have: it forgot the registration (an agent
// restart without state). The status code has varied between Consul
// versions (404, or 500 with the reason in the body, in two wordings).
func IsUnknownCheck(err error) bool {
	if IsNotFound(err) {
		return true
	}
	var se api.StatusError
	if !errors.As(err, &se) {
		return false
	}
	b := strings.ToLower(se.Body)
	return strings.Contains(b, "does not have associated ttl") || strings.Contains(b, "unknown check")
}

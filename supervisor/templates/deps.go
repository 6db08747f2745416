package templates

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/lifeboat/lifeboat/supervisor/consul"
	"github.com/lifeboat/lifeboat/supervisor/vault"
)

// SecretSource is the part of the Vault client templates use; the
// supervisor passes its *vault.Client.
type SecretSource interface {
	Read(ctx context.Context, path string) (*vault.Secret, error)
	WaitStale(ctx context.Context, s *vault.Secret, staticRefresh time.Duration) error
}

var _ SecretSource = (*vault.Client)(nil)

// KV is one Consul key under a prefix, as ls and tree return it.
type KV struct {
	Key   string // relative to the prefix
	Value string
}

// Service is one healthy instance of a Consul service.
type Service struct {
	Name    string
	ID      string
	Node    string
	Address string // the service's address, or its node's when unset
	Port    int
	Tags    []string
	Meta    map[string]string
}

// dep is one piece of data templates read: a Consul key, prefix or
// service, or a Vault secret. Each one is watched by one goroutine.
type dep interface {
	id() string       // unique key, e.g. "key:app/port"
	describe() string // for people: `consul key "app/port"`
	source() string   // "consul" or "vault"
	watch(ctx context.Context, m *Manager)
}

// absent is the value of a dependency that was fetched and does not exist
// (a missing key, a secret path with nothing). Templates that need it
// cannot complete; keyOrDefault can.
type absent struct{ reason string }

type keyDep struct{ key string }

func (d keyDep) id() string       { return "key:" + d.key }
func (d keyDep) describe() string { return fmt.Sprintf("consul key %q", d.key) }
func (d keyDep) source() string   { return "consul" }
func (d keyDep) watch(ctx context.Context, m *Manager) {
	m.consulWatch(ctx, d, func(q *api.QueryOptions) (any, *api.QueryMeta, error) {
		p, meta, err := m.opts.Consul.KV().Get(d.key, q)
		if err != nil || p == nil {
			return absent{reason: d.describe() + " does not exist"}, meta, err
		}
		return string(p.Value), meta, nil
	})
}

type listDep struct {
	prefix string
	deep   bool // tree: every key below; ls: direct children only
}

func (d listDep) id() string {
	if d.deep {
		return "tree:" + d.prefix
	}
	return "ls:" + d.prefix
}
func (d listDep) describe() string { return fmt.Sprintf("consul prefix %q", d.prefix) }
func (d listDep) source() string   { return "consul" }
func (d listDep) watch(ctx context.Context, m *Manager) {
	prefix := strings.TrimSuffix(d.prefix, "/") + "/"
	if d.prefix == "" || d.prefix == "/" {
		prefix = ""
	}
	m.consulWatch(ctx, d, func(q *api.QueryOptions) (any, *api.QueryMeta, error) {
		pairs, meta, err := m.opts.Consul.KV().List(prefix, q)
		if err != nil {
			return nil, meta, err
		}
		out := []KV{}
		for _, p := range pairs {
			rel := strings.TrimPrefix(p.Key, prefix)
			if rel == "" || strings.HasSuffix(rel, "/") {
				continue // the prefix itself or a folder marker
			}
			if !d.deep && strings.Contains(rel, "/") {
				continue
			}
			out = append(out, KV{Key: rel, Value: string(p.Value)})
		}
		sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
		return out, meta, nil
	})
}

type serviceDep struct{ name, tag string }

func (d serviceDep) id() string { return "service:" + d.name + ":" + d.tag }
func (d serviceDep) describe() string {
	if d.tag != "" {
		return fmt.Sprintf("consul service %q tag %q", d.name, d.tag)
	}
	return fmt.Sprintf("consul service %q", d.name)
}
func (d serviceDep) source() string { return "consul" }
func (d serviceDep) watch(ctx context.Context, m *Manager) {
	m.consulWatch(ctx, d, func(q *api.QueryOptions) (any, *api.QueryMeta, error) {
		entries, meta, err := m.opts.Consul.Health().Service(d.name, d.tag, true, q)
		if err != nil {
			return nil, meta, err
		}
		out := []Service{}
		for _, e := range entries {
			s := Service{Name: e.Service.Service, ID: e.Service.ID, Node: e.Node.Node,
				Address: e.Service.Address, Port: e.Service.Port, Tags: e.Service.Tags, Meta: e.Service.Meta}
			if s.Address == "" {
				s.Address = e.Node.Address
			}
			out = append(out, s)
		}
		sort.Slice(out, func(i, j int) bool {
			return out[i].ID < out[j].ID || out[i].ID == out[j].ID && out[i].Node < out[j].Node
		})
		return out, meta, nil
	})
}

type secretDep struct{ path string }

func (d secretDep) id() string       { return "secret:" + d.path }
func (d secretDep) describe() string { return "vault secret " + d.path }
func (d secretDep) source() string   { return "vault" }

// watch reads the secret, then lets the Vault client keep its lease (or
// wait out its refresh time) and reads it again; failures keep the last
// value and retry with backoff.
func (d secretDep) watch(ctx context.Context, m *Manager) {
	if m.opts.Vault == nil {
		m.update(d, absent{reason: d.describe() + ": no vault block is configured"}, nil)
		return
	}
	backoff := m.opts.RetryInitial
	for ctx.Err() == nil {
		s, err := m.opts.Vault.Read(ctx, d.path)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, vault.ErrNotFound) {
			m.update(d, absent{reason: d.describe() + " does not exist"}, nil)
			err = fmt.Errorf("%s does not exist", d.describe())
		} else if err == nil {
			backoff = m.opts.RetryInitial
			m.update(d, s, nil)
			if m.opts.Vault.WaitStale(ctx, s, m.opts.StaticRefresh) != nil {
				return
			}
			continue
		} else {
			m.update(d, nil, err)
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(backoff*2, m.opts.RetryMax)
	}
}

// consulWatch runs one Consul blocking query for d.
func (m *Manager) consulWatch(ctx context.Context, d dep, q consul.Query) {
	if m.opts.Consul == nil {
		m.update(d, absent{reason: d.describe() + ": no consul block is configured"}, nil)
		return
	}
	m.m.consulWatches.Inc()
	defer m.m.consulWatches.Dec()
	_ = consul.Watch(ctx, q, consul.WatchOptions{WaitTime: m.opts.ConsulWaitTime, RetryInitial: m.opts.RetryInitial, RetryMax: m.opts.RetryMax},
		func(v any) { m.m.consulUp.Set(1); m.update(d, v, nil) },
		func(err error) {
			m.m.consulUp.Set(0)
			m.m.consulErrors.Inc()
			m.update(d, nil, err)
		})
}

// secretValue compares secrets by their data, not their read time.
func sameValue(a, b any) bool {
	sa, okA := a.(*vault.Secret)
	sb, okB := b.(*vault.Secret)
	if okA && okB {
		return reflect.DeepEqual(sa.Data, sb.Data)
	}
	return reflect.DeepEqual(a, b)
}

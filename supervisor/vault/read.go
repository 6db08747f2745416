package vault

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/vault/api"
)

// DefaultStaticRefresh is how often a secret without a lease (KV v2) is
// read again to notice changes, as Vault Agent does.
const DefaultStaticRefresh = 5 * time.Minute

// leaseRounding is the precision of the lease TTLs Vault reports.
const leaseRounding = time.Second

// Secret is one read secret with its lease. Data holds the fields (for
// KV v2 the inner "data" map). It has no String method on purpose: print
// Path, never the Secret.
type Secret struct {
	Path          string // the path actually read (with data/ for KV v2)
	Data          map[string]any
	LeaseID       string
	LeaseDuration time.Duration
	Renewable     bool
	ReadAt        time.Time
	raw           *api.Secret
	relogin       <-chan struct{} // closed when the token it was read with is replaced
}

// Field returns one field as a string (numbers and booleans formatted,
// objects as JSON). The error names the path and field, not a value.
func (s *Secret) Field(name string) (string, error) {
	v, ok := s.Data[name]
	if !ok {
		return "", fmt.Errorf("vault: secret %s has no field %q", s.Path, name)
	}
	switch v := v.(type) {
	case string:
		return v, nil
	case nil:
		return "", nil
	case map[string]any, []any:
		b, err := json.Marshal(v)
		if err != nil {
			return "", fmt.Errorf("vault: secret %s field %q: %w", s.Path, name, err)
		}
		return string(b), nil
	default:
		return fmt.Sprint(v), nil
	}
}

type mountInfo struct {
	path    string // "secret/"
	version int    // 1 or 2 for KV; 0 for other engines
}

// mount finds the mount holding path and whether it is KV v2, asking
// Vault's preflight endpoint (as the vault CLI does) once per mount. When
// the token may not ask, the path is used as written.
func (c *Client) mount(ctx context.Context, path string) mountInfo {
	c.kvMu.Lock()
	for p, mi := range c.kvVer {
		if strings.HasPrefix(path, p) {
			c.kvMu.Unlock()
			return mi
		}
	}
	c.kvMu.Unlock()
	sec, err := c.api.Logical().ReadWithContext(ctx, "sys/internal/ui/mounts/"+path)
	if err != nil || sec == nil || sec.Data == nil {
		return mountInfo{}
	}
	mi := mountInfo{}
	mi.path, _ = sec.Data["path"].(string)
	if t, _ := sec.Data["type"].(string); t == "kv" || t == "generic" {
		mi.version = 1
		if o, ok := sec.Data["options"].(map[string]any); ok {
			if v, _ := o["version"].(string); v == "2" {
				mi.version = 2
			}
		}
	}
	if mi.path != "" {
		c.kvMu.Lock()
		c.kvVer[mi.path] = mi
		c.kvMu.Unlock()
	}
	return mi
}

// Read reads the secret at path. KV v2 paths may be written with or
// without "data/" after the mount ("secret/app" and "secret/data/app" read
// the same). A missing secret is an error wrapping ErrNotFound.
func (c *Client) Read(ctx context.Context, path string) (*Secret, error) {
	path = strings.Trim(path, "/")
	c.mu.Lock()
	relogin := c.relogin
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
	defer cancel()
	mi := c.mount(ctx, path)
	readPath := path
	if mi.version == 2 {
		rest := strings.TrimPrefix(path, mi.path)
		if !strings.HasPrefix(rest, "data/") {
			readPath = mi.path + "data/" + rest
		}
	}
	sec, err := c.api.Logical().ReadWithContext(ctx, readPath)
	if err != nil {
		err = fmt.Errorf("vault: reading %s: %w", readPath, err)
		c.noteError(err)
		return nil, err
	}
	c.noteOK()
	c.m.reads.Inc()
	if sec == nil {
		return nil, fmt.Errorf("vault: reading %s: %w", readPath, ErrNotFound)
	}
	s := &Secret{
		Path: readPath, Data: sec.Data, LeaseID: sec.LeaseID,
		LeaseDuration: time.Duration(sec.LeaseDuration) * time.Second,
		Renewable:     sec.Renewable, ReadAt: time.Now(), raw: sec, relogin: relogin,
	}
	if mi.version == 2 || isKV2Shape(sec.Data) {
		inner, _ := sec.Data["data"].(map[string]any)
		if inner == nil { // deleted or destroyed version
			return nil, fmt.Errorf("vault: reading %s: %w (the latest version is deleted)", readPath, ErrNotFound)
		}
		s.Data = inner
	}
	return s, nil
}

func isKV2Shape(d map[string]any) bool {
	if len(d) != 2 {
		return false
	}
	_, hasData := d["data"]
	_, hasMeta := d["metadata"].(map[string]any)
	return hasData && hasMeta
}

// ReadField reads one field of the secret at path.
func (c *Client) ReadField(ctx context.Context, path, field string) (string, error) {
	s, err := c.Read(ctx, path)
	if err != nil {
		return "", err
	}
	return s.Field(field)
}

// ResolveSecretRef reads a reference written "PATH#FIELD", for example
// "secret/data/lifeboat#access_key" (how the store block names its
// credentials and encryption key).
func (c *Client) ResolveSecretRef(ctx context.Context, ref string) (string, error) {
	path, field, ok := strings.Cut(ref, "#")
	if !ok || path == "" || field == "" {
		return "", fmt.Errorf("vault: secret reference %q must be PATH#FIELD, e.g. secret/data/lifeboat#access_key", ref)
	}
	return c.ReadField(ctx, path, field)
}

// WaitStale blocks until s must be read again, keeping its lease alive
// meanwhile:
//   - a renewable lease is renewed by the LifetimeWatcher (at about two
//     thirds of its TTL) until it can no longer be (revoked, renewal
//     failed) or a renewal comes back shorter than the lease (its max TTL
//     is near) — then WaitStale returns, at the latest two thirds into
//     what is left, so a fresh secret is read before the old one ends;
//   - a lease that cannot be renewed is waited out to about two thirds of
//     its duration, so the new secret is in place before the old expires;
//   - a secret without a lease (KV v2) is re-read after staticRefresh
//     (default DefaultStaticRefresh).
//
// A secret with a lease is also read again as soon as lifeboat logs in
// anew: Vault revokes a token's leases when the token ends, so the old
// credentials are about to stop working.
//
// It returns ctx's error when ctx ends, nil otherwise.
func (c *Client) WaitStale(ctx context.Context, s *Secret, staticRefresh time.Duration) error {
	if staticRefresh <= 0 {
		staticRefresh = DefaultStaticRefresh
	}
	var relogin <-chan struct{} // nil: never fires
	if s.LeaseID != "" {
		relogin = s.relogin
	}
	switch {
	case s.Renewable && s.LeaseID != "" && s.raw != nil:
		w, err := c.api.NewLifetimeWatcher(&api.LifetimeWatcherInput{Secret: s.raw})
		if err != nil {
			return c.waitOrRelogin(ctx, s, s.LeaseDuration*2/3, relogin)
		}
		go w.Start()
		defer w.Stop()
		// The watcher itself only gives up within its grace period of the
		// lease's end, too late to have the new secret rendered in time.
		// A renewal that comes back shorter than the lease's own duration
		// means the max TTL is near: read the secret again at two thirds of
		// what is left, so the new value is in place before the old ends.
		var refresh <-chan time.Time
		for {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case err := <-w.DoneCh():
				if err != nil {
					c.log.Warn("vault lease can no longer be renewed; reading the secret again", "path", s.Path, "error", err)
				}
				return nil
			case <-refresh:
				c.log.Debug("vault lease near its max TTL; reading the secret again", "path", s.Path)
				return nil
			case <-relogin:
				c.log.Debug("vault token replaced; reading the leased secret again with the new one", "path", s.Path)
				return nil
			case r := <-w.RenewCh():
				c.m.leaseRenewals.Inc()
				var ttl time.Duration
				if r != nil && r.Secret != nil {
					ttl = time.Duration(r.Secret.LeaseDuration) * time.Second
				}
				c.log.Debug("vault lease renewed", "path", s.Path, "ttl", ttl.String())
				if refresh == nil && ttl < s.LeaseDuration {
					// Vault reports TTLs in whole seconds, rounded: plan
					// with a second less, which matters for short leases.
					t := time.NewTimer(max(0, ttl-leaseRounding) * 2 / 3)
					defer t.Stop()
					refresh = t.C
				}
			}
		}
	case s.LeaseDuration > 0:
		return c.waitOrRelogin(ctx, s, s.LeaseDuration*2/3, relogin)
	default:
		return sleepCtx(ctx, staticRefresh)
	}
}

// waitOrRelogin waits d, or less when relogin closes first.
func (c *Client) waitOrRelogin(ctx context.Context, s *Secret, d time.Duration, relogin <-chan struct{}) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
	case <-relogin:
		c.log.Debug("vault token replaced; reading the leased secret again with the new one", "path", s.Path)
	}
	return nil
}

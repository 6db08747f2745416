// Package vault is lifeboat's Vault client: it logs in (token, AppRole,
// Kubernetes, JWT), keeps its token alive with vault/api's LifetimeWatcher
// and logs in again when the token can no longer be renewed, reads KV v1
// and v2 secrets and dynamic secrets, keeps their leases renewed, and
// revokes its token at shutdown.
//
// Secret values never leave this package in logs, errors, status or
// metrics: errors name the path and field, never what was read.
package vault

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/prometheus/client_golang/prometheus"
)

// Defaults.
const (
	DefaultTimeout      = 10 * time.Second // one request to Vault
	DefaultRetryInitial = 500 * time.Millisecond
	DefaultRetryMax     = 30 * time.Second
	DefaultAuthMount    = "" // the method's own name: approle, kubernetes, jwt
	// DefaultKubernetesJWTFile is where Kubernetes mounts the pod's
	// service-account token.
	DefaultKubernetesJWTFile = "/var/run/secrets/kubernetes.io/serviceaccount/token"
)

// Auth methods.
const (
	MethodToken      = "token"
	MethodAppRole    = "approle"
	MethodKubernetes = "kubernetes"
	MethodJWT        = "jwt"
)

// TLS is client TLS towards Vault.
type TLS struct {
	CAFile             string
	CertFile           string
	KeyFile            string
	ServerName         string
	InsecureSkipVerify bool
}

// Auth says how to log in. Method "" means "token": VAULT_TOKEN or
// TokenFile.
type Auth struct {
	Method          string
	Mount           string // auth mount path; default the method name
	Role            string // kubernetes and jwt role
	TokenFile       string // token method
	RoleIDFile      string // approle
	SecretIDFile    string // approle
	SecretIDWrapped bool   // approle: SecretIDFile holds a response-wrapping token
	JWTFile         string // kubernetes (default DefaultKubernetesJWTFile) and jwt
}

// Options configure a Client. Empty Address and TLS fields fall back to the
// conventional VAULT_* environment variables (VAULT_ADDR, VAULT_TOKEN,
// VAULT_NAMESPACE, VAULT_CACERT, ...), which vault/api reads.
type Options struct {
	Address      string
	Namespace    string
	TLS          TLS
	Auth         Auth
	RevokeOnExit bool
	Timeout      time.Duration // per request; default DefaultTimeout
	RetryInitial time.Duration // backoff after failures; default DefaultRetryInitial
	RetryMax     time.Duration // default DefaultRetryMax
	Logger       *slog.Logger
	Metrics      prometheus.Registerer // nil: no metrics
}

// Client is a logged-in Vault client. Its methods are safe for concurrent
// use.
type Client struct {
	api  *api.Client
	opts Options
	log  *slog.Logger
	m    *metrics

	mu     sync.Mutex
	status Status
	auth   *api.Secret // the last login (or token lookup)
	// relogin is closed (and replaced) when a new login replaces the
	// token: leases belong to the token that created them and end with
	// it, so secrets read with the old token must be read again.
	relogin chan struct{}
	kvMu    sync.Mutex
	kvVer   map[string]mountInfo // path prefix -> KV mount
}

// Status is what `lifeboat status` shows about Vault. It never holds a
// token or a secret value.
type Status struct {
	Address     string    `json:"address"`
	Method      string    `json:"auth_method"`
	Healthy     bool      `json:"healthy"`
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
	LoggedInAt  time.Time `json:"logged_in_at,omitzero"`
	TokenExpiry time.Time `json:"token_expiry,omitzero"`
	Renewals    int       `json:"token_renewals"`
	Logins      int       `json:"logins"`
}

// New builds the client and logs in. It fails when Vault cannot be reached
// or the login is refused; the caller decides whether to retry. Errors
// that retrying cannot fix (see ErrConfig) match errors.Is(err, ErrConfig).
func New(ctx context.Context, opts Options) (*Client, error) {
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.RetryInitial <= 0 {
		opts.RetryInitial = DefaultRetryInitial
	}
	if opts.RetryMax <= 0 {
		opts.RetryMax = DefaultRetryMax
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Auth.Method == "" {
		opts.Auth.Method = MethodToken
	}
	cfg := api.DefaultConfig() // reads VAULT_ADDR, VAULT_CACERT, ...
	if cfg.Error != nil {
		return nil, configErrorf("vault: reading VAULT_* environment: %v", cfg.Error)
	}
	if opts.Address != "" {
		cfg.Address = opts.Address
	}
	cfg.Timeout = opts.Timeout
	// lifeboat does its own retrying with backoff and status; vault/api's
	// own retries would hide an outage for a long time.
	cfg.MaxRetries = 0
	t := opts.TLS
	if t != (TLS{}) {
		if err := cfg.ConfigureTLS(&api.TLSConfig{
			CACert: t.CAFile, ClientCert: t.CertFile, ClientKey: t.KeyFile,
			TLSServerName: t.ServerName, Insecure: t.InsecureSkipVerify,
		}); err != nil {
			return nil, configErrorf("vault: TLS settings (ca_file, cert_file, key_file): %v", err)
		}
	}
	ac, err := api.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("vault: building client for %s: %w", cfg.Address, err)
	}
	if opts.Namespace != "" {
		ac.SetNamespace(opts.Namespace)
	}
	if opts.Auth.Method != MethodToken {
		// Never use an ambient VAULT_TOKEN when a login method is configured.
		ac.ClearToken()
	}
	c := &Client{api: ac, opts: opts, log: opts.Logger.With("component", "vault"), kvVer: map[string]mountInfo{}}
	c.status = Status{Address: cfg.Address, Method: opts.Auth.Method}
	c.m = newMetrics(opts.Metrics)
	if err := c.login(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// API is the underlying vault/api client, for callers that need a request
// this package does not wrap. It carries the current token.
func (c *Client) API() *api.Client { return c.api }

// Status returns a copy of the client's status.
func (c *Client) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.status
}

func (c *Client) noteError(err error) {
	c.mu.Lock()
	c.status.Healthy = false
	c.status.LastError = err.Error()
	c.status.LastErrorAt = time.Now()
	c.mu.Unlock()
	c.m.setUp(false)
	c.m.errors.Inc()
}

func (c *Client) noteOK() {
	c.mu.Lock()
	c.status.Healthy = true
	c.mu.Unlock()
	c.m.setUp(true)
}

// Run keeps the token alive until ctx ends: it renews it with the
// LifetimeWatcher at about two thirds of its TTL, and when the token can no
// longer be renewed (max TTL reached, revoked, renewal failed) it logs in
// again, retrying with backoff while Vault is unreachable. A token that
// never expires (a root token) needs nothing and Run only waits.
func (c *Client) Run(ctx context.Context) error {
	backoff := c.opts.RetryInitial
	for {
		c.mu.Lock()
		auth := c.auth
		c.mu.Unlock()
		if auth == nil || auth.Auth == nil || !auth.Auth.Renewable || auth.Auth.LeaseDuration == 0 {
			if auth != nil && auth.Auth != nil && auth.Auth.LeaseDuration > 0 {
				// Not renewable but expires: log in again before it does.
				if err := sleepCtx(ctx, time.Duration(auth.Auth.LeaseDuration)*time.Second*2/3); err != nil {
					return err
				}
				if err := c.reauth(ctx, &backoff); err != nil {
					return err
				}
				continue
			}
			<-ctx.Done()
			return ctx.Err()
		}
		err := c.watchToken(ctx, auth)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			c.log.Warn("vault token can no longer be renewed; logging in again", "error", err)
		} else {
			c.log.Info("vault token reached its max TTL; logging in again")
		}
		if err := c.reauth(ctx, &backoff); err != nil {
			return err
		}
	}
}

// reauth logs in until it succeeds or ctx ends.
func (c *Client) reauth(ctx context.Context, backoff *time.Duration) error {
	for {
		err := c.login(ctx)
		if err == nil {
			*backoff = c.opts.RetryInitial
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		c.log.Warn("vault login failed; keeping last secrets and retrying", "error", err, "retry_in", backoff.String())
		if err := sleepCtx(ctx, *backoff); err != nil {
			return err
		}
		*backoff = min(*backoff*2, c.opts.RetryMax)
	}
}

func (c *Client) watchToken(ctx context.Context, auth *api.Secret) error {
	w, err := c.api.NewLifetimeWatcher(&api.LifetimeWatcherInput{Secret: auth})
	if err != nil {
		return fmt.Errorf("vault: token watcher: %w", err)
	}
	go w.Start()
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-w.DoneCh():
			if err != nil {
				c.noteError(fmt.Errorf("vault: renewing token: %w", err))
			}
			return err
		case r := <-w.RenewCh():
			c.mu.Lock()
			c.status.Renewals++
			if r.Secret != nil && r.Secret.Auth != nil {
				c.status.TokenExpiry = time.Now().Add(time.Duration(r.Secret.Auth.LeaseDuration) * time.Second)
			}
			c.mu.Unlock()
			c.noteOK()
			c.m.renewals.Inc()
			c.log.Debug("vault token renewed")
		}
	}
}

// Close revokes the token when RevokeOnExit is set. It is called at
// shutdown, after the app has stopped.
func (c *Client) Close(ctx context.Context) error {
	if !c.opts.RevokeOnExit || c.api.Token() == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
	defer cancel()
	if _, err := c.api.Logical().WriteWithContext(ctx, "auth/token/revoke-self", nil); err != nil {
		return fmt.Errorf("vault: revoking lifeboat's token at exit: %w", err)
	}
	c.log.Info("vault token revoked")
	c.api.ClearToken()
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func readFileTrim(what, path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("vault: reading %s: %w", what, err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("vault: %s %s is empty", what, path)
	}
	return s, nil
}

// ErrNotFound is returned when a secret path holds nothing.
var ErrNotFound = errors.New("no secret at this path")

// ErrConfig marks errors in Options (an unknown auth method, a method
// without the role or files it needs): retrying cannot help, so callers
// report them as configuration errors at once.
var ErrConfig = errors.New("vault configuration")

// configError is an Options mistake; it matches ErrConfig.
type configError struct{ msg string }

func (e configError) Error() string        { return e.msg }
func (e configError) Is(target error) bool { return target == ErrConfig }

func configErrorf(format string, args ...any) error {
	return configError{fmt.Sprintf(format, args...)}
}

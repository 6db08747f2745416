package supervisor

// The supervisor's side of Consul, Vault, templates and env: it maps the
// config blocks to the parts' options, runs the connect and render phases,
// keeps the watches and the Vault token alive while the app runs, and
// revokes the token at shutdown.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/lifeboat/lifeboat/supervisor/config"
	"github.com/lifeboat/lifeboat/supervisor/consul"
	"github.com/lifeboat/lifeboat/supervisor/templates"
	"github.com/lifeboat/lifeboat/supervisor/vault"
	"github.com/prometheus/client_golang/prometheus"
)

// EnvRenderTimeout overrides how long the first render may wait for its
// data (a Go duration, default templates.DefaultFirstRenderTimeout).
const EnvRenderTimeout = "LIFEBOAT_RENDER_TIMEOUT"

// connectTimeout bounds the connect phase: Vault login with retries.
const connectTimeout = 60 * time.Second

// secrets holds the Consul and Vault clients and the template manager.
type secrets struct {
	consul *consulapi.Client
	vault  *vault.Client
	tmpl   *templates.Manager
	leader func() string // the election's current leader; see setLeaderSource

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// SecretsStatus is the Consul/Vault/templates part of `lifeboat status`:
// names, paths and health, never values.
type SecretsStatus struct {
	Vault     *vault.Status     `json:"vault,omitempty"`
	Templates *templates.Status `json:"templates,omitempty"`
}

// usageError marks a config problem found while building the parts (exit 2).
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

// connectSecrets is the connect phase: the Consul client, the Vault login
// (retried with backoff for up to connectTimeout), and store credentials
// taken from Vault. It does nothing when neither block is configured.
func (s *Supervisor) connectSecrets(ctx context.Context) error {
	c := s.cfg
	storeVault := c.Store != nil && c.Store.Vault != nil
	if c.Consul == nil && c.Vault == nil && len(c.Templates) == 0 && len(c.Env) == 0 && !storeVault {
		return nil
	}
	done := s.phaseStart(PhaseConnect)
	err := s.connect(ctx)
	done(err)
	return err
}

func (s *Supervisor) connect(ctx context.Context) error {
	c := s.cfg
	// Templates may read Consul without a consul block: the client then
	// follows CONSUL_HTTP_ADDR or the local agent, as consul-template does.
	if c.Consul != nil || len(c.Templates) > 0 || len(c.Env) > 0 {
		var opts consul.Options
		if cc := c.Consul; cc != nil {
			opts = consul.Options{Address: cc.Address, Scheme: cc.Scheme, Token: cc.Token, TokenFile: cc.TokenFile, Datacenter: cc.Datacenter}
			if t := cc.TLS; t != nil {
				opts.TLS = consul.TLS{CAFile: t.CAFile, CertFile: t.CertFile, KeyFile: t.KeyFile, ServerName: t.ServerName, InsecureSkipVerify: t.InsecureSkipVerify}
			}
		}
		cl, err := consul.NewClient(opts)
		if err != nil {
			return usageError{err}
		}
		s.mu.Lock()
		s.sec.consul = cl
		s.mu.Unlock()
	}
	if vc := c.Vault; vc != nil {
		vcl, err := loginVault(ctx, vc, s.log, s.registry)
		if err != nil {
			return err
		}
		s.mu.Lock() // Status reads it from the control socket's goroutines
		s.sec.vault = vcl
		s.mu.Unlock()
	}
	if err := resolveStoreVault(ctx, c.Store, s.sec.vault); err != nil {
		return err
	}
	return nil
}

// vaultOptions maps the vault block to the client's options.
func vaultOptions(vc *config.Vault) vault.Options {
	opts := vault.Options{Address: vc.Address, Namespace: vc.Namespace, RevokeOnExit: vc.RevokeOnExit == nil || *vc.RevokeOnExit}
	if t := vc.TLS; t != nil {
		opts.TLS = vault.TLS{CAFile: t.CAFile, CertFile: t.CertFile, KeyFile: t.KeyFile, ServerName: t.ServerName, InsecureSkipVerify: t.InsecureSkipVerify}
	}
	if a := vc.Auth; a != nil {
		opts.Auth = vault.Auth{Method: a.Method, Mount: a.Mount, Role: a.Role, TokenFile: a.TokenFile,
			RoleIDFile: a.RoleIDFile, SecretIDFile: a.SecretIDFile, SecretIDWrapped: a.SecretIDWrapped, JWTFile: a.JWTFile}
	}
	return opts
}

// loginVault logs in with the vault block, retrying with backoff for up to
// connectTimeout while Vault is unreachable or refuses; configuration
// mistakes fail at once as usage errors.
func loginVault(ctx context.Context, vc *config.Vault, log *slog.Logger, reg prometheus.Registerer) (*vault.Client, error) {
	opts := vaultOptions(vc)
	opts.Logger, opts.Metrics = log, reg
	ctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	var vcl *vault.Client
	err := retryUntil(ctx, log, "vault login failed; retrying", vault.DefaultRetryInitial, vault.DefaultRetryMax,
		func(err error) bool { return errors.Is(err, vault.ErrConfig) },
		func() (err error) {
			vcl, err = vault.New(ctx, opts)
			return err
		})
	switch {
	case err == nil:
		return vcl, nil
	case errors.Is(err, vault.ErrConfig):
		// A missing role or unknown method: retrying cannot help.
		return nil, usageError{err}
	default:
		return nil, fmt.Errorf("vault: gave up logging in: %w", err)
	}
}

// resolveStoreVault fills st's credentials and encryption key from the
// Vault references in store.vault ("PATH#FIELD"), so the store is opened
// with them; an image then needs nothing but a Vault role. A value from
// Vault replaces the store block's own.
func resolveStoreVault(ctx context.Context, st *config.Store, vc *vault.Client) error {
	if st == nil || st.Vault == nil {
		return nil
	}
	if vc == nil {
		return usageError{errors.New("store.vault names Vault secrets but there is no vault block; add one (address and auth) or remove store.vault")}
	}
	for _, f := range []struct {
		key string
		ref string
		dst *string
	}{
		{"access_key", st.Vault.AccessKey, &st.AccessKey},
		{"secret_key", st.Vault.SecretKey, &st.SecretKey},
		{"session_token", st.Vault.SessionToken, &st.SessionToken},
		{"encryption_key", st.Vault.EncryptionKey, &st.EncryptionKey},
	} {
		if f.ref == "" {
			continue
		}
		v, err := vc.ResolveSecretRef(ctx, f.ref)
		if err != nil {
			return fmt.Errorf("store.vault.%s: %w", f.key, err)
		}
		*f.dst = v
	}
	if st.Vault.EncryptionKey != "" {
		// The key from Vault is the key; a key file beside it would be a
		// second, conflicting source.
		st.EncryptionKeyFile = ""
	}
	return nil
}

// ResolveStoreVault fills cfg.Store's access_key, secret_key,
// session_token and encryption_key from the Vault secrets named in
// store.vault, for commands that open the store without `lifeboat run`
// (backup, restore, snapshots, verify, prune); run does the same in its
// connect phase. It logs in with the vault block and, when it logged in
// with a method other than token, revokes that token again (a token the
// user handed in is theirs to keep). Without store.vault it does nothing.
// Errors never hold a secret value; IsConfigError tells a config mistake
// (exit 2) from a Vault failure.
func ResolveStoreVault(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	if cfg.Store == nil || cfg.Store.Vault == nil {
		return nil
	}
	if cfg.Vault == nil {
		return resolveStoreVault(ctx, cfg.Store, nil)
	}
	vc := *cfg.Vault
	ownToken := vc.Auth != nil && vc.Auth.Method != "" && vc.Auth.Method != vault.MethodToken
	vc.RevokeOnExit = &ownToken
	cl, err := loginVault(ctx, &vc, log, nil)
	if err != nil {
		return err
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := cl.Close(ctx); err != nil {
			log.Warn("vault token not revoked", "error", err)
		}
	}()
	return resolveStoreVault(ctx, cfg.Store, cl)
}

// IsConfigError reports whether err from this package (secrets, opening
// the store, the data directory) is a configuration mistake (exit 2)
// rather than a failure to reach or read Consul, Vault or the store
// (exit 1).
func IsConfigError(err error) bool {
	var ue usageError
	return errors.As(err, &ue)
}

// renderSecrets is the render phase: templates to files and the env block,
// complete before the app starts. It does nothing without templates/env.
func (s *Supervisor) renderSecrets(ctx context.Context) error {
	c := s.cfg
	if len(c.Templates) == 0 && len(c.Env) == 0 {
		return nil
	}
	done := s.phaseStart(PhaseRender)
	err := s.render(ctx)
	done(err)
	return err
}

func (s *Supervisor) render(ctx context.Context) error {
	c := s.cfg
	opts := templates.Options{
		Env:        c.Env,
		Consul:     s.sec.consul,
		App:        appController{s},
		Logger:     s.log,
		Metrics:    s.registry,
		Leader:     s.leaderAddress,
		RunCommand: nil, // the default: run argv with the template in LIFEBOAT_TEMPLATE
	}
	if s.sec.vault != nil {
		opts.Vault = s.sec.vault
	}
	if c.App != nil {
		opts.DefaultUser = c.App.User
	}
	if v := os.Getenv(EnvRenderTimeout); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return usageError{fmt.Errorf("%s=%q: want a duration like 30s", EnvRenderTimeout, v)}
		}
		opts.FirstRenderTimeout = d
	}
	for _, t := range c.Templates {
		tt := templates.Template{Name: t.Name, Source: t.Source, Contents: t.Contents, Destination: t.Destination, User: t.User, Group: t.Group}
		if t.Perms != "" {
			p, err := strconv.ParseUint(t.Perms, 8, 32)
			if err != nil {
				return usageError{fmt.Errorf("template %q: perms %q is not an octal mode", t.Name, t.Perms)}
			}
			tt.Perms = os.FileMode(p)
		}
		a, err := templates.ParseAction(t.OnChange)
		if err != nil {
			return usageError{fmt.Errorf("template %q: %w", t.Name, err)}
		}
		tt.OnChange = a
		if w := t.Wait; w != nil {
			tt.WaitMin, tt.WaitMax = config.Dur(w.Min), config.Dur(w.Max)
		}
		opts.Templates = append(opts.Templates, tt)
	}
	m, err := templates.New(opts)
	if err != nil {
		return usageError{err}
	}
	s.mu.Lock()
	s.sec.tmpl = m
	s.mu.Unlock()
	return m.RenderFirst(ctx)
}

// secretsEnv is the rendered env block, for the app's environment.
func (s *Supervisor) secretsEnv() []string {
	if s.sec.tmpl == nil {
		return nil
	}
	return s.sec.tmpl.Env()
}

// serveSecrets starts the watches and the token renewal; they run until
// closeSecrets.
func (s *Supervisor) serveSecrets() {
	ctx, cancel := context.WithCancel(context.Background())
	s.sec.cancel = cancel
	if v := s.sec.vault; v != nil {
		s.sec.wg.Add(1)
		go func() { defer s.sec.wg.Done(); v.Run(ctx) }()
	}
	if m := s.sec.tmpl; m != nil {
		s.sec.wg.Add(1)
		go func() { defer s.sec.wg.Done(); m.Run(ctx) }()
	}
}

// closeSecrets stops the watches and revokes the Vault token (when
// vault.revoke_on_exit, the default). It runs after the app has stopped,
// and also when lifeboat gives up before starting it.
func (s *Supervisor) closeSecrets() {
	if s.sec.cancel != nil {
		s.sec.cancel()
	}
	s.sec.wg.Wait()
	if s.sec.tmpl != nil {
		s.sec.tmpl.Close()
	}
	if v := s.sec.vault; v != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := v.Close(ctx); err != nil {
			s.log.Warn("vault token not revoked", "error", err)
		}
	}
}

// secretsStatus is the status section; nil when nothing is configured.
func (s *Supervisor) secretsStatus() *SecretsStatus {
	s.mu.Lock()
	v, m := s.sec.vault, s.sec.tmpl
	s.mu.Unlock()
	if v == nil && m == nil {
		return nil
	}
	st := &SecretsStatus{}
	if v != nil {
		vs := v.Status()
		st.Vault = &vs
	}
	if m != nil {
		ts := m.Status()
		st.Templates = &ts
	}
	return st
}

// phaseExit maps the error of a phase before the app starts (connect,
// elect, restore, render, service) to lifeboat's exit status: 2 for a
// config mistake, 1 otherwise.
func phaseExit(err error) int {
	if IsConfigError(err) {
		return ExitUsage
	}
	return ExitFailure
}

// leaderAddress is the template function leader's provider: the getter
// the election wiring handed to setLeaderSource, "" before that or when
// no election is configured.
func (s *Supervisor) leaderAddress() string {
	s.mu.Lock()
	get := s.sec.leader
	s.mu.Unlock()
	if get == nil {
		return ""
	}
	return get()
}

// setLeaderSource gives the templates' leader function the election's
// current leader address (host:port, "" while there is none). Call it
// from the elect phase, before the render phase, so the first render
// already sees the leader.
func (s *Supervisor) setLeaderSource(get func() string) {
	s.mu.Lock()
	s.sec.leader = get
	s.mu.Unlock()
}

// leaderChanged re-renders the templates that use leader; the election
// wiring calls it whenever the leader changes. Safe to call at any time.
func (s *Supervisor) leaderChanged() {
	s.mu.Lock()
	m := s.sec.tmpl
	s.mu.Unlock()
	if m != nil {
		m.Notify()
	}
}

// appController lets templates act on the app, which exists only once the
// start phase has run.
type appController struct{ s *Supervisor }

func (a appController) Restart() error {
	if a.s.app == nil {
		return errors.New("the app is not running")
	}
	a.s.app.Restart()
	return nil
}

func (a appController) Signal(sig syscall.Signal) error {
	if a.s.app == nil {
		return errors.New("the app is not running")
	}
	return a.s.app.Signal(sig)
}

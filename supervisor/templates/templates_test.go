package templates_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	vaultapi "github.com/hashicorp/vault/api"
	"github.com/lifeboat/lifeboat/internal/testrig"
	"github.com/lifeboat/lifeboat/supervisor/consul"
	"github.com/lifeboat/lifeboat/supervisor/templates"
	"github.com/lifeboat/lifeboat/supervisor/vault"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
)

// syncBuffer collects log output from several goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// recorder is the app side of on_change: it counts what it was asked.
type recorder struct {
	mu       sync.Mutex
	signals  []syscall.Signal
	restarts int
}

func (r *recorder) Restart() error { r.mu.Lock(); r.restarts++; r.mu.Unlock(); return nil }
func (r *recorder) Signal(s syscall.Signal) error {
	r.mu.Lock()
	r.signals = append(r.signals, s)
	r.mu.Unlock()
	return nil
}
func (r *recorder) count() int { r.mu.Lock(); defer r.mu.Unlock(); return len(r.signals) + r.restarts }

func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond) // poll tick
	}
}

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

type env struct {
	consul    *consulapi.Client
	vault     *vault.Client
	vaultRoot *vaultapi.Client
	v         *testrig.Vault
	logs      *syncBuffer
	log       *slog.Logger
	reg       *prometheus.Registry
	secrets   []string // every secret value the test wrote, for the leak check
}

func setup(t *testing.T) *env {
	c := testrig.StartConsul(t)
	v := testrig.StartVault(t)
	e := &env{v: v, logs: &syncBuffer{}, reg: prometheus.NewRegistry()}
	e.log = slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	var err error
	e.consul, err = consul.NewClient(consul.Options{Address: c.HTTPAddr})
	if err != nil {
		t.Fatal(err)
	}
	e.vaultRoot, err = vaultapi.NewClient(&vaultapi.Config{Address: v.Addr})
	if err != nil {
		t.Fatal(err)
	}
	e.vaultRoot.SetToken(v.RootToken)
	tokFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokFile, []byte(v.RootToken), 0o600)
	e.secrets = append(e.secrets, v.RootToken)
	e.vault, err = vault.New(context.Background(), vault.Options{
		Address: v.Addr, Auth: vault.Auth{Method: vault.MethodToken, TokenFile: tokFile},
		Timeout: 500 * time.Millisecond, RetryInitial: 50 * time.Millisecond, RetryMax: 300 * time.Millisecond,
		Logger: e.log, Metrics: e.reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *env) put(t *testing.T, key, value string) {
	t.Helper()
	if _, err := e.consul.KV().Put(&consulapi.KVPair{Key: key, Value: []byte(value)}, nil); err != nil {
		t.Fatal(err)
	}
}

func (e *env) writeSecret(t *testing.T, path string, data map[string]any) {
	t.Helper()
	if _, err := e.vaultRoot.Logical().Write(path, data); err != nil {
		t.Fatalf("writing %s: %v", path, err)
	}
	for _, v := range data {
		if s, ok := v.(string); ok && strings.HasPrefix(s, "s3cr3t") {
			e.secrets = append(e.secrets, s)
		}
	}
}

func (e *env) manager(t *testing.T, opts templates.Options) *templates.Manager {
	t.Helper()
	opts.Consul, opts.Vault, opts.Logger, opts.Metrics = e.consul, e.vault, e.log, e.reg
	if opts.FirstRenderTimeout == 0 {
		opts.FirstRenderTimeout = 10 * time.Second
	}
	opts.RetryInitial, opts.RetryMax = 50*time.Millisecond, 300*time.Millisecond
	m, err := templates.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

// run runs m's watch loop until the test ends.
func run(t *testing.T, m *templates.Manager) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); m.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

func TestTemplatesAgainstConsulAndVault(t *testing.T) {
	e := setup(t)
	dir := t.TempDir()

	t.Run("kv rendered into file and env", func(t *testing.T) {
		e.put(t, "app1/port", "8080")
		e.put(t, "app1/cfg/a", "1")
		e.put(t, "app1/cfg/b", "2")
		e.put(t, "app1/cfg/deep/c", "3")
		dest := filepath.Join(dir, "app1.conf")
		m := e.manager(t, templates.Options{
			Templates: []templates.Template{{Name: "app1", Destination: dest, Contents: `port={{key "app1/port"}}
{{range ls "app1/cfg"}}{{.Key}}={{.Value}}
{{end}}{{range tree "app1/cfg"}}t:{{.Key}}
{{end}}dflt={{keyOrDefault "app1/none" "x"}}
consul={{range service "consul"}}{{.Name}}{{end}}
up={{toUpper "ok"}}`}},
			Env: map[string]string{"APP_PORT": `{{key "app1/port"}}`},
		})
		if err := m.RenderFirst(context.Background()); err != nil {
			t.Fatal(err)
		}
		want := "port=8080\na=1\nb=2\nt:a\nt:b\nt:deep/c\ndflt=x\nconsul=consul\nup=OK"
		if got := readFile(dest); got != want {
			t.Fatalf("rendered:\n%s\nwant:\n%s", got, want)
		}
		fi, _ := os.Stat(dest)
		if fi.Mode().Perm() != 0o644 {
			t.Errorf("mode %v, want 0644 for a file without secrets", fi.Mode().Perm())
		}
		if got := m.Env(); len(got) != 1 || got[0] != "APP_PORT=8080" {
			t.Errorf("env %q, want APP_PORT=8080", got)
		}
	})

	t.Run("change re-rendered within a second, action once per debounce window", func(t *testing.T) {
		e.put(t, "app2/v", "0")
		e.put(t, "app2/other", "same")
		dest := filepath.Join(dir, "app2.conf")
		stable := filepath.Join(dir, "app2-stable.conf")
		app := &recorder{}
		m := e.manager(t, templates.Options{
			App: app,
			Templates: []templates.Template{
				{Name: "debounced", Destination: dest, Contents: `v={{key "app2/v"}}`,
					OnChange: templates.Action{Kind: templates.ActionReload, Signal: syscall.SIGHUP},
					WaitMin:  300 * time.Millisecond, WaitMax: 2 * time.Second},
				{Name: "stable", Destination: stable, Contents: `o={{key "app2/other"}}`,
					OnChange: templates.Action{Kind: templates.ActionRestart}},
			},
		})
		if err := m.RenderFirst(context.Background()); err != nil {
			t.Fatal(err)
		}
		stat0, _ := os.Stat(stable)
		run(t, m)

		// A burst of changes inside one window: one render, one signal.
		var last time.Time
		for i := 1; i <= 5; i++ {
			e.put(t, "app2/v", fmt.Sprint(i))
			last = time.Now()
			time.Sleep(40 * time.Millisecond) // spacing of the burst, not a wait for a condition
		}
		e.put(t, "app2/other", "same") // a write that changes nothing
		eventually(t, 3*time.Second, "v=5 rendered", func() bool { return readFile(dest) == "v=5" })
		if lat := time.Since(last); lat > time.Second {
			t.Errorf("re-rendered %s after the last change; want within 1s", lat)
		}
		eventually(t, time.Second, "the reload signal", func() bool { return app.count() >= 1 })

		// A second window: exactly one more signal, so nothing fired in between.
		e.put(t, "app2/v", "6")
		eventually(t, 3*time.Second, "v=6 rendered", func() bool { return readFile(dest) == "v=6" })
		eventually(t, time.Second, "the second reload signal", func() bool { return app.count() >= 2 })
		app.mu.Lock()
		sigs, restarts := append([]syscall.Signal(nil), app.signals...), app.restarts
		app.mu.Unlock()
		if len(sigs) != 2 || sigs[0] != syscall.SIGHUP || sigs[1] != syscall.SIGHUP || restarts != 0 {
			t.Errorf("app got signals %v and %d restarts; want [hangup hangup] and 0 (the stable file never changed)", sigs, restarts)
		}
		stat1, _ := os.Stat(stable)
		if !os.SameFile(stat0, stat1) || !stat0.ModTime().Equal(stat1.ModTime()) {
			t.Errorf("%s was rewritten though its content did not change", stable)
		}
		for _, ts := range m.Status().Templates {
			if ts.Name == "debounced" && (ts.Renders != 3 || ts.Actions != 2) {
				t.Errorf("debounced: %d renders, %d actions; want 3 (first + 2 windows) and 2", ts.Renders, ts.Actions)
			}
		}
	})

	t.Run("secret from KV v2 into a 0600 file", func(t *testing.T) {
		e.writeSecret(t, "secret/data/app3", map[string]any{"data": map[string]any{"password": "s3cr3t-app3-pw", "user": "app"}})
		dest := filepath.Join(dir, "app3.conf")
		m := e.manager(t, templates.Options{
			Templates: []templates.Template{{Name: "app3", Destination: dest,
				Contents: `{{secret "secret/app3" "user"}}:{{secret "secret/data/app3" "password"}}:{{with secret "secret/app3"}}{{.password}}{{end}}`}},
			Env: map[string]string{"DB_PASSWORD": `{{secret "secret/app3" "password"}}`},
		})
		if err := m.RenderFirst(context.Background()); err != nil {
			t.Fatal(err)
		}
		if got := readFile(dest); got != "app:s3cr3t-app3-pw:s3cr3t-app3-pw" {
			t.Fatalf("rendered %q", got)
		}
		fi, _ := os.Stat(dest)
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("mode %v, want 0600 for a file with a secret", fi.Mode().Perm())
		}
		if got := m.Env(); len(got) != 1 || got[0] != "DB_PASSWORD=s3cr3t-app3-pw" {
			t.Errorf("env not rendered from the secret")
		}
	})

	t.Run("short-lived secret re-read before it expires", func(t *testing.T) {
		if err := e.vaultRoot.Sys().Mount("kv1", &vaultapi.MountInput{Type: "kv", Options: map[string]string{"version": "1"}}); err != nil {
			t.Fatal(err)
		}
		e.writeSecret(t, "kv1/short", map[string]any{"value": "s3cr3t-short-a", "ttl": "2s"})
		dest := filepath.Join(dir, "short.conf")
		m := e.manager(t, templates.Options{
			Templates: []templates.Template{{Name: "short", Destination: dest, Contents: `{{secret "kv1/short" "value"}}`}},
		})
		if err := m.RenderFirst(context.Background()); err != nil {
			t.Fatal(err)
		}
		readAt := time.Now()
		run(t, m)
		e.writeSecret(t, "kv1/short", map[string]any{"value": "s3cr3t-short-b", "ttl": "2s"})
		eventually(t, 3*time.Second, "the new value", func() bool { return readFile(dest) == "s3cr3t-short-b" })
		if d := time.Since(readAt); d >= 2*time.Second {
			t.Errorf("re-read %s after the first read; the lease was 2s", d)
		}
	})

	t.Run("missing key and secret at start name what is missing", func(t *testing.T) {
		e.writeSecret(t, "secret/data/app4", map[string]any{"data": map[string]any{"present": "s3cr3t-app4"}})
		dest := filepath.Join(dir, "app4.conf")
		m := e.manager(t, templates.Options{
			FirstRenderTimeout: 1500 * time.Millisecond,
			Templates: []templates.Template{{Name: "app4", Destination: dest,
				Contents: `{{key "app4/missing"}} {{secret "secret/app4-missing" "x"}} {{secret "secret/app4" "nofield"}} {{secret "secret/app4" "present"}}`}},
		})
		t0 := time.Now()
		err := m.RenderFirst(context.Background())
		if err == nil {
			t.Fatal("first render succeeded with missing data")
		}
		if d := time.Since(t0); d > 3*time.Second {
			t.Errorf("first render took %s, bounded at 1.5s", d)
		}
		for _, want := range []string{`consul key "app4/missing" does not exist`, "vault secret secret/app4-missing does not exist", `secret/data/app4 has no field "nofield"`, "within 1.5s"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error does not say %q:\n%v", want, err)
			}
		}
		if strings.Contains(err.Error(), "s3cr3t") {
			t.Errorf("error holds a secret value: %v", err)
		}
		if _, err := os.Stat(dest); !os.IsNotExist(err) {
			t.Errorf("%s written despite missing data", dest)
		}
	})

	// Last: nothing captured — logs, status JSON, metrics — holds a secret.
	t.Run("no secret value in logs, status or metrics", func(t *testing.T) {
		var captured strings.Builder
		captured.WriteString(e.logs.String())
		st, _ := json.Marshal(e.vault.Status())
		captured.Write(st)
		mfs, err := e.reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			expfmt.MetricFamilyToText(&captured, mf)
		}
		if !strings.Contains(captured.String(), "template rendered") || !strings.Contains(captured.String(), "lifeboat_template_renders_total") {
			t.Fatalf("captured output lacks expected lines; the check would prove nothing:\n%s", captured.String())
		}
		for _, s := range e.secrets {
			if strings.Contains(captured.String(), s) {
				t.Errorf("captured output holds secret value %q", s)
			}
		}
	})
}

// TestVaultFrozenKeepsLastValues: Vault hangs mid-run; the file keeps its
// last value, status says so, and once Vault is back changes flow again.
func TestVaultFrozenKeepsLastValues(t *testing.T) {
	e := setup(t)
	e.writeSecret(t, "secret/data/frozen", map[string]any{"data": map[string]any{"pw": "s3cr3t-one"}})
	dest := filepath.Join(t.TempDir(), "frozen.conf")
	m := e.manager(t, templates.Options{
		StaticRefresh: 200 * time.Millisecond,
		Templates:     []templates.Template{{Name: "frozen", Destination: dest, Contents: `{{secret "secret/frozen" "pw"}}`}},
	})
	if err := m.RenderFirst(context.Background()); err != nil {
		t.Fatal(err)
	}
	run(t, m)
	e.v.Freeze()
	thawed := false
	t.Cleanup(func() {
		if !thawed {
			e.v.Thaw()
		}
	})
	eventually(t, 5*time.Second, "status to report vault unreachable", func() bool {
		st := m.Status()
		return !st.Healthy && len(st.Sources) == 1 && st.Sources[0].LastError != "" && !e.vault.Status().Healthy
	})
	if got := readFile(dest); got != "s3cr3t-one" {
		t.Fatalf("file changed while Vault was frozen: %q", got)
	}
	e.v.Thaw()
	thawed = true
	e.writeSecret(t, "secret/data/frozen", map[string]any{"data": map[string]any{"pw": "s3cr3t-two"}})
	eventually(t, 5*time.Second, "the new value after Vault returned", func() bool { return readFile(dest) == "s3cr3t-two" })
	eventually(t, 2*time.Second, "status healthy again", func() bool { return m.Status().Healthy })
	st, _ := json.Marshal(m.Status())
	for _, s := range e.secrets {
		if strings.Contains(string(st)+e.logs.String(), s) {
			t.Errorf("status or logs hold secret value %q", s)
		}
	}
}

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
	c         *testrig.Consul
	logs      *syncBuffer
	log       *slog.Logger
	reg       *prometheus.Registry
	secrets   []string // every secret value the test wrote, for the leak check
}

func setup(t *testing.T) *env {
	c := testrig.StartConsul(t)
	v := testrig.StartVault(t)
	e := &env{v: v, c: c, logs: &syncBuffer{}, reg: prometheus.NewRegistry()}
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

// TestDynamicSecretLease: a dynamic database credential from Vault's real
// database engine (against a real MariaDB) keeps its lease renewed while
// it can, and is read again — new credentials rendered — before the lease
// reaches its max TTL.
// databaseEngine starts MariaDB and mounts Vault's database engine with a
// role "app" whose credentials have the given TTLs.
func databaseEngine(t *testing.T, e *env, ttl, maxTTL time.Duration) *testrig.MariaDB {
	db := testrig.StartMariaDB(t, testrig.MariaDBOptions{})
	db.Exec(t, "CREATE USER 'vault'@'127.0.0.1' IDENTIFIED BY 'vault-admin-pw'; GRANT ALL PRIVILEGES ON *.* TO 'vault'@'127.0.0.1' WITH GRANT OPTION")
	if err := e.vaultRoot.Sys().Mount("database", &vaultapi.MountInput{Type: "database"}); err != nil {
		t.Fatal(err)
	}
	e.writeSecret(t, "database/config/mariadb", map[string]any{
		"plugin_name":    "mysql-database-plugin",
		"connection_url": fmt.Sprintf("{{username}}:{{password}}@tcp(127.0.0.1:%d)/", db.Port),
		"username":       "vault", "password": "vault-admin-pw", "allowed_roles": "app",
	})
	e.writeSecret(t, "database/roles/app", map[string]any{
		"db_name":             "mariadb",
		"creation_statements": "CREATE USER '{{name}}'@'%' IDENTIFIED BY '{{password}}'; GRANT SELECT ON *.* TO '{{name}}'@'%';",
		"default_ttl":         ttl.String(), "max_ttl": maxTTL.String(),
	})
	return db
}

func dbUserExists(t *testing.T, db *testrig.MariaDB, user string) bool {
	return db.Exec(t, "SELECT COUNT(*) FROM mysql.user WHERE user='"+user+"'") == "1"
}

func TestDynamicSecretLease(t *testing.T) {
	e := setup(t)
	const ttl, maxTTL = 3 * time.Second, 6 * time.Second
	db := databaseEngine(t, e, ttl, maxTTL)
	dest := filepath.Join(t.TempDir(), "db.conf")
	m := e.manager(t, templates.Options{
		Templates: []templates.Template{{Name: "db", Destination: dest,
			Contents: `{{with secret "database/creds/app"}}{{.username}} {{.password}}{{end}}`}},
	})
	if err := m.RenderFirst(context.Background()); err != nil {
		t.Fatal(err)
	}
	readAt := time.Now()
	first := strings.Fields(readFile(dest))
	if len(first) != 2 {
		t.Fatalf("rendered %d fields, want username and password", len(first))
	}
	e.secrets = append(e.secrets, first[1])
	if got := db.Exec(t, "SELECT COUNT(*) FROM mysql.user WHERE user='"+first[0]+"'"); got != "1" {
		t.Fatalf("the rendered user does not exist in MariaDB (count %s)", got)
	}
	run(t, m)

	// Past the default TTL the same credentials stay rendered: the
	// lease was renewed, not the secret read again.
	renewals := func() float64 {
		mfs, _ := e.reg.Gather()
		for _, mf := range mfs {
			if mf.GetName() == "lifeboat_vault_lease_renewals_total" {
				return mf.GetMetric()[0].GetCounter().GetValue()
			}
		}
		return 0
	}
	eventually(t, 2*ttl, "two lease renewals and the first TTL over", func() bool {
		return renewals() >= 2 && time.Since(readAt) > ttl+100*time.Millisecond
	})
	if got := strings.Fields(readFile(dest)); got[0] != first[0] {
		t.Fatalf("credentials replaced after %s although the lease was renewable", time.Since(readAt))
	}
	// Before the max TTL ends, new credentials are in the file.
	eventually(t, maxTTL+2*time.Second, "new credentials", func() bool {
		f := strings.Fields(readFile(dest))
		return len(f) == 2 && f[0] != first[0]
	})
	d := time.Since(readAt)
	t.Logf("new credentials rendered %s after the first read (max TTL %s)", d.Round(time.Millisecond), maxTTL)
	if d >= maxTTL {
		t.Errorf("new credentials rendered %s after the first read; the lease ended at %s\n%s", d, maxTTL, e.logs.String())
	}
	second := strings.Fields(readFile(dest))
	e.secrets = append(e.secrets, second[1])
	if got := db.Exec(t, "SELECT COUNT(*) FROM mysql.user WHERE user='"+second[0]+"'"); got != "1" {
		t.Errorf("the new user does not exist in MariaDB (count %s)", got)
	}
	for _, s := range e.secrets {
		if strings.Contains(e.logs.String(), s) {
			t.Errorf("logs hold a secret value (%d chars)", len(s))
		}
	}
}

// TestFunctionsOwnersAndActions: service lists healthy instances only and
// follows health changes; leader follows Notify; env reads lifeboat's
// environment; files get the asked owner; on_change command and restart
// run once per change.
func TestFunctionsOwnersAndActions(t *testing.T) {
	e := setup(t)
	dir := t.TempDir()
	agent := e.consul.Agent()
	for _, s := range []struct {
		id, status string
		tags       []string
	}{{"web-1", consulapi.HealthPassing, []string{"primary"}}, {"web-2", consulapi.HealthCritical, nil}} {
		if err := agent.ServiceRegister(&consulapi.AgentServiceRegistration{ID: s.id, Name: "web", Address: "10.0.0." + s.id[4:], Port: 8080, Tags: s.tags,
			Check: &consulapi.AgentServiceCheck{TTL: "1m", Status: s.status}}); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("LIFEBOAT_TEST_REGION", "eu-west")
	var leaderMu sync.Mutex
	leader := "10.0.0.1:3306"
	app := &recorder{}
	marker := filepath.Join(dir, "marker")
	svcDest, ownDest, leaderDest := filepath.Join(dir, "svc.conf"), filepath.Join(dir, "owned.conf"), filepath.Join(dir, "leader.conf")
	m := e.manager(t, templates.Options{
		App: app,
		Leader: func() string {
			leaderMu.Lock()
			defer leaderMu.Unlock()
			return leader
		},
		DefaultUser: "65534",
		Templates: []templates.Template{
			{Name: "svc", Destination: svcDest,
				Contents: `{{range service "web"}}{{.ID}}={{.Address}}:{{.Port}};{{end}} primary={{range service "web" "primary"}}{{.ID}}{{end}}`,
				OnChange: templates.Action{Kind: templates.ActionCommand, Command: []string{"/bin/sh", "-c", `echo "$LIFEBOAT_TEMPLATE_NAME $LIFEBOAT_TEMPLATE" >> ` + marker}}},
			{Name: "owned", Destination: ownDest, Contents: `region={{env "LIFEBOAT_TEST_REGION"}}`, User: "65533", Group: "65532"},
			{Name: "leader", Destination: leaderDest, Contents: `leader={{leader}} {{"a,b" | split "," | join "+"}}`,
				OnChange: templates.Action{Kind: templates.ActionRestart}},
		},
	})
	if err := m.RenderFirst(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := readFile(svcDest); got != "web-1=10.0.0.1:8080; primary=web-1" {
		t.Fatalf("service: only healthy instances, got %q", got)
	}
	if got := readFile(ownDest); got != "region=eu-west" {
		t.Errorf("env function: %q", got)
	}
	if got := readFile(leaderDest); got != "leader=10.0.0.1:3306 a+b" {
		t.Errorf("leader function: %q", got)
	}
	owner := func(p string) (uint32, uint32) {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		return st.Uid, st.Gid
	}
	if uid, gid := owner(ownDest); uid != 65533 || gid != 65532 {
		t.Errorf("owned.conf owner %d:%d, want 65533:65532", uid, gid)
	}
	if uid, gid := owner(svcDest); uid != 65534 || gid != 65534 {
		t.Errorf("svc.conf owner %d:%d, want the app's user 65534:65534", uid, gid)
	}
	run(t, m)

	// web-2 turns healthy: re-rendered, the command runs once.
	if err := agent.UpdateTTL("service:web-2", "", consulapi.HealthPassing); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Second, "web-2 in the file", func() bool {
		return readFile(svcDest) == "web-1=10.0.0.1:8080;web-2=10.0.0.2:8080; primary=web-1"
	})
	eventually(t, 2*time.Second, "the on_change command", func() bool { return readFile(marker) != "" })
	if got := readFile(marker); got != "svc "+svcDest+"\n" {
		t.Errorf("on_change command ran with %q, want once with the template's name and destination", got)
	}

	// A new leader: Notify re-renders, restart runs once.
	leaderMu.Lock()
	leader = "10.0.0.2:3306"
	leaderMu.Unlock()
	m.Notify()
	eventually(t, 2*time.Second, "the new leader", func() bool { return readFile(leaderDest) == "leader=10.0.0.2:3306 a+b" })
	eventually(t, time.Second, "the restart", func() bool { return app.count() == 1 })
	app.mu.Lock()
	restarts, signals := app.restarts, len(app.signals)
	app.mu.Unlock()
	if restarts != 1 || signals != 0 {
		t.Errorf("app got %d restarts and %d signals; want 1 and 0", restarts, signals)
	}
	if got := readFile(marker); got != "svc "+svcDest+"\n" {
		t.Errorf("the svc command ran again though svc.conf did not change: %q", got)
	}
}

// TestConsulDownKeepsLastFile: the Consul agent stops mid-run; the file
// keeps its last content, status and metrics say Consul is down, and when
// an agent is back the new value is rendered.
func TestConsulDownKeepsLastFile(t *testing.T) {
	e := setup(t)
	e.put(t, "down/k", "one")
	dest := filepath.Join(t.TempDir(), "down.conf")
	m := e.manager(t, templates.Options{
		Templates: []templates.Template{{Name: "down", Destination: dest, Contents: `{{key "down/k"}}`}},
	})
	if err := m.RenderFirst(context.Background()); err != nil {
		t.Fatal(err)
	}
	run(t, m)
	metric := func(name string) float64 {
		mfs, _ := e.reg.Gather()
		for _, mf := range mfs {
			if mf.GetName() == name {
				if g := mf.GetMetric()[0].GetGauge(); g != nil {
					return g.GetValue()
				}
				return mf.GetMetric()[0].GetCounter().GetValue()
			}
		}
		return -1
	}
	if metric("lifeboat_consul_up") != 1 {
		t.Fatalf("lifeboat_consul_up %v before the outage, want 1", metric("lifeboat_consul_up"))
	}
	e.c.Stop()
	eventually(t, 5*time.Second, "status to report consul down", func() bool {
		st := m.Status()
		return !st.Healthy && len(st.Sources) == 1 && st.Sources[0].LastError != ""
	})
	if metric("lifeboat_consul_up") != 0 || metric("lifeboat_consul_watch_errors_total") < 1 {
		t.Errorf("metrics during the outage: up %v, errors %v", metric("lifeboat_consul_up"), metric("lifeboat_consul_watch_errors_total"))
	}
	if got := readFile(dest); got != "one" {
		t.Fatalf("file changed during the outage: %q", got)
	}
	if st := m.Status().Templates[0]; st.LastError != "" || !st.Rendered {
		t.Errorf("template status during the outage: %+v", st)
	}
	e.c.Start(t) // a fresh dev agent on the same address
	e.put(t, "down/k", "two")
	eventually(t, 5*time.Second, "the value from the agent that came back", func() bool { return readFile(dest) == "two" })
	eventually(t, 2*time.Second, "status healthy again", func() bool { return m.Status().Healthy })
	if metric("lifeboat_consul_up") != 1 {
		t.Errorf("lifeboat_consul_up %v after recovery", metric("lifeboat_consul_up"))
	}
}

// TestSourcePermsAndAtomicWrites: a template read from a source file,
// written with the asked mode, leaving no temp file behind; bad sources
// and Consul functions without Consul are errors naming the template.
func TestSourcePermsAndAtomicWrites(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "app.tmpl")
	os.WriteFile(src, []byte(`mode={{env "LIFEBOAT_TEST_MODE"}}`), 0o644)
	t.Setenv("LIFEBOAT_TEST_MODE", "one")
	dest := filepath.Join(dir, "out", "app.conf")
	m, err := templates.New(templates.Options{Templates: []templates.Template{{Source: src, Destination: dest, Perms: 0o640}}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.RenderFirst(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := readFile(dest); got != "mode=one" {
		t.Fatalf("rendered %q", got)
	}
	fi, _ := os.Stat(dest)
	if fi.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want 0640", fi.Mode().Perm())
	}
	entries, _ := os.ReadDir(filepath.Dir(dest))
	if len(entries) != 1 {
		t.Errorf("destination directory holds %d entries, want only the file (no temp files)", len(entries))
	}
	if st := m.Status(); len(st.Templates) != 1 || st.Templates[0].Name != dest || !st.Templates[0].Rendered {
		t.Errorf("status: %+v (name defaults to the destination)", st.Templates)
	}

	// Unparsable and missing sources are errors naming the template.
	os.WriteFile(src, []byte(`{{ key "x" `), 0o644)
	if _, err := templates.New(templates.Options{Templates: []templates.Template{{Name: "bad", Source: src, Destination: dest}}}); err == nil || !strings.Contains(err.Error(), `template "bad"`) {
		t.Errorf("bad template: %v", err)
	}
	if _, err := templates.New(templates.Options{Templates: []templates.Template{{Name: "gone", Source: filepath.Join(dir, "nope"), Destination: dest}}}); err == nil || !strings.Contains(err.Error(), `template "gone": reading source`) {
		t.Errorf("missing source: %v", err)
	}
	// Consul functions without a Consul client: named, not a panic.
	m2, err := templates.New(templates.Options{FirstRenderTimeout: 200 * time.Millisecond,
		Templates: []templates.Template{{Name: "noconsul", Contents: `{{key "a"}}`, Destination: filepath.Join(dir, "n.conf")}}})
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	if err := m2.RenderFirst(context.Background()); err == nil || !strings.Contains(err.Error(), "no consul block is configured") {
		t.Errorf("key without consul: %v", err)
	}
}

// TestLeasesFollowRelogin: Vault revokes a token's leases when the token
// ends. When lifeboat's AppRole token reaches its max TTL and lifeboat
// logs in again, dynamic credentials read with the old token are read
// again with the new one and rendered before the old token (and with it
// the old database user) is gone.
func TestLeasesFollowRelogin(t *testing.T) {
	e := setup(t)
	db := databaseEngine(t, e, 30*time.Second, time.Minute)
	if err := e.vaultRoot.Sys().EnableAuthWithOptions("approle", &vaultapi.EnableAuthOptions{Type: "approle"}); err != nil {
		t.Fatal(err)
	}
	if err := e.vaultRoot.Sys().PutPolicy("db", `path "database/creds/app" { capabilities = ["read"] }`); err != nil {
		t.Fatal(err)
	}
	e.writeSecret(t, "auth/approle/role/app", map[string]any{"token_policies": "db", "token_ttl": "2s", "token_max_ttl": "4s"})
	rid, err := e.vaultRoot.Logical().Read("auth/approle/role/app/role-id")
	if err != nil {
		t.Fatal(err)
	}
	sid, err := e.vaultRoot.Logical().Write("auth/approle/role/app/secret-id", nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	roleFile, secretFile := filepath.Join(dir, "role_id"), filepath.Join(dir, "secret_id")
	os.WriteFile(roleFile, []byte(rid.Data["role_id"].(string)), 0o600)
	os.WriteFile(secretFile, []byte(sid.Data["secret_id"].(string)), 0o600)
	vc, err := vault.New(context.Background(), vault.Options{Address: e.v.Addr, Logger: e.log,
		Auth:    vault.Auth{Method: vault.MethodAppRole, RoleIDFile: roleFile, SecretIDFile: secretFile},
		Timeout: 2 * time.Second, RetryInitial: 50 * time.Millisecond, RetryMax: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); vc.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	dest := filepath.Join(dir, "db.conf")
	m, err := templates.New(templates.Options{Vault: vc, Logger: e.log, FirstRenderTimeout: 10 * time.Second,
		RetryInitial: 50 * time.Millisecond, RetryMax: 300 * time.Millisecond,
		Templates: []templates.Template{{Name: "db", Destination: dest,
			Contents: `{{with secret "database/creds/app"}}{{.username}} {{.password}}{{end}}`}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	if err := m.RenderFirst(context.Background()); err != nil {
		t.Fatal(err)
	}
	run(t, m)
	first := strings.Fields(readFile(dest))[0]
	if !dbUserExists(t, db, first) {
		t.Fatal("the rendered user does not exist")
	}
	eventually(t, 8*time.Second, "a re-login at the token's 4s max TTL", func() bool { return vc.Status().Logins >= 2 })
	eventually(t, 3*time.Second, "new credentials read with the new token", func() bool {
		f := strings.Fields(readFile(dest))
		return len(f) == 2 && f[0] != first
	})
	// The old token's end takes its lease with it: the old user is dropped
	// (what made re-reading necessary), the rendered one works.
	eventually(t, 5*time.Second, "the old user revoked with the old token", func() bool { return !dbUserExists(t, db, first) })
	if now := strings.Fields(readFile(dest))[0]; !dbUserExists(t, db, now) {
		t.Errorf("the rendered user %s does not exist in MariaDB", now)
	}
}

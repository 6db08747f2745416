package supervisor_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	vaultapi "github.com/hashicorp/vault/api"
	"github.com/lifeboat/lifeboat/internal/testrig"
	"github.com/lifeboat/lifeboat/supervisor"
	"github.com/lifeboat/lifeboat/supervisor/config"
	"github.com/lifeboat/lifeboat/supervisor/storage"
	"github.com/minio/minio-go/v7"
)

// These tests run the lifeboat binary with a config against a real
// `consul agent -dev` and `vault server -dev`.

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond) // poll tick
	}
}

func fileText(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}

type secretsRig struct {
	vault                  *testrig.Vault
	dir                    string
	consul                 *consulapi.Client
	vaultRoot              *vaultapi.Client
	consulAddr, vaultAddr  string
	roleIDFile, secretFile string
	secrets                []string
}

func newSecretsRig(t *testing.T) *secretsRig {
	c := testrig.StartConsul(t)
	v := testrig.StartVault(t)
	r := &secretsRig{vault: v, dir: t.TempDir(), consulAddr: c.HTTPAddr, vaultAddr: v.Addr, secrets: []string{v.RootToken}}
	var err error
	if r.consul, err = consulapi.NewClient(&consulapi.Config{Address: c.HTTPAddr}); err != nil {
		t.Fatal(err)
	}
	if r.vaultRoot, err = vaultapi.NewClient(&vaultapi.Config{Address: v.Addr}); err != nil {
		t.Fatal(err)
	}
	r.vaultRoot.SetToken(v.RootToken)
	if err := r.vaultRoot.Sys().EnableAuthWithOptions("approle", &vaultapi.EnableAuthOptions{Type: "approle"}); err != nil {
		t.Fatal(err)
	}
	if err := r.vaultRoot.Sys().PutPolicy("app", `path "secret/data/app" { capabilities = ["read"] }`); err != nil {
		t.Fatal(err)
	}
	r.write(t, "auth/approle/role/app", map[string]any{"token_policies": "app", "token_ttl": "1h"})
	rid, err := r.vaultRoot.Logical().Read("auth/approle/role/app/role-id")
	if err != nil {
		t.Fatal(err)
	}
	sid := r.write(t, "auth/approle/role/app/secret-id", nil).Data["secret_id"].(string)
	r.secrets = append(r.secrets, sid)
	r.roleIDFile, r.secretFile = filepath.Join(r.dir, "role_id"), filepath.Join(r.dir, "secret_id")
	os.WriteFile(r.roleIDFile, []byte(rid.Data["role_id"].(string)), 0o600)
	os.WriteFile(r.secretFile, []byte(sid), 0o600)
	return r
}

func (r *secretsRig) write(t *testing.T, path string, data map[string]any) *vaultapi.Secret {
	t.Helper()
	s, err := r.vaultRoot.Logical().Write(path, data)
	if err != nil {
		t.Fatalf("vault write %s: %v", path, err)
	}
	return s
}

func (r *secretsRig) put(t *testing.T, k, v string) {
	t.Helper()
	if _, err := r.consul.KV().Put(&consulapi.KVPair{Key: k, Value: []byte(v)}, nil); err != nil {
		t.Fatal(err)
	}
}

// accessors lists the Vault token accessors that exist now.
func (r *secretsRig) accessors(t *testing.T) map[string]bool {
	t.Helper()
	s, err := r.vaultRoot.Logical().List("auth/token/accessors")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, k := range s.Data["keys"].([]any) {
		out[k.(string)] = true
	}
	return out
}

// config writes a lifeboat config whose app records its env and counts
// its SIGHUPs, and returns its path.
func (r *secretsRig) config(t *testing.T, tmpl string) string {
	script := fmt.Sprintf(`trap 'echo hup >> %[1]s/hups' HUP; echo "$APP_PORT $APP_PASSWORD" > %[1]s/env.tmp; mv %[1]s/env.tmp %[1]s/env; while :; do sleep 0.05; done`, r.dir)
	cfg := fmt.Sprintf(`
app {
  command = ["/bin/sh", "-c", %q]
}
store { url = "file://%[2]s/store" }
data { path = "%[2]s/data" }
backup {
  # Backup hooks get the rendered env block like the app.
  hook "pre_backup" {
    command = ["/bin/sh", "-c", "echo \"$APP_PASSWORD\" > %[2]s/hook-env"]
  }
}
control { socket = "%[2]s/lb.sock" }
consul { address = %[3]q }
vault {
  address = %[4]q
  auth {
    method         = "approle"
    role_id_file   = %[5]q
    secret_id_file = %[6]q
  }
}
template "app" {
  contents    = %[7]q
  destination = "%[2]s/app.conf"
  on_change   = ["signal", "SIGHUP"]
  wait {
    min = "200ms"
    max = "1s"
  }
}
env {
  APP_PORT     = "{{ key \"app/port\" }}"
  APP_PASSWORD = "{{ secret \"secret/app\" \"password\" }}"
}
`, script, r.dir, r.consulAddr, r.vaultAddr, r.roleIDFile, r.secretFile, tmpl)
	p := filepath.Join(r.dir, "lifeboat.hcl")
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

type lifeboatRun struct {
	cmd    *exec.Cmd
	out    *lockedBuffer
	done   chan struct{}
	status int
}

func startLifeboat(t *testing.T, cfg string, env ...string) *lifeboatRun {
	bin := testrig.BuildLifeboat(t)
	l := &lifeboatRun{out: &lockedBuffer{}, done: make(chan struct{})}
	l.cmd = exec.Command(bin, "run", "--config", cfg)
	l.cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "LIFEBOAT_LOG_LEVEL=debug"}, env...)
	l.cmd.Stdout, l.cmd.Stderr = l.out, l.out
	// An app left behind by a killed lifeboat may hold the output pipe:
	// do not let Wait hang on it.
	l.cmd.WaitDelay = 5 * time.Second
	if err := l.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(l.done)
		err := l.cmd.Wait()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			l.status = ee.ExitCode()
		}
	}()
	t.Cleanup(func() {
		testrig.KillTree(l.cmd.Process.Pid) // lifeboat and its app, which has a process group of its own
		<-l.done
	})
	return l
}

func (l *lifeboatRun) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-l.done:
		return l.status
	case <-time.After(d):
		t.Fatalf("lifeboat did not exit within %s; output:\n%s", d, l.out.String())
		return 0
	}
}

// TestSecretsEndToEnd: lifeboat logs in with AppRole from files, renders a
// Consul key and a Vault secret into a 0600 file and the app's env before
// starting it, re-renders on a Consul change and sends the app its signal
// once, shows it all in status without values, and revokes its token at
// exit.
func TestSecretsEndToEnd(t *testing.T) {
	r := newSecretsRig(t)
	r.put(t, "app/port", "8080")
	const pw = "s3cr3t-e2e-password"
	r.secrets = append(r.secrets, pw)
	r.write(t, "secret/data/app", map[string]any{"data": map[string]any{"password": pw}})
	before := r.accessors(t)

	cfg := r.config(t, `port={{ key "app/port" }}
password={{ secret "secret/app" "password" }}
`)
	l := startLifeboat(t, cfg)
	envFile, conf, hups := filepath.Join(r.dir, "env"), filepath.Join(r.dir, "app.conf"), filepath.Join(r.dir, "hups")
	waitFor(t, 20*time.Second, "the app to record its env", func() bool { return fileText(envFile) != "" })
	if got := fileText(envFile); got != "8080 "+pw+"\n" {
		t.Fatalf("app env: got %q", got)
	}
	if got := fileText(conf); got != "port=8080\npassword="+pw+"\n" {
		t.Fatalf("rendered file: %q", got)
	}
	if fi, _ := os.Stat(conf); fi.Mode().Perm() != 0o600 {
		t.Errorf("rendered file with a secret has mode %v, want 0600", fi.Mode().Perm())
	}
	var lbAccessor string
	for a := range r.accessors(t) {
		if !before[a] {
			lbAccessor = a
		}
	}
	if lbAccessor == "" {
		t.Fatal("no new Vault token while lifeboat runs")
	}

	r.put(t, "app/port", "9090")
	t0 := time.Now()
	waitFor(t, 3*time.Second, "the re-render", func() bool { return strings.HasPrefix(fileText(conf), "port=9090\n") })
	if d := time.Since(t0); d > time.Second+200*time.Millisecond {
		t.Errorf("re-rendered %s after the change (wait.min 200ms)", d)
	}
	waitFor(t, 2*time.Second, "the app's SIGHUP", func() bool { return fileText(hups) == "hup\n" })

	// Status over the control socket: templates and Vault, no values.
	st := exec.Command(testrig.BuildLifeboat(t), "status", "--json")
	st.Env = []string{"LIFEBOAT_SOCKET=" + filepath.Join(r.dir, "lb.sock")}
	statusJSON, err := st.Output()
	if err != nil {
		t.Fatalf("lifeboat status: %v", err)
	}
	var parsed struct {
		Secrets struct {
			Vault struct {
				Healthy bool   `json:"healthy"`
				Method  string `json:"auth_method"`
			} `json:"vault"`
			Templates struct {
				Templates []struct {
					Name    string `json:"name"`
					Renders int    `json:"renders"`
				} `json:"templates"`
				Env []string `json:"env"`
			} `json:"templates"`
		} `json:"secrets"`
	}
	if err := json.Unmarshal(statusJSON, &parsed); err != nil {
		t.Fatalf("status JSON: %v\n%s", err, statusJSON)
	}
	s := parsed.Secrets
	if !s.Vault.Healthy || s.Vault.Method != "approle" || len(s.Templates.Templates) != 1 || s.Templates.Templates[0].Renders != 2 || len(s.Templates.Env) != 2 {
		t.Errorf("status secrets section: %+v\n%s", s, statusJSON)
	}

	l.cmd.Process.Signal(syscall.SIGTERM)
	l.wait(t, 15*time.Second)
	if _, err := r.vaultRoot.Auth().Token().LookupAccessor(lbAccessor); err == nil {
		t.Error("lifeboat's Vault token is still valid after it exited (revoke_on_exit defaults to true)")
	}
	if fileText(hups) != "hup\n" {
		t.Errorf("app got %q SIGHUPs; want exactly one", fileText(hups))
	}
	if got := fileText(filepath.Join(r.dir, "hook-env")); got != pw+"\n" {
		t.Errorf("the final backup's pre_backup hook did not get the rendered env (%d bytes)", len(got))
	}

	captured := l.out.String() + string(statusJSON)
	if !strings.Contains(captured, "template rendered") || !strings.Contains(captured, "logged in to vault") {
		t.Fatalf("captured output lacks expected lines; the leak check would prove nothing:\n%s", captured)
	}
	for _, sec := range r.secrets {
		if strings.Contains(captured, sec) {
			t.Errorf("captured output holds a secret value (%d chars)", len(sec))
		}
	}
}

// TestSecretsMissingAtStart: a missing key and secret keep the app from
// starting; lifeboat exits 1 naming both.
func TestSecretsMissingAtStart(t *testing.T) {
	r := newSecretsRig(t)
	cfg := r.config(t, `{{ key "app/absent" }}`)
	l := startLifeboat(t, cfg, "LIFEBOAT_RENDER_TIMEOUT=1s")
	if code := l.wait(t, 20*time.Second); code != 1 {
		t.Errorf("exit status %d, want 1", code)
	}
	out := l.out.String()
	for _, want := range []string{`consul key \"app/absent\" does not exist`, `consul key \"app/port\" does not exist`, "vault secret secret/app does not exist"} {
		if !strings.Contains(out, want) {
			t.Errorf("output does not say %s:\n%s", want, out)
		}
	}
	if _, err := os.Stat(filepath.Join(r.dir, "env")); err == nil {
		t.Error("the app was started")
	}
}

// TestStoreCredentialsFromVault: store.vault names the S3 credentials and
// the encryption key in Vault; ResolveStoreVault (what the snapshot
// commands call, and what run's connect phase does) logs in with AppRole,
// fills the store block, and revokes its token; a real MinIO accepts the
// credentials that came only from Vault.
func TestStoreCredentialsFromVault(t *testing.T) {
	for _, v := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "VAULT_TOKEN", "VAULT_ADDR"} {
		t.Setenv(v, "")
	}
	r := newSecretsRig(t)
	m := testrig.StartMinIO(t)
	const encKey = "s3cr3t-encryption-key-from-vault"
	r.secrets = append(r.secrets, m.SecretKey, encKey)
	r.write(t, "secret/data/app", map[string]any{"data": map[string]any{"ak": m.AccessKey, "sk": m.SecretKey, "ek": encKey}})
	before := r.accessors(t)
	cfgFile := filepath.Join(r.dir, "store.hcl")
	os.WriteFile(cfgFile, []byte(fmt.Sprintf(`
store {
  url = %q
  encryption_key_file = "/nonexistent/key"
  vault {
    access_key     = "secret/app#ak"
    secret_key     = "secret/data/app#sk"
    encryption_key = "secret/app#ek"
  }
}
vault {
  address = %q
  auth {
    method         = "approle"
    role_id_file   = %q
    secret_id_file = %q
  }
}
`, m.StoreURL("vaultcreds", "p"), r.vaultAddr, r.roleIDFile, r.secretFile)), 0o600)
	cfg, err := config.Load(cfgFile, config.Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	logs := &lockedBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if err := supervisor.ResolveStoreVault(context.Background(), cfg, log); err != nil {
		t.Fatal(err)
	}
	st := cfg.Store
	if st.AccessKey != m.AccessKey || st.SecretKey != m.SecretKey || st.EncryptionKey != encKey || st.EncryptionKeyFile != "" {
		t.Fatalf("store block not filled from Vault (access key set %v, secret key set %v, encryption key set %v, key file %q)",
			st.AccessKey != "", st.SecretKey != "", st.EncryptionKey != "", st.EncryptionKeyFile)
	}
	if got := r.accessors(t); len(got) != len(before) {
		t.Errorf("%d Vault tokens before, %d after: the AppRole token was not revoked", len(before), len(got))
	}
	store, err := storage.Open(context.Background(), st.URL, storage.Options{AccessKey: st.AccessKey, SecretKey: st.SecretKey, CreateBucket: true})
	if err != nil {
		t.Fatalf("opening MinIO with the credentials from Vault: %v", err)
	}
	defer store.Close()
	if err := store.Put(context.Background(), "probe", strings.NewReader("ok"), 2); err != nil {
		t.Fatalf("writing to MinIO with the credentials from Vault: %v", err)
	}

	// A reference to a missing field: the error names the key and path.
	cfg, _ = config.Load(cfgFile, config.Overrides{})
	cfg.Store.Vault.SecretKey = "secret/app#nope"
	err = supervisor.ResolveStoreVault(context.Background(), cfg, log)
	if err == nil || !strings.Contains(err.Error(), `store.vault.secret_key: vault: secret secret/data/app has no field "nope"`) || supervisor.IsConfigError(err) {
		t.Errorf("missing field: %v", err)
	}
	// store.vault without a vault block is a config error.
	cfg, _ = config.Load(cfgFile, config.Overrides{})
	cfg.Vault = nil
	if err := supervisor.ResolveStoreVault(context.Background(), cfg, log); !supervisor.IsConfigError(err) {
		t.Errorf("store.vault without vault: %v, want a config error", err)
	}
	for _, s := range r.secrets {
		if strings.Contains(logs.String(), s) || (err != nil && strings.Contains(err.Error(), s)) {
			t.Errorf("logs or errors hold a secret value (%d chars)", len(s))
		}
	}
}

// TestSecretsConfigMistakes: mistakes only found while connecting exit 2
// at once, naming the key, and the app is never started; a store.vault
// reference that cannot be read stops lifeboat before the app (and before
// any restore) with exit 1.
func TestSecretsConfigMistakes(t *testing.T) {
	r := newSecretsRig(t)
	base := fmt.Sprintf(`
app { command = ["/bin/sh", "-c", "touch %[1]s/started"] }
store { url = "file://%[1]s/store" }
data { path = "%[1]s/data" }
control { socket = "%[1]s/lb.sock" }
`, r.dir)
	for _, tc := range []struct {
		name, cfg, want string
		code            int
	}{
		{"jwt without jwt_file", fmt.Sprintf(`vault {
  address = %q
  auth {
    method = "jwt"
    role   = "app"
  }
}`, r.vaultAddr), "jwt auth needs role and jwt_file", 2},
		{"store.vault without vault", `store {
  vault { access_key = "secret/app#ak" }
}`, "store.vault names Vault secrets but there is no vault block", 2},
		{"store.vault field missing", fmt.Sprintf(`store {
  vault { access_key = "secret/app#ak" }
}
vault {
  address = %q
  auth {
    method         = "approle"
    role_id_file   = %q
    secret_id_file = %q
  }
}`, r.vaultAddr, r.roleIDFile, r.secretFile), "store.vault.access_key: vault: reading secret/data/app: no secret at this path", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(r.dir, "c.hcl")
			// Two store blocks are not allowed: merge the test's into base.
			cfg := base + tc.cfg
			if strings.HasPrefix(tc.cfg, "store {") {
				cfg = strings.Replace(base, fmt.Sprintf(`store { url = "file://%s/store" }`, r.dir),
					strings.Replace(tc.cfg, "store {", fmt.Sprintf("store {\n  url = \"file://%s/store\"", r.dir), 1), 1)
			}
			os.WriteFile(p, []byte(cfg), 0o600)
			t0 := time.Now()
			l := startLifeboat(t, p)
			if code := l.wait(t, 20*time.Second); code != tc.code {
				t.Errorf("exit %d, want %d; output:\n%s", code, tc.code, l.out.String())
			}
			if d := time.Since(t0); d > 5*time.Second {
				t.Errorf("took %s; a config mistake must not be retried", d)
			}
			if !strings.Contains(l.out.String(), tc.want) {
				t.Errorf("output does not say %q:\n%s", tc.want, l.out.String())
			}
			if _, err := os.Stat(filepath.Join(r.dir, "started")); err == nil {
				t.Error("the app was started")
			}
		})
	}
}

// socketGet GETs path from lifeboat's control socket.
func socketGet(t *testing.T, sock, path string) []byte {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
	resp, err := c.Get("http://lifeboat" + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %v", path, resp.StatusCode, err)
	}
	return b
}

// outageStatus is the part of the status JSON the outage test reads.
type outageStatus struct {
	App struct {
		Running bool `json:"running"`
		Pid     int  `json:"pid"`
	} `json:"app"`
	Secrets struct {
		Vault struct {
			Healthy bool `json:"healthy"`
		} `json:"vault"`
		Templates struct {
			Healthy bool `json:"healthy"`
			Sources []struct {
				Source    string `json:"source"`
				Healthy   bool   `json:"healthy"`
				LastError string `json:"last_error"`
			} `json:"sources"`
		} `json:"templates"`
	} `json:"secrets"`
}

// TestSecretsVaultOutage: Vault hangs while the app runs; the app keeps
// running with the last rendered values, status and metrics say Vault is
// unreachable, and when Vault answers again a changed secret is rendered
// and the app gets its one signal. Everything lifeboat printed or served
// (log, status JSON and text, metrics) is then searched for every secret
// value.
func TestSecretsVaultOutage(t *testing.T) {
	r := newSecretsRig(t)
	if err := r.vaultRoot.Sys().Mount("kv1", &vaultapi.MountInput{Type: "kv", Options: map[string]string{"version": "1"}}); err != nil {
		t.Fatal(err)
	}
	if err := r.vaultRoot.Sys().PutPolicy("app", `path "secret/data/app" { capabilities = ["read"] }
path "kv1/app" { capabilities = ["read"] }`); err != nil {
		t.Fatal(err)
	}
	const pw1, pw2, envPW = "s3cr3t-outage-one", "s3cr3t-outage-two", "s3cr3t-outage-env"
	r.secrets = append(r.secrets, pw1, pw2, envPW)
	r.put(t, "app/port", "8080")
	r.write(t, "secret/data/app", map[string]any{"data": map[string]any{"password": envPW}})
	// A 2s TTL makes lifeboat read the secret again every ~1.3s.
	r.write(t, "kv1/app", map[string]any{"password": pw1, "ttl": "2s"})
	cfg := r.config(t, `password={{ secret "kv1/app" "password" }}`)
	sock := filepath.Join(r.dir, "lb.sock")
	l := startLifeboat(t, cfg)
	conf, hups := filepath.Join(r.dir, "app.conf"), filepath.Join(r.dir, "hups")
	waitFor(t, 20*time.Second, "the app to record its env", func() bool { return fileText(filepath.Join(r.dir, "env")) != "" })
	var captured strings.Builder
	status := func() outageStatus {
		b := socketGet(t, sock, "/v1/status")
		captured.Write(b)
		var st outageStatus
		if err := json.Unmarshal(b, &st); err != nil {
			t.Fatalf("status JSON: %v", err)
		}
		return st
	}
	st0 := status()
	if !st0.App.Running || !st0.Secrets.Vault.Healthy || !st0.Secrets.Templates.Healthy {
		t.Fatalf("status before the outage: %+v", st0)
	}

	r.vault.Freeze()
	thawed := false
	t.Cleanup(func() {
		if !thawed {
			r.vault.Thaw()
		}
	})
	var during outageStatus
	waitFor(t, 25*time.Second, "status to report Vault unreachable", func() bool {
		during = status()
		for _, s := range during.Secrets.Templates.Sources {
			if s.Source == "vault" && !s.Healthy && s.LastError != "" {
				return !during.Secrets.Templates.Healthy
			}
		}
		return false
	})
	metrics := string(socketGet(t, sock, "/metrics"))
	captured.WriteString(metrics)
	if !strings.Contains(metrics, "lifeboat_vault_up 0") || !regexp.MustCompile(`lifeboat_template_source_errors_total\{source="vault"\} [1-9]`).MatchString(metrics) {
		t.Errorf("metrics during the outage do not say Vault is down:\n%s", grepLines(metrics, "vault"))
	}
	if !during.App.Running || during.App.Pid != st0.App.Pid {
		t.Errorf("app during the outage: running %v pid %d, want still running as pid %d", during.App.Running, during.App.Pid, st0.App.Pid)
	}
	if got := fileText(conf); got != "password="+pw1 {
		t.Errorf("rendered file during the outage: want the last value kept")
	}
	if fileText(hups) != "" {
		t.Errorf("app signalled during the outage: %q", fileText(hups))
	}

	r.vault.Thaw()
	thawed = true
	r.write(t, "kv1/app", map[string]any{"password": pw2, "ttl": "2s"})
	waitFor(t, 15*time.Second, "the changed secret after Vault returned", func() bool { return fileText(conf) == "password="+pw2 })
	waitFor(t, 2*time.Second, "the app's SIGHUP", func() bool { return fileText(hups) == "hup\n" })
	waitFor(t, 5*time.Second, "status healthy again", func() bool {
		st := status()
		return st.Secrets.Templates.Healthy && st.Secrets.Vault.Healthy
	})
	if st := status(); st.App.Pid != st0.App.Pid {
		t.Errorf("the app was restarted (pid %d, was %d); on_change is signal", st.App.Pid, st0.App.Pid)
	}
	captured.WriteString(string(socketGet(t, sock, "/metrics")))
	text := exec.Command(testrig.BuildLifeboat(t), "status")
	text.Env = []string{"LIFEBOAT_SOCKET=" + sock}
	textOut, err := text.CombinedOutput()
	if err != nil {
		t.Fatalf("lifeboat status: %v\n%s", err, textOut)
	}
	captured.Write(textOut)

	l.cmd.Process.Signal(syscall.SIGTERM)
	if code := l.wait(t, 15*time.Second); code != 128+int(syscall.SIGTERM) && code != 0 {
		t.Errorf("exit %d", code)
	}
	captured.WriteString(l.out.String())
	all := captured.String()
	for _, want := range []string{"template rendered", "logged in to vault", "lifeboat_vault_up", "APP_PASSWORD", "kv1/app"} {
		if !strings.Contains(all, want) {
			t.Fatalf("captured output lacks %q; the leak check would prove nothing", want)
		}
	}
	for _, s := range r.secrets {
		if strings.Contains(all, s) {
			t.Errorf("captured output (log, status, metrics) holds a secret value (%d chars)", len(s))
		}
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestStoreFromVaultEndToEnd: `lifeboat run` with nothing but a Vault
// role: the S3 credentials and the encryption key come from store.vault,
// the final backup lands encrypted in a real MinIO, and a second run on an
// empty data directory restores it with the same Vault-held key.
func TestStoreFromVaultEndToEnd(t *testing.T) {
	for _, v := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "LIFEBOAT_ENCRYPTION_KEY"} {
		t.Setenv(v, "")
	}
	r := newSecretsRig(t)
	m := testrig.StartMinIO(t)
	const encKey = "s3cr3t-e2e-encryption-key"
	r.secrets = append(r.secrets, m.SecretKey, encKey)
	r.write(t, "secret/data/app", map[string]any{"data": map[string]any{"ak": m.AccessKey, "sk": m.SecretKey, "ek": encKey}})
	runsOut := &runOutputs{}
	run := func(name, app string) *lifeboatRun {
		dir := filepath.Join(r.dir, name)
		os.MkdirAll(filepath.Join(dir, "data"), 0o755)
		cfg := filepath.Join(dir, "lifeboat.hcl")
		os.WriteFile(cfg, []byte(fmt.Sprintf(`
app { command = ["/bin/sh", "-c", %q] }
data { path = "%[2]s/data" }
store {
  url = %[3]q
  vault {
    access_key     = "secret/app#ak"
    secret_key     = "secret/app#sk"
    encryption_key = "secret/app#ek"
  }
}
control { socket = "%[2]s/lb.sock" }
vault {
  address = %[4]q
  auth {
    method         = "approle"
    role_id_file   = %[5]q
    secret_id_file = %[6]q
  }
}
`, app, dir, m.StoreURL("vaultstore", "app"), r.vaultAddr, r.roleIDFile, r.secretFile)), 0o600)
		l := startLifeboat(t, cfg)
		runsOut.add(name, l)
		return l
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("output of the runs:\n%s", runsOut.String())
		}
	})
	first := run("first", fmt.Sprintf(`echo precious > %s/first/data/f; echo ok > %s/first/ready; while :; do sleep 0.05; done`, r.dir, r.dir))
	waitFor(t, 30*time.Second, "the first app", func() bool { return fileText(filepath.Join(r.dir, "first", "ready")) != "" || first.exited() })
	if first.exited() {
		t.Fatalf("first run ended early:\n%s", first.out.String())
	}
	first.cmd.Process.Signal(syscall.SIGTERM)
	first.wait(t, 60*time.Second)
	if !strings.Contains(first.out.String(), "phase done") || strings.Contains(first.out.String(), "level=ERROR") {
		t.Fatalf("first run:\n%s", first.out.String())
	}
	// The objects in MinIO are sealed: the data is nowhere in clear.
	ctx := context.Background()
	mc := m.Client(t)
	n := 0
	for obj := range mc.ListObjects(ctx, "vaultstore", minio.ListObjectsOptions{Recursive: true}) {
		if obj.Err != nil {
			t.Fatal(obj.Err)
		}
		n++
		o, err := mc.GetObject(ctx, "vaultstore", obj.Key, minio.GetObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(o)
		o.Close()
		if bytes.Contains(b, []byte("precious")) {
			t.Errorf("object %s holds the data in clear: the repository is not encrypted", obj.Key)
		}
	}
	if n == 0 {
		t.Fatalf("no objects in MinIO after the final backup:\n%s", first.out.String())
	}

	second := run("second", fmt.Sprintf(`cat %s/second/data/f > %s/second/seen; while :; do sleep 0.05; done`, r.dir, r.dir))
	waitFor(t, 30*time.Second, "the second app", func() bool { return fileText(filepath.Join(r.dir, "second", "seen")) != "" || second.exited() })
	if got := fileText(filepath.Join(r.dir, "second", "seen")); got != "precious\n" {
		t.Fatalf("restored data %q; output:\n%s", got, second.out.String())
	}
	second.cmd.Process.Signal(syscall.SIGTERM)
	second.wait(t, 60*time.Second)
	out := first.out.String() + second.out.String()
	for _, s := range r.secrets {
		if strings.Contains(out, s) {
			t.Errorf("lifeboat's output holds a secret value (%d chars)", len(s))
		}
	}
}

func (l *lifeboatRun) exited() bool {
	select {
	case <-l.done:
		return true
	default:
		return false
	}
}

// runOutputs collects the output of several lifeboat runs for a failure.
type runOutputs struct {
	names []string
	runs  []*lifeboatRun
}

func (o *runOutputs) add(name string, l *lifeboatRun) {
	o.names, o.runs = append(o.names, name), append(o.runs, l)
}

func (o *runOutputs) String() string {
	var b strings.Builder
	for i, l := range o.runs {
		fmt.Fprintf(&b, "--- %s\n%s", o.names[i], l.out.String())
	}
	return b.String()
}

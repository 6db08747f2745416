package supervisor_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	vaultapi "github.com/hashicorp/vault/api"
	"github.com/lifeboat/lifeboat/internal/testrig"
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
	r := &secretsRig{dir: t.TempDir(), consulAddr: c.HTTPAddr, vaultAddr: v.Addr, secrets: []string{v.RootToken}}
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
		l.cmd.Process.Signal(syscall.SIGKILL)
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

package vault_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	"github.com/lifeboat/lifeboat/internal/testrig"
	"github.com/lifeboat/lifeboat/supervisor/vault"
)

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

func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond) // poll tick
	}
}

func root(t *testing.T, v *testrig.Vault) *vaultapi.Client {
	c, err := vaultapi.NewClient(&vaultapi.Config{Address: v.Addr})
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken(v.RootToken)
	return c
}

func write(t *testing.T, c *vaultapi.Client, path string, data map[string]any) *vaultapi.Secret {
	t.Helper()
	s, err := c.Logical().Write(path, data)
	if err != nil {
		t.Fatalf("writing %s: %v", path, err)
	}
	return s
}

func writeFile(t *testing.T, dir, name, content string) string {
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// approleFiles creates role NAME with the given token TTLs and returns the
// role_id and secret_id files (the secret_id response-wrapped if asked).
func approleFiles(t *testing.T, rc *vaultapi.Client, name string, ttl, maxTTL string, wrapped bool) (string, string, string) {
	write(t, rc, "auth/approle/role/"+name, map[string]any{"token_ttl": ttl, "token_max_ttl": maxTTL, "token_policies": "default"})
	rid, err := rc.Logical().Read("auth/approle/role/" + name + "/role-id")
	if err != nil {
		t.Fatal(err)
	}
	var secretID string
	if wrapped {
		wc, _ := rc.Clone()
		wc.SetToken(rc.Token())
		wc.SetWrappingLookupFunc(func(string, string) string { return "60s" })
		s, err := wc.Logical().Write("auth/approle/role/"+name+"/secret-id", nil)
		if err != nil {
			t.Fatal(err)
		}
		secretID = s.WrapInfo.Token
	} else {
		secretID = write(t, rc, "auth/approle/role/"+name+"/secret-id", nil).Data["secret_id"].(string)
	}
	dir := t.TempDir()
	return writeFile(t, dir, "role_id", rid.Data["role_id"].(string)), writeFile(t, dir, "secret_id", secretID), secretID
}

func TestVaultAgainstDevServer(t *testing.T) {
	v := testrig.StartVault(t)
	rc := root(t, v)
	if err := rc.Sys().EnableAuthWithOptions("approle", &vaultapi.EnableAuthOptions{Type: "approle"}); err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	var secrets []string

	t.Run("approle login from files, plain and wrapped secret_id", func(t *testing.T) {
		for _, wrapped := range []bool{false, true} {
			roleFile, secretFile, sid := approleFiles(t, rc, "app", "1h", "2h", wrapped)
			secrets = append(secrets, sid)
			c, err := vault.New(context.Background(), vault.Options{Address: v.Addr, Logger: log,
				Auth: vault.Auth{Method: vault.MethodAppRole, RoleIDFile: roleFile, SecretIDFile: secretFile, SecretIDWrapped: wrapped}})
			if err != nil {
				t.Fatalf("wrapped=%v: %v", wrapped, err)
			}
			secrets = append(secrets, c.API().Token())
			if c.API().Token() == "" || c.API().Token() == v.RootToken {
				t.Fatalf("wrapped=%v: no approle token", wrapped)
			}
			if st := c.Status(); !st.Healthy || st.Logins != 1 || st.Method != "approle" {
				t.Errorf("status after login: %+v", st)
			}
		}
		// A wrong secret_id: refused, and the error names the file, not the value.
		roleFile, _, _ := approleFiles(t, rc, "app", "1h", "2h", false)
		bad := writeFile(t, t.TempDir(), "secret_id", "s3cr3t-not-a-valid-secret-id")
		_, err := vault.New(context.Background(), vault.Options{Address: v.Addr,
			Auth: vault.Auth{Method: vault.MethodAppRole, RoleIDFile: roleFile, SecretIDFile: bad}})
		if err == nil || strings.Contains(err.Error(), "s3cr3t") || !strings.Contains(err.Error(), "approle login") {
			t.Errorf("bad secret_id: error %v", err)
		}
	})

	t.Run("token renewed across several TTLs, then re-login at max TTL", func(t *testing.T) {
		roleFile, secretFile, _ := approleFiles(t, rc, "short", "1s", "4s", false)
		c, err := vault.New(context.Background(), vault.Options{Address: v.Addr, Logger: log,
			Auth: vault.Auth{Method: vault.MethodAppRole, RoleIDFile: roleFile, SecretIDFile: secretFile}})
		if err != nil {
			t.Fatal(err)
		}
		first := c.API().Token()
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); c.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
		// Three renewals of a 1s token: it lived across several TTLs.
		eventually(t, 5*time.Second, "3 token renewals", func() bool { return c.Status().Renewals >= 3 })
		if _, err := rc.Auth().Token().Lookup(first); err != nil {
			t.Fatalf("renewed token is not valid after %d renewals: %v", c.Status().Renewals, err)
		}
		// At its 4s max TTL it cannot be renewed: lifeboat logs in again.
		eventually(t, 8*time.Second, "a second login", func() bool { return c.Status().Logins >= 2 })
		tok := c.API().Token()
		if tok == first {
			t.Fatal("token unchanged after re-login")
		}
		if _, err := rc.Auth().Token().Lookup(tok); err != nil {
			t.Fatalf("token after re-login is not valid: %v", err)
		}
		secrets = append(secrets, first, tok)
	})

	t.Run("KV v1 and v2 reads and secret references", func(t *testing.T) {
		if err := rc.Sys().Mount("kv1", &vaultapi.MountInput{Type: "kv", Options: map[string]string{"version": "1"}}); err != nil {
			t.Fatal(err)
		}
		write(t, rc, "kv1/store", map[string]any{"access_key": "s3cr3t-v1-ak"})
		write(t, rc, "secret/data/lifeboat", map[string]any{"data": map[string]any{"access_key": "s3cr3t-v2-ak", "n": 3}})
		secrets = append(secrets, "s3cr3t-v1-ak", "s3cr3t-v2-ak")
		tokFile := writeFile(t, t.TempDir(), "token", v.RootToken)
		c, err := vault.New(context.Background(), vault.Options{Address: v.Addr, Logger: log, Auth: vault.Auth{TokenFile: tokFile}})
		if err != nil {
			t.Fatal(err)
		}
		for ref, want := range map[string]string{
			"kv1/store#access_key":            "s3cr3t-v1-ak",
			"secret/data/lifeboat#access_key": "s3cr3t-v2-ak",
			"secret/lifeboat#access_key":      "s3cr3t-v2-ak",
			"secret/lifeboat#n":               "3",
		} {
			got, err := c.ResolveSecretRef(context.Background(), ref)
			if err != nil || got != want {
				t.Errorf("%s: got an unexpected value (err %v)", ref, err)
			}
		}
		_, err = c.ResolveSecretRef(context.Background(), "secret/lifeboat#nope")
		if err == nil || !strings.Contains(err.Error(), `secret/data/lifeboat has no field "nope"`) {
			t.Errorf("missing field: %v", err)
		}
		_, err = c.ResolveSecretRef(context.Background(), "secret/absent#x")
		if !errors.Is(err, vault.ErrNotFound) || !strings.Contains(err.Error(), "secret/data/absent") {
			t.Errorf("missing secret: %v", err)
		}
		if _, err := c.ResolveSecretRef(context.Background(), "no-field"); err == nil {
			t.Error("reference without #FIELD accepted")
		}
	})

	t.Run("token revoked at exit", func(t *testing.T) {
		roleFile, secretFile, _ := approleFiles(t, rc, "app", "1h", "2h", false)
		c, err := vault.New(context.Background(), vault.Options{Address: v.Addr, Logger: log, RevokeOnExit: true,
			Auth: vault.Auth{Method: vault.MethodAppRole, RoleIDFile: roleFile, SecretIDFile: secretFile}})
		if err != nil {
			t.Fatal(err)
		}
		tok := c.API().Token()
		secrets = append(secrets, tok)
		if _, err := rc.Auth().Token().Lookup(tok); err != nil {
			t.Fatalf("token not valid before exit: %v", err)
		}
		if err := c.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		if _, err := rc.Auth().Token().Lookup(tok); err == nil {
			t.Fatal("token still valid after Close with RevokeOnExit")
		}
	})

	t.Run("token kept at exit when revoke_on_exit is false", func(t *testing.T) {
		roleFile, secretFile, _ := approleFiles(t, rc, "app", "1h", "2h", false)
		c, err := vault.New(context.Background(), vault.Options{Address: v.Addr, Logger: log, RevokeOnExit: false,
			Auth: vault.Auth{Method: vault.MethodAppRole, RoleIDFile: roleFile, SecretIDFile: secretFile}})
		if err != nil {
			t.Fatal(err)
		}
		tok := c.API().Token()
		secrets = append(secrets, tok)
		if err := c.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		if _, err := rc.Auth().Token().Lookup(tok); err != nil {
			t.Fatalf("token revoked although RevokeOnExit is false: %v", err)
		}
	})

	t.Run("no token or secret value in logs", func(t *testing.T) {
		out := logs.String()
		if !strings.Contains(out, "logged in to vault") {
			t.Fatalf("logs lack the login lines; the check would prove nothing:\n%s", out)
		}
		for _, s := range secrets {
			if strings.Contains(out, s) {
				t.Errorf("logs hold a secret value (%d chars)", len(s))
			}
		}
	})
}

// signJWT makes an ES256 JWT for the jwt auth method, signed by key.
func signJWT(t *testing.T, key *ecdsa.PrivateKey, claims map[string]any) string {
	t.Helper()
	enc := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return base64.RawURLEncoding.EncodeToString(b)
	}
	signing := enc(map[string]string{"alg": "ES256", "typ": "JWT"}) + "." + enc(claims)
	sum := sha256.Sum256([]byte(signing))
	r, s, err := ecdsa.Sign(rand.Reader, key, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return signing + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// TestVaultJWTLogin: the jwt method logs in with a role and a JWT read
// from a file (re-read at every login), against Vault's real jwt auth
// backend configured with the signer's public key.
func TestVaultJWTLogin(t *testing.T) {
	v := testrig.StartVault(t)
	rc := root(t, v)
	if err := rc.Sys().EnableAuthWithOptions("jwt", &vaultapi.EnableAuthOptions{Type: "jwt"}); err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pubPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	write(t, rc, "auth/jwt/config", map[string]any{"jwt_validation_pubkeys": []string{pubPEM}})
	write(t, rc, "auth/jwt/role/app", map[string]any{"role_type": "jwt", "user_claim": "sub",
		"bound_audiences": "lifeboat", "token_policies": "default", "token_ttl": "1h"})
	now := time.Now()
	jwt := signJWT(t, key, map[string]any{"sub": "app-1", "aud": "lifeboat", "iat": now.Unix(), "nbf": now.Unix() - 5, "exp": now.Add(time.Hour).Unix()})
	jwtFile := writeFile(t, t.TempDir(), "jwt", jwt+"\n")
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))

	c, err := vault.New(context.Background(), vault.Options{Address: v.Addr, Logger: log, RevokeOnExit: true,
		Auth: vault.Auth{Method: vault.MethodJWT, Role: "app", JWTFile: jwtFile}})
	if err != nil {
		t.Fatal(err)
	}
	tok := c.API().Token()
	look, err := rc.Auth().Token().Lookup(tok)
	if err != nil {
		t.Fatalf("jwt token not valid: %v", err)
	}
	if p, _ := look.Data["path"].(string); p != "auth/jwt/login" {
		t.Errorf("token came from %q, want auth/jwt/login", p)
	}
	if st := c.Status(); !st.Healthy || st.Method != "jwt" || st.Logins != 1 {
		t.Errorf("status: %+v", st)
	}
	if err := c.Close(context.Background()); err != nil {
		t.Fatal(err)
	}

	// A JWT for another audience is refused; the error names role and
	// mount, never the JWT.
	bad := signJWT(t, key, map[string]any{"sub": "app-1", "aud": "other", "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()})
	os.WriteFile(jwtFile, []byte(bad), 0o600)
	_, err = vault.New(context.Background(), vault.Options{Address: v.Addr, Logger: log,
		Auth: vault.Auth{Method: vault.MethodJWT, Role: "app", JWTFile: jwtFile}})
	if err == nil || !strings.Contains(err.Error(), "jwt login (role app, mount jwt)") || strings.Contains(err.Error(), bad) {
		t.Errorf("wrong audience: %v", err)
	}
	if errors.Is(err, vault.ErrConfig) {
		t.Errorf("a refused login is not a config error: %v", err)
	}
	for _, s := range []string{jwt, bad, tok} {
		if strings.Contains(logs.String(), s) {
			t.Errorf("logs hold a JWT or token (%d chars)", len(s))
		}
	}
}

// TestVaultConfigErrors: option mistakes fail at once with ErrConfig, so
// the supervisor exits 2 instead of retrying a login that cannot work.
func TestVaultConfigErrors(t *testing.T) {
	t.Setenv("VAULT_TOKEN", "")
	for _, a := range []vault.Auth{
		{Method: "ldap"},
		{Method: vault.MethodJWT, Role: "app"},
		{Method: vault.MethodKubernetes},
		{Method: vault.MethodAppRole, RoleIDFile: "/r"},
		{Method: vault.MethodToken},
	} {
		_, err := vault.New(context.Background(), vault.Options{Address: "http://127.0.0.1:1", Auth: a})
		if !errors.Is(err, vault.ErrConfig) {
			t.Errorf("%+v: got %v, want an ErrConfig error", a, err)
		}
	}
	// Vault not reachable is not a config error: worth retrying.
	tok := writeFile(t, t.TempDir(), "token", "some-token")
	_, err := vault.New(context.Background(), vault.Options{Address: "http://127.0.0.1:1", Auth: vault.Auth{TokenFile: tok}})
	if err == nil || errors.Is(err, vault.ErrConfig) {
		t.Errorf("unreachable Vault: %v", err)
	}
}

// startVaultTLS starts `vault server -dev -dev-tls`, which serves HTTPS
// with a CA it generates into the returned directory (vault-ca.pem).
func startVaultTLS(t *testing.T, rootToken string) (addr, certDir string) {
	t.Helper()
	bin := testrig.Binary(t, "vault")
	certDir = t.TempDir()
	listen := fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(t))
	cmd := exec.Command(bin, "server", "-dev", "-dev-tls", "-dev-tls-cert-dir="+certDir,
		"-dev-root-token-id="+rootToken, "-dev-listen-address="+listen, "-log-level=warn")
	cmd.Dir = certDir
	cmd.Env = append(os.Environ(), "HOME="+certDir)
	logf, err := os.Create(filepath.Join(certDir, "vault.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(exited) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-exited })
	addr = "https://" + listen
	eventually(t, 30*time.Second, "the TLS dev server", func() bool {
		select {
		case <-exited:
			b, _ := os.ReadFile(filepath.Join(certDir, "vault.log"))
			t.Fatalf("vault -dev-tls exited:\n%s", b)
		default:
		}
		cfg := vaultapi.DefaultConfig()
		cfg.Address = addr
		if cfg.ConfigureTLS(&vaultapi.TLSConfig{CACert: filepath.Join(certDir, "vault-ca.pem")}) != nil {
			return false
		}
		c, err := vaultapi.NewClient(cfg)
		if err != nil {
			return false
		}
		h, err := c.Sys().Health()
		return err == nil && h.Initialized && !h.Sealed
	})
	return addr, certDir
}

// TestVaultTLS: a Vault serving HTTPS is reached with tls.ca_file; without
// it the server's certificate is refused; a CA file that does not exist is
// a config error.
func TestVaultTLS(t *testing.T) {
	t.Setenv("VAULT_CACERT", "")
	t.Setenv("VAULT_SKIP_VERIFY", "")
	const rootToken = "tls-root-token"
	addr, certDir := startVaultTLS(t, rootToken)
	tokFile := writeFile(t, t.TempDir(), "token", rootToken)
	ca := filepath.Join(certDir, "vault-ca.pem")

	c, err := vault.New(context.Background(), vault.Options{Address: addr, TLS: vault.TLS{CAFile: ca}, Auth: vault.Auth{TokenFile: tokFile}})
	if err != nil {
		t.Fatalf("with ca_file: %v", err)
	}
	if _, err := c.Read(context.Background(), "secret/absent"); !errors.Is(err, vault.ErrNotFound) {
		t.Errorf("read over TLS: %v", err)
	}
	_, err = vault.New(context.Background(), vault.Options{Address: addr, Auth: vault.Auth{TokenFile: tokFile}})
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("without ca_file: %v, want a certificate error", err)
	}
	_, err = vault.New(context.Background(), vault.Options{Address: addr, TLS: vault.TLS{CAFile: "/nonexistent/ca.pem"}, Auth: vault.Auth{TokenFile: tokFile}})
	if !errors.Is(err, vault.ErrConfig) {
		t.Errorf("missing ca_file: %v, want ErrConfig", err)
	}
}

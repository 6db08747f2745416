package consul_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/lifeboat/lifeboat/internal/testrig"
	"github.com/lifeboat/lifeboat/supervisor/consul"
)

func TestNewClientOptionsAndEnv(t *testing.T) {
	t.Setenv("CONSUL_HTTP_ADDR", "127.0.0.9:1234")
	t.Setenv("CONSUL_HTTP_TOKEN", "")
	tok := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tok, []byte("tok-from-file\n"), 0o600)
	for _, tc := range []struct {
		opts              consul.Options
		wantAddr, wantTok string
	}{
		{consul.Options{}, "127.0.0.9:1234", ""},
		{consul.Options{Address: "https://127.0.0.10:8501/", TokenFile: tok}, "127.0.0.10:8501", "tok-from-file"},
		{consul.Options{Address: "127.0.0.11:8500", Token: "t"}, "127.0.0.11:8500", "t"},
	} {
		c, err := consul.NewClient(tc.opts)
		if err != nil {
			t.Fatal(err)
		}
		// The client's config is not exported; the request URL shows the address.
		_, err = c.Agent().Self()
		if err == nil || !strings.Contains(err.Error(), tc.wantAddr) {
			t.Errorf("opts %+v: request did not go to %s: %v", tc.opts, tc.wantAddr, err)
		}
	}
	if _, err := consul.NewClient(consul.Options{TokenFile: "/nonexistent/token"}); err == nil || !strings.Contains(err.Error(), "token_file") {
		t.Errorf("missing token file: %v", err)
	}
}

// TestWatchBlocksAndRecovers: values arrive through blocking queries; a
// stopped agent is reported through onError; the watch recovers when an
// agent is back on the same address.
func TestWatchBlocksAndRecovers(t *testing.T) {
	srv := testrig.StartConsul(t)
	c, err := consul.NewClient(consul.Options{Address: srv.HTTPAddr})
	if err != nil {
		t.Fatal(err)
	}
	put := func(v string) {
		if _, err := c.KV().Put(&api.KVPair{Key: "w/k", Value: []byte(v)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	put("1")
	var mu sync.Mutex
	var values []string
	var errs int
	queries, deliveredAt := 0, 0 // deliveredAt: the query count when the last value arrived
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		consul.Watch(ctx, func(q *api.QueryOptions) (any, *api.QueryMeta, error) {
			mu.Lock()
			queries++
			mu.Unlock()
			p, meta, err := c.KV().Get("w/k", q)
			if p == nil {
				return "", meta, err
			}
			return string(p.Value), meta, err
		}, consul.WatchOptions{RetryInitial: 20 * time.Millisecond, RetryMax: 100 * time.Millisecond},
			func(v any) { mu.Lock(); values = append(values, v.(string)); deliveredAt = queries; mu.Unlock() },
			func(error) { mu.Lock(); errs++; mu.Unlock() })
	}()
	defer func() { cancel(); <-done }()
	last := func() (string, int, int) {
		mu.Lock()
		defer mu.Unlock()
		if len(values) == 0 {
			return "", errs, queries
		}
		return values[len(values)-1], errs, queries
	}
	wait := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(10 * time.Millisecond) // poll tick
		}
	}
	wait("first value", func() bool { v, _, _ := last(); return v == "1" })
	put("2")
	t0 := time.Now()
	wait("second value", func() bool { v, _, _ := last(); return v == "2" })
	if d := time.Since(t0); d > time.Second {
		t.Errorf("change seen after %s", d)
	}
	// Blocking, not polling: a quiet second costs no queries. The watch
	// sends its next query after delivering "2"; count from there.
	wait("the next query", func() bool { mu.Lock(); defer mu.Unlock(); return queries > deliveredAt })
	_, _, q0 := last()
	time.Sleep(time.Second) // measuring idleness, not waiting for a condition
	if _, _, q1 := last(); q1 != q0 {
		t.Errorf("%d queries in a quiet second; a blocking query makes none", q1-q0)
	}
	srv.Stop()
	wait("an error while the agent is down", func() bool { _, e, _ := last(); return e > 0 })
	srv.Start(t) // a fresh dev agent: empty KV
	put("3")
	wait("the value from the restarted agent", func() bool { v, _, _ := last(); return v == "3" })
}

// tlsFiles writes a CA, a server certificate for 127.0.0.1/localhost and a
// client certificate, all signed by the CA, into dir.
func tlsFiles(t *testing.T, dir string) (ca, serverCert, serverKey, clientCert, clientKey string) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "lifeboat test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	write := func(name string, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	leaf := func(serial int64, cn string, usage x509.ExtKeyUsage) (string, string) {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			DNSNames: []string{"localhost", "server.dc1.consul"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kd, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return write(cn+".pem", "CERTIFICATE", der), write(cn+"-key.pem", "EC PRIVATE KEY", kd)
	}
	ca = write("ca.pem", "CERTIFICATE", caDER)
	serverCert, serverKey = leaf(2, "server", x509.ExtKeyUsageServerAuth)
	clientCert, clientKey = leaf(3, "client", x509.ExtKeyUsageClientAuth)
	return
}

// runConsulAgent starts `consul agent -dev` with the extra HCL config cfg
// (which must set the ports) and waits until c, a client for it, sees a
// leader.
func runConsulAgent(t *testing.T, cfg string, c func() (*api.Client, error)) {
	t.Helper()
	bin := testrig.Binary(t, "consul")
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "extra.hcl")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "agent", "-dev", "-node", "test-agent", "-client", "127.0.0.1", "-bind", "127.0.0.1",
		"-config-file", cfgFile, "-log-level", "warn")
	logf, err := os.Create(filepath.Join(dir, "consul.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Dir, cmd.Stdout, cmd.Stderr = dir, logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(exited) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-exited })
	client, err := c()
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-exited:
			b, _ := os.ReadFile(filepath.Join(dir, "consul.log"))
			t.Fatalf("consul agent exited:\n%s", b)
		default:
		}
		l, err := client.Status().Leader()
		if err == nil && l != "" {
			return
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(dir, "consul.log"))
			t.Fatalf("consul agent not ready: %v\n%s", err, b)
		}
		time.Sleep(50 * time.Millisecond) // poll tick
	}
}

// startConsulTLS starts an agent serving only HTTPS, requiring client
// certificates, and returns its "127.0.0.1:PORT".
func startConsulTLS(t *testing.T, ca, cert, key, clientCert, clientKey string) string {
	t.Helper()
	https := testrig.FreePort(t)
	cfg := fmt.Sprintf(`ports {
  http = -1
  https = %d
  grpc = -1
  grpc_tls = -1
  dns = -1
  server = %d
  serf_lan = %d
  serf_wan = %d
}
tls {
  defaults {
    ca_file = %q
    cert_file = %q
    key_file = %q
  }
  https {
    verify_incoming = true
  }
}
`, https, testrig.FreePort(t), testrig.FreePort(t), testrig.FreePort(t), ca, cert, key)
	addr := fmt.Sprintf("127.0.0.1:%d", https)
	runConsulAgent(t, cfg, func() (*api.Client, error) {
		return consul.NewClient(consul.Options{Address: addr, TLS: consul.TLS{CAFile: ca, CertFile: clientCert, KeyFile: clientKey}})
	})
	return addr
}

// TestTLSAndDatacenter: the consul block's TLS settings (CA, client
// certificate) reach an agent that serves only HTTPS and requires client
// certificates; the same from CONSUL_* variables; datacenter is sent.
func TestTLSAndDatacenter(t *testing.T) {
	for _, v := range []string{"CONSUL_HTTP_ADDR", "CONSUL_HTTP_SSL", "CONSUL_CACERT", "CONSUL_CLIENT_CERT", "CONSUL_CLIENT_KEY", "CONSUL_HTTP_TOKEN", "CONSUL_TLS_SERVER_NAME"} {
		t.Setenv(v, "")
	}
	dir := t.TempDir()
	ca, srvCert, srvKey, cliCert, cliKey := tlsFiles(t, dir)
	addr := startConsulTLS(t, ca, srvCert, srvKey, cliCert, cliKey)

	c, err := consul.NewClient(consul.Options{Address: addr, Datacenter: "dc1",
		TLS: consul.TLS{CAFile: ca, CertFile: cliCert, KeyFile: cliKey, ServerName: "localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.KV().Put(&api.KVPair{Key: "tls/k", Value: []byte("v")}, nil); err != nil {
		t.Fatalf("put over TLS with a client certificate: %v", err)
	}
	if p, _, err := c.KV().Get("tls/k", nil); err != nil || p == nil || string(p.Value) != "v" {
		t.Fatalf("get over TLS: %v %v", p, err)
	}

	noCert, err := consul.NewClient(consul.Options{Address: addr, TLS: consul.TLS{CAFile: ca}})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := noCert.KV().Get("tls/k", nil); err == nil {
		t.Error("an agent requiring client certificates answered a client without one")
	}
	noCA, err := consul.NewClient(consul.Options{Address: "https://" + addr, TLS: consul.TLS{CertFile: cliCert, KeyFile: cliKey}})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := noCA.KV().Get("tls/k", nil); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("server certificate from an unknown CA: %v", err)
	}

	otherDC, err := consul.NewClient(consul.Options{Address: addr, Datacenter: "dc9",
		TLS: consul.TLS{CAFile: ca, CertFile: cliCert, KeyFile: cliKey}})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := otherDC.KV().Get("tls/k", nil); err == nil || !strings.Contains(err.Error(), "datacenter") {
		t.Errorf("datacenter dc9: %v, want Consul's no-path-to-datacenter error", err)
	}

	// The conventional variables alone do the same.
	t.Setenv("CONSUL_HTTP_ADDR", addr)
	t.Setenv("CONSUL_HTTP_SSL", "true")
	t.Setenv("CONSUL_CACERT", ca)
	t.Setenv("CONSUL_CLIENT_CERT", cliCert)
	t.Setenv("CONSUL_CLIENT_KEY", cliKey)
	fromEnv, err := consul.NewClient(consul.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if p, _, err := fromEnv.KV().Get("tls/k", nil); err != nil || p == nil {
		t.Errorf("client from CONSUL_* variables: %v", err)
	}
}

// TestTokenAgainstACLs: an agent with ACLs on and default deny answers
// with the token from token_file (or token) and refuses without one.
func TestTokenAgainstACLs(t *testing.T) {
	t.Setenv("CONSUL_HTTP_TOKEN", "")
	t.Setenv("CONSUL_HTTP_TOKEN_FILE", "")
	const mgmt = "3f0c0d8e-6a57-4c43-9a1e-acl-test-token"
	port := testrig.FreePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	cfg := fmt.Sprintf(`ports {
  http = %d
  grpc = -1
  grpc_tls = -1
  dns = -1
  server = %d
  serf_lan = %d
  serf_wan = %d
}
acl {
  enabled = true
  default_policy = "deny"
  tokens {
    initial_management = %q
  }
}
`, port, testrig.FreePort(t), testrig.FreePort(t), testrig.FreePort(t), mgmt)
	runConsulAgent(t, cfg, func() (*api.Client, error) { return consul.NewClient(consul.Options{Address: addr, Token: mgmt}) })

	tokFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokFile, []byte(mgmt+"\n"), 0o600)
	withFile, err := consul.NewClient(consul.Options{Address: addr, TokenFile: tokFile})
	if err != nil {
		t.Fatal(err)
	}
	// Right after the first leader election the ACL system may still be
	// bootstrapping its management token: wait for the first write.
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := withFile.KV().Put(&api.KVPair{Key: "acl/k", Value: []byte("v")}, nil)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("put with the token from token_file: %v", err)
		}
		time.Sleep(50 * time.Millisecond) // poll tick
	}
	anon, err := consul.NewClient(consul.Options{Address: addr})
	if err != nil {
		t.Fatal(err)
	}
	if p, _, err := anon.KV().Get("acl/k", nil); err == nil && p != nil {
		t.Error("an anonymous client read a key under default-deny ACLs")
	}
	if p, _, err := withFile.KV().Get("acl/k", nil); err != nil || p == nil {
		t.Errorf("get with the token: %v", err)
	}
}

func TestIsUnknownCheck(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("update: %w", api.StatusError{Code: 404, Body: `Unknown check ID "service:web". Ensure that the check ID is passed, not the check name.`}), true},
		{api.StatusError{Code: 500, Body: `CheckID "service:web" does not have associated TTL`}, true},
		{api.StatusError{Code: 404, Body: ""}, true},
		{api.StatusError{Code: 500, Body: "rpc error"}, false},
		{fmt.Errorf("unknown check"), false}, // not the agent's answer
		{nil, false},
	} {
		if got := consul.IsUnknownCheck(tc.err); got != tc.want {
			t.Errorf("IsUnknownCheck(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

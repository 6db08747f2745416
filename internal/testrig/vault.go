package testrig

import (
	"fmt"
	"testing"
)

// Vault is a `vault server -dev` on loopback: in-memory storage, unsealed,
// KV v2 mounted at secret/, root token RootToken. Its state is lost when it
// stops; use Freeze/Thaw to make it unreachable without losing state.
type Vault struct {
	*Server
	Addr      string // "http://127.0.0.1:PORT", for VAULT_ADDR
	RootToken string
}

// StartVault starts a dev server and waits until it reports healthy.
func StartVault(t testing.TB) *Vault {
	t.Helper()
	bin := Binary(t, "vault")
	port := FreePort(t)
	token := fmt.Sprintf("testrig-root-%d", port)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	v := &Vault{Addr: "http://" + addr, RootToken: token}
	v.Server = newServer(t, "vault", bin,
		[]string{"server", "-dev", "-dev-root-token-id=" + token, "-dev-listen-address=" + addr, "-log-level=warn"}, nil)
	// The dev server writes the root token to ~/.vault-token; keep it in the temp dir.
	v.Server.env = []string{"HOME=" + v.Server.dir, "VAULT_ADDR=" + v.Addr}
	v.startAndWait(t, expect200(v.Addr+"/v1/sys/health"))
	t.Cleanup(v.Stop)
	return v
}

// Env is the environment a Vault client needs to reach this server as root.
func (v *Vault) Env() []string {
	return []string{"VAULT_ADDR=" + v.Addr, "VAULT_TOKEN=" + v.RootToken}
}

package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	"github.com/lifeboat/lifeboat/internal/testrig"
)

// TestSnapshotCommandsTakeTheKeyFromVault: `lifeboat backup` with a
// store.vault block logs in to a real Vault, encrypts with the key stored
// there, and never prints it; the snapshot opens with that key and not
// without it; an unreadable reference fails naming the path.
func TestSnapshotCommandsTakeTheKeyFromVault(t *testing.T) {
	v := testrig.StartVault(t)
	vc, err := vaultapi.NewClient(&vaultapi.Config{Address: v.Addr})
	if err != nil {
		t.Fatal(err)
	}
	vc.SetToken(v.RootToken)
	const key = "encryption-key-kept-in-vault"
	if _, err := vc.KVv2("secret").Put(context.Background(), "lifeboat", map[string]any{"ek": key}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	os.MkdirAll(data, 0o755)
	os.WriteFile(filepath.Join(data, "f"), []byte("hello from vault test"), 0o644)
	store := "file://" + filepath.Join(dir, "store")
	cfgFor := func(ref string) string {
		p := filepath.Join(dir, "lifeboat.hcl")
		os.WriteFile(p, []byte(fmt.Sprintf(`
store {
  url = %q
  vault { encryption_key = %q }
}
vault { address = %q }
`, store, ref, v.Addr)), 0o600)
		return p
	}
	bin := testrig.BuildLifeboat(t)
	run := func(env []string, args ...string) (string, int) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok {
			return string(out), ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), 0
	}
	token := []string{"VAULT_TOKEN=" + v.RootToken}

	out, code := run(token, "backup", "--config", cfgFor("secret/data/lifeboat#ek"), "--data", data)
	if code != 0 {
		t.Fatalf("backup with the key from Vault: exit %d\n%s", code, out)
	}
	if strings.Contains(out, key) {
		t.Errorf("backup output shows the encryption key")
	}
	if out, code := run([]string{"LIFEBOAT_ENCRYPTION_KEY=" + key}, "snapshots", "--store", store); code != 0 || strings.Count(out, "\n") < 2 {
		t.Errorf("snapshots with the Vault key: exit %d\n%s", code, out)
	}
	if out, code := run(nil, "snapshots", "--store", store); code == 0 || !strings.Contains(out, "encrypted") {
		t.Errorf("the snapshot opened without a key (not encrypted with the Vault key?): exit %d\n%s", code, out)
	}
	out, code = run(token, "snapshots", "--config", cfgFor("secret/data/missing#ek"))
	if code != 1 || !strings.Contains(out, "secret/data/missing") {
		t.Errorf("unreadable Vault reference: exit %d\n%s", code, out)
	}
}

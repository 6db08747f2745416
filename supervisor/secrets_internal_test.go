package supervisor

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/lifeboat/lifeboat/supervisor/config"
)

// TestLeaderSourceForTemplates: the getter handed to setLeaderSource feeds
// the leader template function from the first render on, and
// leaderChanged renders again while the app runs. The election wiring
// relies on exactly these two calls.
func TestLeaderSourceForTemplates(t *testing.T) {
	dir := t.TempDir()
	dest := filepath.Join(dir, "leader.conf")
	cfg, err := config.Parse("leader.hcl", []byte(fmt.Sprintf(`
template "leader" {
  contents    = "primary={{ leader }}"
  destination = %q
}
`, dest)))
	if err != nil {
		t.Fatal(err)
	}
	s := New(Options{Config: cfg, Logger: slog.New(slog.DiscardHandler)})
	var mu sync.Mutex
	leader := "10.0.0.1:3306"
	s.setLeaderSource(func() string { mu.Lock(); defer mu.Unlock(); return leader })
	ctx := context.Background()
	if err := s.connectSecrets(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.renderSecrets(ctx); err != nil {
		t.Fatal(err)
	}
	defer s.closeSecrets()
	if b, _ := os.ReadFile(dest); string(b) != "primary=10.0.0.1:3306" {
		t.Fatalf("first render: %q", b)
	}
	s.serveSecrets()
	mu.Lock()
	leader = "10.0.0.2:3306"
	mu.Unlock()
	s.leaderChanged()
	deadline := time.Now().Add(3 * time.Second)
	for {
		b, _ := os.ReadFile(dest)
		if string(b) == "primary=10.0.0.2:3306" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not re-rendered after leaderChanged: %q", b)
		}
		time.Sleep(10 * time.Millisecond) // poll tick
	}
}

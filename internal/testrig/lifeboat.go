package testrig

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

var build struct {
	once sync.Once
	path string
	err  error
}

// ModuleRoot is the directory holding lifeboat's go.mod.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("go.mod not found above the working directory")
		}
		dir = parent
	}
}

// BuildLifeboat builds ./cmd/lifeboat once per test binary and returns the
// path of the executable (world-executable, so tests may run it as another user).
func BuildLifeboat(t testing.TB) string {
	t.Helper()
	build.once.Do(func() {
		root, err := ModuleRoot()
		if err != nil {
			build.err = err
			return
		}
		dir, err := os.MkdirTemp("", "lifeboat-testbin-")
		if err != nil {
			build.err = err
			return
		}
		os.Chmod(dir, 0o755)
		out := filepath.Join(dir, "lifeboat")
		// Built the way a release is (ReleaseBuildFlags): static, so the
		// tests see the pure-Go user lookup and the size an image carries.
		cmd := exec.Command("go", append(append([]string{"build"}, ReleaseBuildFlags...), "-o", out, "./cmd/lifeboat")...)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			build.err = fmt.Errorf("go build ./cmd/lifeboat: %v\n%s", err, b)
			return
		}
		build.path = out
	})
	if build.err != nil {
		t.Fatalf("testrig: %v", build.err)
	}
	return build.path
}

// ReleaseBuildFlags are the go build flags of a release binary (with
// CGO_ENABLED=0): no symbol tables or file paths in a binary that sits in
// every image.
var ReleaseBuildFlags = []string{"-trimpath", "-ldflags=-s -w"}

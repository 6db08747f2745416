package config

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse feeds arbitrary bytes to the config parser in both syntaxes:
// it must return a config or an error, never panic or hang.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/valid-*")
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err == nil {
			f.Add(b, filepath.Ext(p) == ".json")
		}
	}
	f.Add([]byte("app {\n  stop_timeout = \"x\"\n}\n"), false)
	f.Add([]byte(`{"app": {"command": ["x"]}}`), true)
	f.Fuzz(func(t *testing.T, src []byte, json bool) {
		name := "fuzz.hcl"
		if json {
			name = "fuzz.json"
		}
		c, err := Parse(name, src)
		if err == nil && c.App == nil {
			t.Fatal("valid config without defaults applied")
		}
	})
}

package logging

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
)

func TestNewFormats(t *testing.T) {
	for _, tc := range []struct {
		format string
		json   bool
	}{
		{"json", true},
		{"text", false},
		{"auto", true}, // a buffer is not a terminal
		{"", true},
	} {
		var buf bytes.Buffer
		log, err := New(&buf, tc.format, "info")
		if err != nil {
			t.Fatalf("format %q: %v", tc.format, err)
		}
		log.Info("hello", "k", "v")
		out := buf.String()
		isJSON := json.Valid(bytes.TrimSpace(buf.Bytes()))
		if isJSON != tc.json {
			t.Errorf("format %q: json=%v, want %v: %s", tc.format, isJSON, tc.json, out)
		}
		if !strings.Contains(out, "hello") {
			t.Errorf("format %q: message missing: %s", tc.format, out)
		}
	}
}

func TestNewAutoOnNonTerminalFile(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "log")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	log, err := New(f, "auto", "info")
	if err != nil {
		t.Fatal(err)
	}
	log.Info("x")
	b, _ := os.ReadFile(f.Name())
	if !json.Valid(bytes.TrimSpace(b)) {
		t.Fatalf("auto on a regular file should be JSON, got %s", b)
	}
}

func TestNewLevels(t *testing.T) {
	var buf bytes.Buffer
	log, err := New(&buf, "json", "warn")
	if err != nil {
		t.Fatal(err)
	}
	log.Info("quiet")
	log.Warn("loud")
	if strings.Contains(buf.String(), "quiet") || !strings.Contains(buf.String(), "loud") {
		t.Fatalf("level warn: %s", buf.String())
	}
	for _, lv := range []string{"debug", "info", "warn", "error", "DEBUG"} {
		if _, err := New(&buf, "json", lv); err != nil {
			t.Errorf("level %q: %v", lv, err)
		}
	}
}

func TestNewRejectsBadValues(t *testing.T) {
	if _, err := New(os.Stderr, "xml", "info"); err == nil || !strings.Contains(err.Error(), "want auto, text or json") {
		t.Errorf("bad format: %v", err)
	}
	if _, err := New(os.Stderr, "json", "loud"); err == nil || !strings.Contains(err.Error(), "want debug, info, warn or error") {
		t.Errorf("bad level: %v", err)
	}
}

func TestPhase(t *testing.T) {
	var buf bytes.Buffer
	log, _ := New(&buf, "json", "info")
	ctx := context.Background()

	done := Phase(ctx, log, "restore", "store", "file:///x")
	d := done(nil)
	if d <= 0 {
		t.Errorf("duration %v", d)
	}
	done(errors.New("ignored: second call"))

	fail := Phase(ctx, log, "render")
	fail(errors.New("template db.conf: key missing"))

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("want 2 lines (one per phase end), got %d:\n%s", len(lines), buf.String())
	}
	var ok, bad map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &ok); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(lines[1]), &bad); err != nil {
		t.Fatal(err)
	}
	if ok["msg"] != "phase done" || ok["phase"] != "restore" || ok["level"] != "INFO" || ok["store"] != "file:///x" {
		t.Errorf("done line: %v", ok)
	}
	if _, has := ok["duration"]; !has {
		t.Errorf("done line has no duration: %v", ok)
	}
	if bad["msg"] != "phase failed" || bad["level"] != "ERROR" || bad["error"] != "template db.conf: key missing" {
		t.Errorf("failed line: %v", bad)
	}
}

func TestSecretNeverPrints(t *testing.T) {
	s := Secret("s3cr3t-token")
	type holder struct{ Token Secret }
	h := holder{s}
	var buf bytes.Buffer
	for _, format := range []string{"json", "text"} {
		log, _ := New(&buf, format, "info")
		log.Info("x", "token", s, "holder", h, Redact("password", "hunter2"))
	}
	js, _ := json.Marshal(h)
	outputs := []string{
		buf.String(), fmt.Sprint(s), fmt.Sprintf("%v %+v %#v %s", h, h, h, s), string(js),
	}
	for _, out := range outputs {
		if strings.Contains(out, "s3cr3t") || strings.Contains(out, "hunter2") {
			t.Errorf("secret leaked: %s", out)
		}
	}
	if !strings.Contains(buf.String(), Redacted) {
		t.Errorf("no redaction marker: %s", buf.String())
	}
	if s.Reveal() != "s3cr3t-token" {
		t.Errorf("Reveal = %q", s.Reveal())
	}
	if Secret("").String() != "" {
		t.Error("empty secret should print empty (so 'unset' is visible)")
	}
}

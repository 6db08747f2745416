package hooks

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestParseMetadata(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want map[string]string
		err  string
	}{
		{"", map[string]string{}, ""},
		{"a=1\nb=2=3\r\n\n# c=4\nd=\n", map[string]string{"a": "1", "b": "2=3", "d": ""}, ""},
		{"a=1\na=2\n", map[string]string{"a": "2"}, ""},
		{"gtid.pos_x-y=0-1-2", map[string]string{"gtid.pos_x-y": "0-1-2"}, ""},
		{"a=1\n novalue\n", nil, "line 2"},
		{"a b=1", nil, "line 1"},
		{"=1", nil, "line 1"},
		{"ключ=1", nil, "line 1"},
	} {
		got, err := ParseMetadata([]byte(tc.in))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: error %v, want %s", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("%q: got %v %v, want %v", tc.in, got, err, tc.want)
		}
	}
}

func TestMetaEnvName(t *testing.T) {
	for in, want := range map[string]string{
		"gtid":        "LIFEBOAT_META_GTID",
		"gtid.pos":    "LIFEBOAT_META_GTID_POS",
		"binlog-file": "LIFEBOAT_META_BINLOG_FILE",
		"A_b9":        "LIFEBOAT_META_A_B9",
	} {
		if got := MetaEnvName(in); got != want {
			t.Errorf("MetaEnvName(%q) = %q, want %q", in, got, want)
		}
	}
	if VarName("phase") != VarPhase || VarName(VarLeader) != VarLeader {
		t.Error("VarName")
	}
}

func TestFormatMetadataRejects(t *testing.T) {
	if _, err := FormatMetadata(map[string]string{"a b": "1"}); err == nil {
		t.Error("bad key accepted")
	}
	if _, err := FormatMetadata(map[string]string{"a": "1\n2"}); err == nil {
		t.Error("line break accepted")
	}
}

func FuzzParseMetadata(f *testing.F) {
	f.Add([]byte("a=1\nb=2=3\n# x\n"))
	f.Add([]byte("bad line"))
	f.Fuzz(func(t *testing.T, data []byte) {
		md, err := ParseMetadata(data)
		if err != nil {
			return
		}
		out, err := FormatMetadata(md)
		if err != nil {
			t.Fatalf("parsed %v but cannot format it: %v", md, err)
		}
		again, err := ParseMetadata(out)
		if err != nil || fmt.Sprint(again) != fmt.Sprint(md) {
			t.Fatalf("round trip: %v -> %q -> %v %v", md, out, again, err)
		}
	})
}

// TestReadMetadataRefusesLinksAndFIFOs: the hook's user can replace the
// metadata file in the shared temp dir; lifeboat (root) must not follow a
// symlink to a file the hook cannot read, nor block on a FIFO.
func TestReadMetadataRefusesLinksAndFIFOs(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	os.WriteFile(secret, []byte("password=hunter2\n"), 0o600)
	link := filepath.Join(dir, "link")
	if err := os.Symlink(secret, link); err != nil {
		t.Fatal(err)
	}
	if md, err := readMetadata(link); err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("symlink followed: %v %v", md, err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := readMetadata(fifo); done <- err }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a FIFO was read as metadata")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("reading a FIFO blocked")
	}
	// A hard link to a file of root's: the hook's user may make one where
	// protected_hardlinks is off.
	hard := filepath.Join(dir, "hard")
	os.WriteFile(secret, []byte("password=hunter2\nnot metadata hunter2\n"), 0o600)
	if err := os.Link(secret, hard); err != nil {
		t.Fatal(err)
	}
	if md, err := readMetadata(hard); err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("hard link read: %v %v", md, err)
	}
	regular := filepath.Join(dir, "regular")
	os.WriteFile(regular, []byte("gtid=0-1-42\n"), 0o600)
	if md, err := readMetadata(regular); err != nil || md["gtid"] != "0-1-42" {
		t.Fatalf("regular file: %v %v", md, err)
	}
}

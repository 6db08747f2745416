package hooks

import (
	"fmt"
	"strings"
	"testing"
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

package control

import (
	"bytes"
	"strings"
	"testing"
)

func TestFormatStatus(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
	}{
		{"scalars keep order and align", `{"zeta":"z","a":1,"ok":true,"off":false,"none":null,"empty":""}`,
			"zeta:   z\na:      1\nok:     yes\noff:    no\nnone:   -\nempty:  -\n"},
		{"nested sections", `{"phase":"serve","backup":{"last":"abc","next":"in 5m","hooks":{"pre":"ok"}}}`,
			"phase:  serve\nbackup:\n  last:  abc\n  next:  in 5m\n  hooks:\n    pre:  ok\n"},
		{"scalar list", `{"tags":["a","b"],"none":[]}`, "tags:  a, b\nnone:  -\n"},
		{"table with missing cells and nested values", `{"templates":[{"dest":"/a","ok":true},{"dest":"/b","err":"x","meta":{"k":"v"}}]}`,
			"templates:\n  DEST  OK   ERR  META\n  /a    yes  -    -\n  /b    -    x    k=v\n"},
		{"multi-line strings stay on one line", `{"error":"line1\nline2"}`, "error:  line1 line2\n"},
		{"large numbers are not mangled", `{"bytes":12345678901234567890}`, "bytes:  12345678901234567890\n"},
		{"top-level list", `[{"a":1}]`, "status:\n  A\n  1\n"},
		{"top-level scalar", `"starting"`, "status: starting\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := FormatStatus(&buf, []byte(tc.in)); err != nil {
				t.Fatal(err)
			}
			if buf.String() != tc.want {
				t.Errorf("got\n%q\nwant\n%q", buf.String(), tc.want)
			}
		})
	}
}

func TestFormatStatusBadJSON(t *testing.T) {
	for _, in := range []string{``, `{`, `{"a":}`, `nope`} {
		if err := FormatStatus(&bytes.Buffer{}, []byte(in)); err == nil || !strings.Contains(err.Error(), "not valid JSON") {
			t.Errorf("%q: err = %v", in, err)
		}
	}
}

// FuzzFormatStatus: whatever the supervisor sends, the CLI neither panics
// nor loops.
func FuzzFormatStatus(f *testing.F) {
	for _, s := range []string{`{"a":1}`, `{"x":[{"a":{"b":[1,2]}}]}`, `[]`, `"s"`, `{"a":[[1],[{"b":null}]]}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		FormatStatus(&bytes.Buffer{}, in)
	})
}

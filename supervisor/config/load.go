// Package config is lifeboat's configuration: the HCL schema (JSON syntax
// accepted), its defaults, environment and flag overrides, and validation
// whose errors name file:line:column and the offending key.
package config

import (
	"bytes"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/zclconf/go-cty/cty"
)

// Environment variables that override the file.
const (
	EnvConfig    = "LIFEBOAT_CONFIG"
	EnvStore     = "LIFEBOAT_STORE"
	EnvData      = "LIFEBOAT_DATA"
	EnvSocket    = "LIFEBOAT_SOCKET"
	EnvLogFormat = "LIFEBOAT_LOG_FORMAT"
	EnvLogLevel  = "LIFEBOAT_LOG_LEVEL"
)

// Overrides are values given on the command line; they win over the
// environment, which wins over the file. Empty fields override nothing.
type Overrides struct {
	Store     string
	Data      string
	Socket    string
	LogFormat string
	LogLevel  string
	Command   []string // the app command after "--"
}

// envBlock captures `env { NAME = "template" }`, whose attribute names are
// the user's.
type envBlock struct {
	Body hcl.Body `hcl:",remain"`
}

// Load reads the config file at path (or $LIFEBOAT_CONFIG when path is "";
// no file at all is a valid, all-default config), applies environment and
// flag overrides and defaults, and validates the result. A non-nil error is
// an *Errors listing every problem at once.
func Load(path string, ov Overrides) (*Config, error) {
	if path == "" {
		path = os.Getenv(EnvConfig)
	}
	cfg := &Config{}
	var src []byte
	var body hcl.Body
	if path != "" {
		var err error
		src, err = os.ReadFile(path)
		if err != nil {
			return nil, &Errors{List: []*Error{{File: path, Msg: fmt.Sprintf("cannot read config: %v", err)}}}
		}
		b, errs := decode(path, src, cfg)
		if errs != nil {
			return nil, errs
		}
		body = b
		cfg.File = path
	}
	applyEnv(cfg)
	applyOverrides(cfg, ov)
	applyDefaults(cfg)
	v := &validator{file: path, src: src, body: body}
	v.validate(cfg)
	if len(v.errs) > 0 {
		return nil, sortedErrors(v.errs)
	}
	return cfg, nil
}

// Parse decodes config source text as if read from name (".json" selects
// JSON syntax), without env or flag overrides. It is Load for tests and
// fuzzing.
func Parse(name string, src []byte) (*Config, error) {
	cfg := &Config{}
	body, errs := decode(name, src, cfg)
	if errs != nil {
		return nil, errs
	}
	cfg.File = name
	applyDefaults(cfg)
	v := &validator{file: name, src: src, body: body}
	v.validate(cfg)
	if len(v.errs) > 0 {
		return nil, sortedErrors(v.errs)
	}
	return cfg, nil
}

func decode(name string, src []byte, cfg *Config) (hcl.Body, *Errors) {
	p := hclparse.NewParser()
	var f *hcl.File
	var diags hcl.Diagnostics
	if strings.HasSuffix(name, ".json") {
		f, diags = p.ParseJSON(src, name)
	} else {
		f, diags = p.ParseHCL(src, name)
	}
	if diags.HasErrors() {
		return nil, fromDiags(name, src, diags)
	}
	diags = gohcl.DecodeBody(f.Body, nil, cfg)
	if diags.HasErrors() {
		return nil, fromDiags(name, src, diags)
	}
	if cfg.EnvBlock != nil {
		attrs, d := cfg.EnvBlock.Body.JustAttributes()
		if d.HasErrors() {
			return nil, fromDiags(name, src, d)
		}
		cfg.Env = map[string]string{}
		var errs []*Error
		for key, a := range attrs {
			val, d := a.Expr.Value(nil)
			if d.HasErrors() || val.IsNull() || !val.IsKnown() || val.Type() != cty.String {
				errs = append(errs, errorAt(name, a.Expr.Range(), "env."+key, "must be a string (a template)"))
				continue
			}
			cfg.Env[key] = val.AsString()
		}
		if errs != nil {
			return nil, &Errors{List: errs}
		}
	}
	return f.Body, nil
}

func applyEnv(c *Config) {
	ov := Overrides{
		Store:     os.Getenv(EnvStore),
		Data:      os.Getenv(EnvData),
		Socket:    os.Getenv(EnvSocket),
		LogFormat: os.Getenv(EnvLogFormat),
		LogLevel:  os.Getenv(EnvLogLevel),
	}
	applyOverrides(c, ov)
}

func applyOverrides(c *Config, ov Overrides) {
	if ov.Store != "" {
		ensure(&c.Store).URL = ov.Store
	}
	if ov.Data != "" {
		ensure(&c.Data).Path = ov.Data
	}
	if ov.Socket != "" {
		ensure(&c.Control).Socket = ov.Socket
	}
	if ov.LogFormat != "" {
		ensure(&c.Log).Format = ov.LogFormat
	}
	if ov.LogLevel != "" {
		ensure(&c.Log).Level = ov.LogLevel
	}
	if len(ov.Command) > 0 {
		ensure(&c.App).Command = ov.Command
	}
}

func ensure[T any](p **T) *T {
	if *p == nil {
		*p = new(T)
	}
	return *p
}

// Dur is the value of a duration key that Load has validated; "" is 0.
func Dur(s string) time.Duration {
	d, _ := time.ParseDuration(s)
	return d
}

// Hook returns the hook named name from hooks, or nil.
func FindHook(hooks []Hook, name string) *Hook {
	for i := range hooks {
		if hooks[i].Name == name {
			return &hooks[i]
		}
	}
	return nil
}

// Error is one problem in a config, located when possible.
type Error struct {
	File string
	Line int // 0 when unknown
	Col  int
	Key  string // dotted path, e.g. "app.stop_timeout"; "" when unknown
	Msg  string
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		if e.Line > 0 {
			fmt.Fprintf(&b, ":%d:%d", e.Line, e.Col)
		}
		b.WriteString(": ")
	}
	if e.Key != "" {
		b.WriteString(e.Key)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Errors is every problem found in one config.
type Errors struct {
	List []*Error
}

func (e *Errors) Error() string {
	lines := make([]string, len(e.List))
	for i, x := range e.List {
		lines[i] = x.Error()
	}
	return strings.Join(lines, "\n")
}

func errorAt(file string, r hcl.Range, key, msg string) *Error {
	if r.Filename != "" {
		file = r.Filename
	}
	return &Error{File: file, Line: r.Start.Line, Col: r.Start.Column, Key: key, Msg: msg}
}

// fromDiags turns HCL diagnostics into Errors, naming the key when the
// diagnostic points at one (an unknown or missing argument, a bad type).
func fromDiags(name string, src []byte, diags hcl.Diagnostics) *Errors {
	out := &Errors{}
	for _, d := range diags {
		if d.Severity != hcl.DiagError {
			continue
		}
		msg := d.Summary
		if d.Detail != "" {
			msg += ": " + d.Detail
		}
		e := &Error{File: name, Msg: msg}
		if d.Subject != nil {
			key := keyAt(src, *d.Subject)
			if key == "" && d.Context != nil {
				key = leadingIdent(src, *d.Context)
			}
			if key == "" {
				key = attrOnLine(src, d.Subject.Start.Line)
			}
			e = errorAt(name, *d.Subject, key, msg)
		}
		out.List = append(out.List, e)
	}
	return sortedErrors(out.List)
}

// sortedErrors orders errors as they appear in the file.
func sortedErrors(list []*Error) *Errors {
	sort.SliceStable(list, func(i, j int) bool {
		a, b := list[i], list[j]
		return a.Line < b.Line || (a.Line == b.Line && a.Col < b.Col)
	})
	return &Errors{List: list}
}

// keyAt returns the identifier at r in src when r covers one, which is
// where HCL points for unknown and mistyped arguments.
func keyAt(src []byte, r hcl.Range) string {
	if r.Start.Byte < 0 || r.End.Byte > len(src) || r.Start.Byte >= r.End.Byte {
		return ""
	}
	s := strings.Trim(string(src[r.Start.Byte:r.End.Byte]), `"`)
	for _, c := range s {
		if !(c == '_' || c == '-' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return ""
		}
	}
	return s
}

var attrLine = regexp.MustCompile(`^\s*([A-Za-z0-9_-]+)\s*=`)

// attrOnLine returns the attribute name assigned on line n (1-based), if any:
// HCL points value errors at the value, and people want the key.
func attrOnLine(src []byte, n int) string {
	lines := bytes.Split(src, []byte("\n"))
	if n < 1 || n > len(lines) {
		return ""
	}
	if m := attrLine.FindSubmatch(lines[n-1]); m != nil {
		return string(m[1])
	}
	return ""
}

// leadingIdent returns the identifier that starts range r, which for an
// attribute's context range is the attribute's name.
func leadingIdent(src []byte, r hcl.Range) string {
	if r.Start.Byte < 0 || r.Start.Byte >= len(src) {
		return ""
	}
	end := r.Start.Byte
	for end < len(src) && end < r.End.Byte {
		c := src[end]
		if !(c == '_' || c == '-' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			break
		}
		end++
	}
	return string(src[r.Start.Byte:end])
}

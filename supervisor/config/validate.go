package config

import (
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/lifeboat/lifeboat/supervisor/storage"
	"github.com/lifeboat/lifeboat/supervisor/trigger"
	"golang.org/x/sys/unix"
)

// validator checks a decoded, defaulted config. Each check names its key as
// a path of blocks ("template:web" for a labelled block) and an attribute,
// which rangeOf resolves to a position in the source file.
type validator struct {
	file string
	src  []byte
	body hcl.Body // nil when there is no file
	errs []*Error
}

func (v *validator) fail(path []string, format string, args ...any) {
	r := v.rangeOf(path)
	v.errs = append(v.errs, errorAt(v.file, r, keyName(path), fmt.Sprintf(format, args...)))
}

// keyName renders a path for people: template["web"].destination.
func keyName(path []string) string {
	var b strings.Builder
	for i, el := range path {
		typ, label, ok := strings.Cut(el, ":")
		if i > 0 {
			b.WriteByte('.')
		}
		b.WriteString(typ)
		if ok {
			fmt.Fprintf(&b, "[%q]", label)
		}
	}
	return b.String()
}

// rangeOf finds the source range of the value at path, or of the innermost
// enclosing block found, or nothing when the key came from env, flags or
// defaults.
func (v *validator) rangeOf(path []string) hcl.Range {
	var last hcl.Range
	body := v.body
	if body == nil {
		return last
	}
	for i, el := range path {
		typ, label, labelled := strings.Cut(el, ":")
		if i == len(path)-1 {
			content, _, _ := body.PartialContent(&hcl.BodySchema{Attributes: []hcl.AttributeSchema{{Name: typ}}})
			if content != nil {
				if a, ok := content.Attributes[typ]; ok {
					return a.Expr.Range()
				}
			}
		}
		hs := hcl.BlockHeaderSchema{Type: typ}
		if labelled {
			hs.LabelNames = []string{"name"}
		}
		content, _, _ := body.PartialContent(&hcl.BodySchema{Blocks: []hcl.BlockHeaderSchema{hs}})
		if content == nil {
			return last
		}
		found := false
		for _, blk := range content.Blocks {
			if !labelled || (len(blk.Labels) > 0 && blk.Labels[0] == label) {
				body, last, found = blk.Body, blk.DefRange, true
				break
			}
		}
		if !found {
			return last
		}
	}
	return last
}

func (v *validator) duration(path []string, s string, min time.Duration) {
	if s == "" {
		return
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		v.fail(path, "%q is not a duration (examples: 500ms, 10s, 5m, 1h)", s)
		return
	}
	if d < min {
		v.fail(path, "%s is too short: at least %s", s, min)
	}
}

func (v *validator) oneOf(path []string, s string, allowed ...string) {
	for _, a := range allowed {
		if s == a {
			return
		}
	}
	v.fail(path, "%q is not one of %s", s, strings.Join(allowed, " | "))
}

func (v *validator) signal(path []string, s string) {
	if s == "" {
		return
	}
	if _, err := ParseSignal(s); err != nil {
		v.fail(path, "%v", err)
	}
}

func (v *validator) absPath(path []string, s string) {
	if s != "" && !filepath.IsAbs(s) {
		v.fail(path, "%q must be an absolute path", s)
	}
}

func (v *validator) hooks(parent []string, hooks []Hook, allowed ...string) {
	seen := map[string]bool{}
	for _, h := range hooks {
		p := append(append([]string{}, parent...), "hook:"+h.Name)
		if seen[h.Name] {
			v.fail(p, "hook %q is defined twice", h.Name)
		}
		seen[h.Name] = true
		v.oneOf(p, h.Name, allowed...)
		if len(h.Command) == 0 || h.Command[0] == "" {
			v.fail(append(p, "command"), "must name a program")
		}
		v.duration(append(p, "timeout"), h.Timeout, time.Millisecond)
	}
}

var streamName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)

func (v *validator) validate(c *Config) {
	for _, blk := range []struct {
		name    string
		present bool
	}{
		{"consul", c.Consul != nil}, {"vault", c.Vault != nil}, {"template", len(c.Templates) > 0},
		{"env", c.EnvBlock != nil}, {"election", c.Election != nil}, {"service", c.Service != nil},
	} {
		if blk.present && !supported[blk.name] {
			v.fail([]string{blk.name}, "the %s block is not supported yet by this version of lifeboat; remove it", blk.name)
		}
	}

	a := c.App
	v.signal([]string{"app", "stop_signal"}, a.StopSignal)
	v.duration([]string{"app", "stop_timeout"}, a.StopTimeout, 0)
	v.oneOf([]string{"app", "restart", "policy"}, a.Restart.Policy, "never", "on-failure", "always")
	if *a.Restart.MaxRestarts < 0 {
		v.fail([]string{"app", "restart", "max_restarts"}, "must be 0 or more")
	}
	v.duration([]string{"app", "restart", "backoff_initial"}, a.Restart.BackoffInitial, time.Millisecond)
	v.duration([]string{"app", "restart", "backoff_max"}, a.Restart.BackoffMax, time.Millisecond)
	if Dur(a.Restart.BackoffMax) < Dur(a.Restart.BackoffInitial) {
		v.fail([]string{"app", "restart", "backoff_max"}, "must not be shorter than backoff_initial (%s)", a.Restart.BackoffInitial)
	}

	d := c.Data
	v.absPath([]string{"data", "path"}, d.Path)
	v.oneOf([]string{"data", "restore"}, d.Restore, "if-empty", "always", "never")
	v.oneOf([]string{"data", "on_corrupt"}, d.OnCorrupt, "previous", "fail")
	for _, g := range d.Exclude {
		if _, err := filepath.Match(g, ""); err != nil {
			v.fail([]string{"data", "exclude"}, "bad glob %q: %v", g, err)
		}
	}

	v.store(c.Store)

	b := c.Backup
	if b.Schedule != "" {
		if err := trigger.ParseSchedule(b.Schedule); err != nil {
			v.fail([]string{"backup", "schedule"}, "%v", err)
		}
	}
	if b.Signal != "" {
		v.signal([]string{"backup", "signal"}, b.Signal)
		if sig, err := ParseSignal(b.Signal); err == nil {
			switch sig {
			case unix.SIGTERM, unix.SIGINT, unix.SIGCHLD, unix.SIGKILL, unix.SIGSTOP, unix.SIGURG:
				v.fail([]string{"backup", "signal"}, "%s cannot trigger backups (it stops the app or is reserved); use SIGUSR1 or SIGUSR2", b.Signal)
			}
		}
	}
	v.duration([]string{"backup", "final_timeout"}, b.FinalTimeout, time.Second)
	v.duration([]string{"backup", "watch", "debounce"}, b.Watch.Debounce, 0)
	v.duration([]string{"backup", "watch", "max_delay"}, b.Watch.MaxDelay, 0)
	if Dur(b.Watch.MaxDelay) < Dur(b.Watch.Debounce) {
		v.fail([]string{"backup", "watch", "max_delay"}, "must not be shorter than debounce (%s)", b.Watch.Debounce)
	}
	v.duration([]string{"backup", "retry", "initial"}, b.Retry.Initial, time.Millisecond)
	v.duration([]string{"backup", "retry", "max"}, b.Retry.Max, time.Millisecond)
	for _, k := range []struct {
		name string
		n    int
	}{{"last", b.Keep.Last}, {"hourly", b.Keep.Hourly}, {"daily", b.Keep.Daily}, {"weekly", b.Keep.Weekly}, {"monthly", b.Keep.Monthly}, {"yearly", b.Keep.Yearly}} {
		if k.n < 0 {
			v.fail([]string{"backup", "keep", k.name}, "must be 0 or more")
		}
	}
	v.hooks([]string{"backup"}, b.Hooks, "pre_backup", "post_backup", "pre_restore", "post_restore", "init")
	seen := map[string]bool{}
	for _, s := range b.Streams {
		p := []string{"backup", "stream:" + s.Name}
		if !streamName.MatchString(s.Name) {
			v.fail(p, "stream name %q must be letters, digits, '_', '.', '-'", s.Name)
		}
		if seen[s.Name] {
			v.fail(p, "stream %q is defined twice", s.Name)
		}
		seen[s.Name] = true
		if len(s.Command) == 0 || s.Command[0] == "" {
			v.fail(append(p, "command"), "must name a program")
		}
	}

	if c.Consul != nil && c.Consul.Token != "" && c.Consul.TokenFile != "" {
		v.fail([]string{"consul", "token_file"}, "set token or token_file, not both")
	}
	if c.Vault != nil {
		v.vault(c.Vault)
	}
	names := map[string]bool{}
	for _, t := range c.Templates {
		v.template(t, names)
	}
	if c.Election != nil {
		v.election(c.Election)
	}
	if c.Service != nil {
		v.service(c.Service)
	}
	if l := c.Telemetry.Listen; l != "" {
		if _, _, err := net.SplitHostPort(l); err != nil {
			v.fail([]string{"telemetry", "listen"}, "%q is not HOST:PORT", l)
		}
	}
	v.absPath([]string{"control", "socket"}, c.Control.Socket)
	v.oneOf([]string{"log", "format"}, c.Log.Format, "auto", "text", "json")
	v.oneOf([]string{"log", "level"}, c.Log.Level, "debug", "info", "warn", "error")
}

func (v *validator) store(s *Store) {
	p := []string{"store", "url"}
	u, err := storage.ParseURL(s.URL)
	switch {
	case err != nil:
		v.fail(p, "not a URL: %v", err)
	case u.Scheme == "file":
		if u.Host != "" && u.Host != "localhost" {
			v.fail(p, "file URLs need an absolute path and no host: file:///var/lib/lifeboat/store")
		} else if !filepath.IsAbs(u.Path) {
			v.fail(p, "file URLs need an absolute path: file:///var/lib/lifeboat/store")
		}
	case u.Scheme == "s3":
		if u.Host == "" {
			v.fail(p, "s3 URLs name a bucket: s3://BUCKET/PREFIX?endpoint=HOST:PORT")
		}
	default:
		v.fail(p, "scheme %q is not supported; use s3:// or file://", u.Scheme)
	}
	if s.EncryptionKey != "" && s.EncryptionKeyFile != "" {
		v.fail([]string{"store", "encryption_key_file"}, "set encryption_key or encryption_key_file, not both")
	}
	if s.Vault != nil && !supported["vault"] {
		v.fail([]string{"store", "vault"}, "store credentials from Vault are not supported yet by this version of lifeboat")
	}
}

func (v *validator) vault(c *Vault) {
	p := []string{"vault", "auth"}
	au := c.Auth
	v.oneOf(append(p, "method"), au.Method, "token", "approle", "kubernetes", "jwt")
	switch au.Method {
	case "approle":
		if au.RoleIDFile == "" {
			v.fail(append(p, "role_id_file"), "approle auth needs role_id_file")
		}
		if au.SecretIDFile == "" {
			v.fail(append(p, "secret_id_file"), "approle auth needs secret_id_file")
		}
	case "kubernetes", "jwt":
		if au.Role == "" {
			v.fail(append(p, "role"), "%s auth needs a role", au.Method)
		}
	}
}

func (v *validator) template(t Template, names map[string]bool) {
	p := []string{"template:" + t.Name}
	if names[t.Name] {
		v.fail(p, "template %q is defined twice", t.Name)
	}
	names[t.Name] = true
	if (t.Source == "") == (t.Contents == "") {
		v.fail(p, "set exactly one of source or contents")
	}
	v.absPath(append(p, "destination"), t.Destination)
	if t.Perms != "" {
		if m, err := strconv.ParseUint(t.Perms, 8, 32); err != nil || m > 0o7777 {
			v.fail(append(p, "perms"), "%q is not an octal file mode like \"0640\"", t.Perms)
		}
	}
	oc := append(p, "on_change")
	switch t.OnChange[0] {
	case "restart", "reload", "none":
		if len(t.OnChange) != 1 {
			v.fail(oc, "%s takes no arguments", t.OnChange[0])
		}
	case "signal":
		if len(t.OnChange) != 2 {
			v.fail(oc, `signal needs one signal name: ["signal", "SIGHUP"]`)
		} else {
			v.signal(oc, t.OnChange[1])
		}
	case "command":
		if len(t.OnChange) < 2 {
			v.fail(oc, `command needs a program: ["command", "/usr/local/bin/reload"]`)
		}
	default:
		v.fail(oc, "%q is not one of restart | reload | signal NAME | command ... | none", t.OnChange[0])
	}
	if t.Wait != nil {
		v.duration(append(p, "wait", "min"), t.Wait.Min, 0)
		v.duration(append(p, "wait", "max"), t.Wait.Max, 0)
		if t.Wait.Max != "" && Dur(t.Wait.Max) < Dur(t.Wait.Min) {
			v.fail(append(p, "wait", "max"), "must not be shorter than min (%s)", t.Wait.Min)
		}
	}
}

func (v *validator) election(e *Election) {
	p := []string{"election"}
	v.duration(append(p, "ttl"), e.TTL, 10*time.Second)
	if Dur(e.TTL) > 24*time.Hour {
		v.fail(append(p, "ttl"), "%s is too long: Consul allows at most 24h", e.TTL)
	}
	v.duration(append(p, "lock_delay"), e.LockDelay, 0)
	if e.DemoteAfter != "" {
		v.duration(append(p, "demote_after"), e.DemoteAfter, time.Second)
		if Dur(e.DemoteAfter) >= Dur(e.TTL) {
			v.fail(append(p, "demote_after"), "must be shorter than ttl (%s) so the leader demotes itself before Consul frees the lock", e.TTL)
		}
	}
	if e.Port < 0 || e.Port > 65535 {
		v.fail(append(p, "port"), "%d is not a port", e.Port)
	}
	v.hooks(p, e.Hooks, "on_leader", "on_follower", "on_demote")
}

func (v *validator) service(s *Service) {
	p := []string{"service"}
	if s.Name == "" {
		v.fail(append(p, "name"), "must not be empty")
	}
	if s.Port < 0 || s.Port > 65535 {
		v.fail(append(p, "port"), "%d is not a port", s.Port)
	}
	if ch := s.Check; ch != nil {
		cp := append(p, "check")
		n := 0
		for _, set := range []bool{len(ch.Command) > 0, ch.HTTP != "", ch.TCP != ""} {
			if set {
				n++
			}
		}
		if n != 1 {
			v.fail(cp, "set exactly one of command, http or tcp")
		}
		v.duration(append(cp, "interval"), ch.Interval, 100*time.Millisecond)
		v.duration(append(cp, "timeout"), ch.Timeout, time.Millisecond)
		v.duration(append(cp, "deregister_after"), ch.DeregisterAfter, time.Minute)
	}
}

// ParseSignal accepts "SIGHUP", "HUP" or a number.
func ParseSignal(s string) (unix.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n < 1 || n > 64 {
			return 0, fmt.Errorf("%d is not a signal number", n)
		}
		return unix.Signal(n), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return sig, nil
	}
	return 0, fmt.Errorf("%q is not a signal name (examples: SIGTERM, SIGHUP, SIGUSR1)", s)
}

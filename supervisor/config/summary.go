package config

import (
	"fmt"
	"io"
	"net/url"
	"sort"
	"strings"
)

const redacted = "(redacted)"

// Summary writes the effective configuration for people, with every secret
// (keys, tokens, env values, template contents) replaced by "(redacted)".
func (c *Config) Summary(w io.Writer) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	src := c.File
	if src == "" {
		src = "(no file: defaults, environment and flags)"
	}
	p("config:        %s", src)
	p("app.command:   %s", quoteList(c.App.Command))
	if c.App.User != "" {
		p("app.user:      %s", c.App.User)
	}
	if len(c.App.Env) > 0 {
		p("app.env:       %s", keysOnly(c.App.Env))
	}
	p("app.stop:      signal=%s timeout=%s signal_group=%t", orDefault(c.App.StopSignal, "(the one received)"), c.App.StopTimeout, c.App.SignalGroup)
	p("app.restart:   policy=%s max_restarts=%d backoff=%s..%s", c.App.Restart.Policy, *c.App.Restart.MaxRestarts, c.App.Restart.BackoffInitial, c.App.Restart.BackoffMax)
	p("data:          path=%s restore=%s on_corrupt=%s", c.Data.Path, c.Data.Restore, c.Data.OnCorrupt)
	p("store:         %s", RedactURL(c.Store.URL))
	if c.Store.AccessKey != "" || c.Store.SecretKey != "" {
		p("store.keys:    access_key=%s secret_key=%s", redacted, redacted)
	}
	if c.Store.EncryptionKey != "" || c.Store.EncryptionKeyFile != "" {
		p("store.encryption: on (key %s)", redacted)
	}
	b := c.Backup
	p("backup:        notify=%t schedule=%q signal=%q watch=%t final=%t (timeout %s) only_leader=%t", *b.Notify, b.Schedule, b.Signal, *b.Watch.Enabled, *b.Final, b.FinalTimeout, *b.OnlyLeader)
	p("backup.keep:   last=%d hourly=%d daily=%d weekly=%d monthly=%d yearly=%d", b.Keep.Last, b.Keep.Hourly, b.Keep.Daily, b.Keep.Weekly, b.Keep.Monthly, b.Keep.Yearly)
	for _, h := range b.Hooks {
		p("backup.hook:   %s %s (timeout %s)", h.Name, quoteList(h.Command), h.Timeout)
	}
	for _, s := range b.Streams {
		p("backup.stream: %s %s", s.Name, quoteList(s.Command))
	}
	if c.Consul != nil {
		p("consul:        address=%s token=%s", orDefault(c.Consul.Address, "(CONSUL_HTTP_ADDR or 127.0.0.1:8500)"), secretState(c.Consul.Token != "" || c.Consul.TokenFile != ""))
	}
	if c.Vault != nil {
		p("vault:         address=%s auth=%s", orDefault(c.Vault.Address, "(VAULT_ADDR)"), c.Vault.Auth.Method)
	}
	for _, t := range c.Templates {
		p("template:      %s -> %s on_change=%s", t.Name, t.Destination, strings.Join(t.OnChange, " "))
	}
	if len(c.Env) > 0 {
		p("env:           %s", keysOnly(c.Env))
	}
	if c.Election != nil {
		p("election:      key=%s ttl=%s lock_delay=%s", c.Election.Key, c.Election.TTL, c.Election.LockDelay)
	}
	if c.Service != nil {
		p("service:       %s port=%d", c.Service.Name, c.Service.Port)
	}
	p("control:       socket=%s", c.Control.Socket)
	if c.Telemetry.Listen != "" {
		p("telemetry:     listen=%s", c.Telemetry.Listen)
	}
	p("log:           format=%s level=%s", c.Log.Format, c.Log.Level)
}

// RedactURL hides the password of a URL's user info, a user name given
// alone (it may be a token), and secret-looking query values (key,
// secret, token, password): store URLs, HTTP checks.
func RedactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparseable URL)"
	}
	switch _, hasPassword := u.User.Password(); {
	case hasPassword:
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	case u.User != nil:
		u.User = url.User("xxxxx")
	}
	q := u.Query()
	for k := range q {
		lk := strings.ToLower(k)
		if strings.Contains(lk, "secret") || strings.Contains(lk, "key") || strings.Contains(lk, "token") || strings.Contains(lk, "password") {
			q.Set(k, redacted)
		}
	}
	u.RawQuery = q.Encode()
	return u.String()
}

func secretState(set bool) string {
	if set {
		return redacted
	}
	return "(none)"
}

func keysOnly(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k+"="+redacted)
	}
	sort.Strings(keys)
	return strings.Join(keys, " ")
}

func quoteList(l []string) string {
	if len(l) == 0 {
		return "(none: give it after --)"
	}
	q := make([]string, len(l))
	for i, s := range l {
		q[i] = fmt.Sprintf("%q", s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

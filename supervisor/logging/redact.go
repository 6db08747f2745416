package logging

import "log/slog"

// Redacted is the text that stands in for a secret value.
const Redacted = "[redacted]"

// Secret is a string that never prints its value: not with fmt, not in
// slog (text or JSON), not in %v of a struct holding it. Use it for
// tokens, passwords and keys that have to travel through structs that may
// end up in a log line or an error; read the value with Reveal.
type Secret string

// String implements fmt.Stringer.
func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return Redacted
}

// GoString implements fmt.GoStringer, so %#v does not leak it either.
func (s Secret) GoString() string { return `logging.Secret("` + s.String() + `")` }

// LogValue implements slog.LogValuer.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// MarshalText implements encoding.TextMarshaler, so JSON and text
// encoders (including slog's JSON handler) write the redacted form.
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Reveal returns the secret value itself, for the one place that needs it
// (an HTTP header, a client config).
func (s Secret) Reveal() string { return string(s) }

// Redact returns an slog attribute for key whose value is never logged;
// it only says whether a value was set.
func Redact(key, value string) slog.Attr {
	if value == "" {
		return slog.String(key, "")
	}
	return slog.String(key, Redacted)
}

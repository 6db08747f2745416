// Package logging sets up lifeboat's own log/slog logger: text for people
// when stderr is a terminal, JSON for log collectors otherwise. The app's
// output never passes through here; lifeboat hands the app its own stdout
// and stderr.
package logging

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"golang.org/x/term"
)

// Formats.
const (
	FormatAuto = "auto"
	FormatText = "text"
	FormatJSON = "json"
)

// New returns a logger writing to w in format ("auto", "text" or "json";
// auto is text on a terminal and JSON otherwise) at level ("debug", "info",
// "warn", "error").
func New(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(strings.ToUpper(level))); err != nil {
		return nil, fmt.Errorf("log level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case FormatAuto, "":
		if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			return slog.New(slog.NewTextHandler(w, opts)), nil
		}
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case FormatText:
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case FormatJSON:
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("log format %q: want auto, text or json", format)
}

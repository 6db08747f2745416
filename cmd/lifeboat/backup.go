package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/lifeboat/lifeboat/supervisor/progress"
	"github.com/lifeboat/lifeboat/supervisor/snapshot"
)

func init() {
	commands["backup"] = command{summary: "take a snapshot of the data directory now, without a running supervisor", run: runBackup}
}

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func runBackup(args []string) int {
	fs := flag.NewFlagSet("backup", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: lifeboat backup [--config F] [--store URL] [--data DIR] [--tag T]... [--json]")
		fmt.Fprintln(os.Stderr, `
Takes one snapshot of the data directory (and of the config's backup.stream
commands) and prints its id on stdout. It runs no hooks: to back up a running
app consistently, ask its supervisor with 'lifeboat notify backup --wait'.`)
		fs.PrintDefaults()
	}
	var rf repoFlags
	rf.register(fs)
	data := fs.String("data", "", "directory to back up (overrides data.path and $LIFEBOAT_DATA)")
	var tags, excludes listFlag
	fs.Var(&tags, "tag", "tag the snapshot (repeatable; added to backup.tags)")
	fs.Var(&excludes, "exclude", "glob of paths to leave out (repeatable; added to data.exclude)")
	reason := fs.String("reason", "manual", "why, recorded in the snapshot")
	noStreams := fs.Bool("no-streams", false, "do not run the config's backup.stream commands")
	full := fs.Bool("full", false, "read every file, even those unchanged since the last snapshot")
	asJSON := fs.Bool("json", false, "print the snapshot's manifest as JSON instead of its id")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return exitUsage
	}
	s, err := rf.load(*data)
	if err != nil {
		return exitWith("backup", err)
	}
	defer s.stop()
	return exitWith("backup", s.backup(backupArgs{tags: tags, excludes: excludes, reason: *reason, noStreams: *noStreams, full: *full, json: *asJSON}))
}

type backupArgs struct {
	tags, excludes  []string
	reason          string
	noStreams, full bool
	json            bool
}

func (s *session) backup(a backupArgs) error {
	dir := s.cfg.Data.Path
	if fi, err := os.Stat(dir); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return usageErr("data directory %s does not exist; give --data DIR or set data.path", dir)
		}
		return err
	} else if !fi.IsDir() {
		return usageErr("data path %s is not a directory", dir)
	}
	repo, err := s.openRepo(snapshot.Options{Create: true})
	if err != nil {
		return err
	}
	defer repo.Store().Close()

	host, _ := os.Hostname()
	req := snapshot.BackupRequest{
		Dir:     dir,
		Exclude: append(append([]string{}, s.cfg.Data.Exclude...), a.excludes...),
		Tags:    append(append([]string{}, s.cfg.Backup.Tags...), a.tags...),
		Reason:  a.reason,
		Host:    host,
	}
	if a.full {
		req.Parent = "none"
	}
	if !a.noStreams {
		for _, st := range s.cfg.Backup.Streams {
			req.Streams = append(req.Streams, snapshot.StreamSource{Name: st.Name, Command: st.Command})
		}
	}
	disp := s.display("backup", "uploaded")
	req.Progress = progressFunc(disp)
	m, err := repo.Backup(s.ctx, req)
	if err != nil {
		disp.Abort()
		if s.ctx.Err() != nil {
			return fmt.Errorf("interrupted; nothing was committed (uploaded packs are collected by prune): %w", err)
		}
		return fmt.Errorf("backup of %s to %s failed; nothing was committed: %w", dir, repo.Store(), err)
	}
	disp.Finish()
	st := m.Stats
	for _, p := range st.Changed {
		fmt.Fprintf(os.Stderr, "lifeboat backup: warning: %s changed while it was read; its copy may be inconsistent\n", p)
	}
	fmt.Fprintf(os.Stderr, "lifeboat backup: snapshot %s of %s: %s files, %s; new %s, uploaded %s in %s\n",
		m.ID, dir, progress.FormatCount(int64(st.Files)), progress.FormatBytes(st.Bytes),
		progress.FormatBytes(st.NewBytes), progress.FormatBytes(st.StoredBytes), st.Duration)
	if len(st.Skipped) > 0 {
		fmt.Fprintf(os.Stderr, "lifeboat backup: %d entries skipped (first: %s)\n", len(st.Skipped), st.Skipped[0])
	}
	if a.json {
		b, _ := json.MarshalIndent(m, "", "  ")
		fmt.Println(string(b))
		return nil
	}
	// stdout carries only the id, for scripts: id=$(lifeboat backup)
	fmt.Println(m.ID)
	return nil
}

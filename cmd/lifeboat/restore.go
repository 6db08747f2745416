package main

import (
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/lifeboat/lifeboat/supervisor/progress"
	"github.com/lifeboat/lifeboat/supervisor/snapshot"
)

func init() {
	commands["restore"] = command{summary: "restore a snapshot into a directory (or a stream to stdout)", run: runRestore}
}

func runRestore(args []string) int {
	fs := flag.NewFlagSet("restore", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: lifeboat restore [--config F] [--store URL] [--snapshot ID|latest] [--to DIR] [--force]")
		fmt.Fprintln(os.Stderr, "       lifeboat restore [--store URL] [--snapshot ID|latest] --stream NAME > FILE")
		fmt.Fprintln(os.Stderr, `
Restores a snapshot into an empty directory (--force replaces what is there)
and pipes its streams into the config's restore_command. A completion marker
(.lifeboat-restored) is written last. With --stream, writes that one stream
to stdout instead.`)
		fs.PrintDefaults()
	}
	var rf repoFlags
	rf.register(fs)
	ref := fs.String("snapshot", "latest", "snapshot to restore: latest, an id, or a unique id prefix")
	to := fs.String("to", "", "directory to restore into (default data.path, $LIFEBOAT_DATA)")
	force := fs.Bool("force", false, "restore into a non-empty directory by first removing everything in it")
	stream := fs.String("stream", "", "write only this stream to stdout")
	noStreams := fs.Bool("no-streams", false, "do not run the config's stream restore commands")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return exitUsage
	}
	s, err := rf.load(*to)
	if err != nil {
		return exitWith("restore", err)
	}
	defer s.stop()
	target := s.cfg.Data.Path
	if *stream != "" && *to == "" {
		target = "" // a stream alone: the data directory is left alone
	}
	return exitWith("restore", s.restore(restoreArgs{ref: *ref, target: target, force: *force, stream: *stream, noStreams: *noStreams}))
}

type restoreArgs struct {
	ref, target, stream string
	force, noStreams    bool
}

func (s *session) restore(a restoreArgs) error {
	repo, err := s.openRepo(snapshot.Options{})
	if err != nil {
		return err
	}
	defer repo.Store().Close()
	m, err := repo.FindSnapshot(s.ctx, a.ref)
	if err != nil {
		if errors.Is(err, snapshot.ErrNoSnapshot) {
			return fmt.Errorf("%w in %s ('lifeboat snapshots' lists them)", err, repo.Store())
		}
		return err
	}
	req := snapshot.RestoreRequest{Manifest: m, Target: a.target, Force: a.force, Streams: map[string]snapshot.StreamSink{}}
	if a.stream != "" {
		tree, err := repo.ReadTree(s.ctx, m)
		if err != nil {
			return err
		}
		found := false
		var names []string
		for _, st := range tree.Streams {
			names = append(names, st.Name)
			found = found || st.Name == a.stream
		}
		if !found {
			return usageErr("snapshot %s has no stream %q (it has: %v)", m.ID, a.stream, names)
		}
		req.Streams[a.stream] = snapshot.StreamSink{Writer: os.Stdout}
		req.Tree = tree // Restore need not fetch and decode it a second time
	} else if !a.noStreams {
		for _, st := range s.cfg.Backup.Streams {
			if len(st.RestoreCommand) > 0 {
				req.Streams[st.Name] = snapshot.StreamSink{Command: st.RestoreCommand, Dir: a.target}
			}
		}
	}
	disp := s.display("restore", "downloaded")
	req.Progress = progressFunc(disp)
	res, err := repo.Restore(s.ctx, req)
	if err != nil {
		disp.Abort()
		switch {
		case errors.Is(err, snapshot.ErrNotEmpty):
			return fmt.Errorf("%w; nothing was changed", err)
		case s.ctx.Err() != nil && a.target != "":
			return fmt.Errorf("interrupted: %s is half restored (marked by %s; run restore again): %w", a.target, snapshot.RestoringMarker, err)
		case s.ctx.Err() != nil:
			// A stream alone touched no directory: nothing is half restored.
			return fmt.Errorf("interrupted: %w", err)
		case a.target != "":
			return fmt.Errorf("restore of snapshot %s into %s failed; the directory is marked incomplete (%s): %w", m.ID, a.target, snapshot.RestoringMarker, err)
		}
		return fmt.Errorf("restore of snapshot %s failed: %w", m.ID, err)
	}
	disp.Finish()
	into := a.target
	if into == "" {
		into = "stdout"
	}
	fmt.Fprintf(os.Stderr, "lifeboat restore: snapshot %s (%s) into %s: %s files, %s in %s\n",
		m.ID, m.Time.Local().Format("2006-01-02 15:04:05"), into, progress.FormatCount(int64(res.Files)),
		progress.FormatBytes(res.Bytes), progress.FormatDuration(res.Duration))
	return nil
}

package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/lifeboat/lifeboat/supervisor"
	"github.com/lifeboat/lifeboat/supervisor/progress"
	"github.com/lifeboat/lifeboat/supervisor/snapshot"
)

func init() {
	commands["prune"] = command{summary: "forget snapshots by the keep policy and delete the data nothing needs", run: runPrune}
}

func runPrune(args []string) int {
	fs := flag.NewFlagSet("prune", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: lifeboat prune [--config F] [--store URL] [--keep-last N] [--keep-hourly N] [--keep-daily N]")
		fmt.Fprintln(os.Stderr, "                      [--keep-weekly N] [--keep-monthly N] [--keep-yearly N] [--dry-run] [--grace D] [--json]")
		fmt.Fprintln(os.Stderr, `
Forgets the snapshots the keep policy does not keep, then deletes packs no
snapshot references. Any --keep-* flag replaces the config's backup.keep;
without either, every snapshot is kept and only garbage is collected. The
snapshot 'restore --snapshot latest' picks is always kept. Prune waits for
no one: while a backup runs it deletes nothing and exits 1; retry later.`)
		fs.PrintDefaults()
	}
	var rf repoFlags
	rf.register(fs)
	var p snapshot.KeepPolicy
	fs.IntVar(&p.Last, "keep-last", 0, "keep the `N` newest snapshots")
	fs.IntVar(&p.Hourly, "keep-hourly", 0, "keep the newest snapshot of each of the last `N` hours that have one")
	fs.IntVar(&p.Daily, "keep-daily", 0, "keep the newest snapshot of each of the last `N` days that have one")
	fs.IntVar(&p.Weekly, "keep-weekly", 0, "keep the newest snapshot of each of the last `N` ISO weeks that have one")
	fs.IntVar(&p.Monthly, "keep-monthly", 0, "keep the newest snapshot of each of the last `N` months that have one")
	fs.IntVar(&p.Yearly, "keep-yearly", 0, "keep the newest snapshot of each of the last `N` years that have one")
	dryRun := fs.Bool("dry-run", false, "show what would be forgotten and deleted, change nothing")
	grace := fs.Duration("grace", snapshot.DefaultPruneGrace, "keep unreferenced packs younger than this (a running or crashed backup's); 0 for none")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return exitUsage
	}
	if err := p.Validate(); err != nil {
		fmt.Fprintf(os.Stderr, "lifeboat prune: %v\n", err)
		return exitUsage
	}
	if *grace < 0 {
		fmt.Fprintln(os.Stderr, "lifeboat prune: --grace must be 0 or more")
		return exitUsage
	}
	keepFlags := false
	fs.Visit(func(f *flag.Flag) { keepFlags = keepFlags || strings.HasPrefix(f.Name, "keep-") })
	return rf.withRepo("prune", func(s *session, repo *snapshot.Repository) (int, error) {
		if !keepFlags {
			p = supervisor.KeepPolicy(s.cfg.Backup)
		}
		if p.Empty() {
			fmt.Fprintln(os.Stderr, "lifeboat prune: no keep policy (--keep-* or backup.keep): every snapshot is kept, only unreferenced data is deleted")
		}
		g := *grace
		if g == 0 {
			g = -1 // the engine's "none"; its 0 means the default
		}
		res, err := snapshot.Prune(s.ctx, repo, p, snapshot.PruneOptions{DryRun: *dryRun, Grace: g})
		if errors.Is(err, snapshot.ErrLocked) {
			return 0, fmt.Errorf("%w (nothing was deleted)", err)
		}
		if err != nil {
			return 0, err
		}
		if *asJSON {
			b, _ := json.MarshalIndent(pruneJSON(res), "", "  ")
			fmt.Println(string(b))
			return 0, nil
		}
		printPruneResult(os.Stdout, res, p, time.Local)
		return 0, nil
	})
}

// pruneJSON is the result with decisions by id (a Decision holds the whole
// manifest, too much for a script that wants to know what went).
func pruneJSON(res *snapshot.PruneResult) any {
	type decision struct {
		ID      string    `json:"id"`
		Time    time.Time `json:"time"`
		Keep    bool      `json:"keep"`
		Reasons []string  `json:"reasons,omitempty"`
	}
	out := struct {
		*snapshot.PruneResult
		Decisions []decision `json:"decisions"`
		Duration  string     `json:"duration"`
	}{PruneResult: res, Decisions: []decision{}, Duration: res.Duration.String()}
	for _, d := range res.Decisions {
		out.Decisions = append(out.Decisions, decision{d.Snapshot.ID, d.Snapshot.Time, d.Keep, d.Reasons})
	}
	return out
}

func printPruneResult(w io.Writer, res *snapshot.PruneResult, p snapshot.KeepPolicy, loc *time.Location) {
	verb := map[bool]string{false: "deleted", true: "would delete"}[res.DryRun]
	if len(res.Decisions) > 0 {
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tTIME\tACTION\tKEPT BY")
		for _, d := range res.Decisions {
			action := "keep"
			if !d.Keep {
				action = map[bool]string{false: "forget", true: "would forget"}[res.DryRun]
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", d.Snapshot.ID, d.Snapshot.Time.In(loc).Format("2006-01-02 15:04:05"), action, orDash(strings.Join(d.Reasons, ",")))
		}
		tw.Flush()
	}
	fmt.Fprintf(w, "policy %s: %d snapshots kept, %d forgotten\n", p, res.Kept, len(res.Forgotten))
	fmt.Fprintf(w, "packs: %d kept (%s), %d %s (%s), %d unreferenced but younger than the grace period\n",
		res.PacksKept, progress.FormatBytes(res.BytesKept), res.PacksDeleted, verb, progress.FormatBytes(res.BytesDeleted), res.PacksInGrace)
	if res.UnreferencedKept > 0 {
		fmt.Fprintf(w, "%s of unreferenced chunks stay in packs that other snapshots still need\n", progress.FormatBytes(res.UnreferencedKept))
	}
	if res.DryRun {
		fmt.Fprintln(w, "dry run: nothing was changed")
	} else {
		fmt.Fprintf(w, "done in %s\n", progress.FormatDuration(res.Duration))
	}
}

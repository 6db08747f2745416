package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/lifeboat/lifeboat/supervisor/progress"
	"github.com/lifeboat/lifeboat/supervisor/snapshot"
)

func init() {
	commands["verify"] = command{summary: "check the repository's structure, and optionally its data", run: runVerify}
}

// percentFlag is --read-data[=PERCENT]: alone it means 100.
type percentFlag float64

func (p *percentFlag) String() string   { return strconv.FormatFloat(float64(*p), 'g', -1, 64) }
func (p *percentFlag) IsBoolFlag() bool { return true }
func (p *percentFlag) Set(v string) error {
	switch v {
	case "true":
		*p = 100
		return nil
	case "false":
		*p = 0
		return nil
	}
	f, err := strconv.ParseFloat(strings.TrimSuffix(v, "%"), 64)
	if err != nil || f < 0 || f > 100 {
		return fmt.Errorf("want a percentage from 0 to 100, like --read-data=10")
	}
	*p = percentFlag(f)
	return nil
}

func runVerify(args []string) int {
	fs := flag.NewFlagSet("verify", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: lifeboat verify [--config F] [--store URL] [--read-data[=PERCENT]] [--json]")
		fmt.Fprintln(os.Stderr, `
Checks the repository: config, every index, manifest and tree, and that every
pack the index names exists with its size. --read-data also downloads all
packs (or PERCENT of them, picked at random) and checks every chunk in them.
Exits 1 when it finds a problem; every problem is listed, not just the first.`)
		fs.PrintDefaults()
	}
	var rf repoFlags
	rf.register(fs)
	var readData percentFlag
	fs.Var(&readData, "read-data", "download and check `PERCENT` of the packs (alone: all of them)")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return exitUsage
	}
	return rf.withRepo("verify", func(s *session, repo *snapshot.Repository) (int, error) {
		rep, err := snapshot.Verify(s.ctx, repo, snapshot.VerifyOptions{ReadDataPercent: float64(readData)})
		if err != nil {
			return 0, err
		}
		if *asJSON {
			b, _ := json.MarshalIndent(rep, "", "  ")
			fmt.Println(string(b))
		} else {
			printVerifyReport(rep, repo.Store().String())
		}
		if !rep.OK() {
			return exitFailure, nil
		}
		return 0, nil
	})
}

func printVerifyReport(rep *snapshot.VerifyReport, store string) {
	fmt.Printf("checked %s: %d snapshots, %d indexes, %d packs, %s chunks\n", store, rep.Snapshots, rep.Indexes, rep.Packs, progress.FormatCount(int64(rep.Blobs)))
	if rep.PacksRead > 0 {
		fmt.Printf("read %d packs (%s), %s chunks decrypted, decompressed and hashed\n", rep.PacksRead, progress.FormatBytes(rep.BytesRead), progress.FormatCount(int64(rep.BlobsRead)))
	} else {
		fmt.Println("data not read (use --read-data to download and check it)")
	}
	for _, n := range rep.Notes {
		fmt.Printf("note: %s\n", n)
	}
	for _, p := range rep.Problems {
		fmt.Printf("PROBLEM: %s\n", p)
	}
	if more := rep.ProblemsAll - len(rep.Problems); more > 0 {
		fmt.Printf("... and %d more problems\n", more)
	}
	if rep.OK() {
		fmt.Printf("no problems found in %s\n", progress.FormatDuration(rep.Duration))
	} else {
		fmt.Printf("%d problems found in %s\n", rep.ProblemsAll, progress.FormatDuration(rep.Duration))
	}
}

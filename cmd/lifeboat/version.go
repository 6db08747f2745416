package main

import (
	"fmt"
	"runtime"

	"github.com/lifeboat/lifeboat/supervisor/metrics"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func init() {
	commands["version"] = command{summary: "print the version", run: runVersion}
}

func runVersion(args []string) int {
	rev := ""
	if r := metrics.VCSRevision(); len(r) >= 12 {
		rev = " (" + r[:12] + ")"
	}
	fmt.Printf("lifeboat %s%s %s %s/%s\n", version, rev, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return 0
}

package testrig

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestKillTreeKillsTheOrphanToBe: a parent whose child leads its own
// process group (as lifeboat's app does); killing the parent alone would
// leave the child running. KillTree leaves neither.
func TestKillTreeKillsTheOrphanToBe(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "child")
	cmd := exec.Command("/bin/sh", "-c", `setsid sleep 300 & echo $! > `+pidFile+`.tmp && mv `+pidFile+`.tmp `+pidFile+`; wait`)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	var child int
	deadline := time.Now().Add(10 * time.Second)
	for child == 0 && time.Now().Before(deadline) {
		b, _ := os.ReadFile(pidFile)
		child, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		time.Sleep(5 * time.Millisecond)
	}
	if child == 0 {
		t.Fatal("the child never started")
	}
	KillTree(cmd.Process.Pid)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the parent survived KillTree")
	}
	// The child, reparented and killed, is reaped by whoever adopted it.
	deadline = time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if syscall.Kill(child, 0) != nil || zombie(child) {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("child %d in its own process group survived KillTree", child)
}

func zombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] == 'Z'
}

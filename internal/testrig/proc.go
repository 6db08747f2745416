package testrig

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// KillTree SIGKILLs pid and every process below it. Killing a lifeboat
// alone (outside a PID namespace) leaves its app running: the app leads a
// process group of its own and is reparented to init, where it outlives
// the test and loads the machine for every later one. Each process is
// stopped before its children are listed, so none forks behind the walk.
func KillTree(pid int) {
	var all []int
	var walk func(int)
	walk = func(p int) {
		if syscall.Kill(p, syscall.SIGSTOP) != nil {
			return // gone already
		}
		waitStopped(p)
		all = append(all, p)
		for _, c := range Children(p) {
			walk(c)
		}
	}
	walk(pid)
	for _, p := range all {
		syscall.Kill(p, syscall.SIGKILL)
	}
}

// waitStopped waits (briefly) until p is stopped or dead, so that its list
// of children is final.
func waitStopped(p int) {
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			return
		}
		s := string(b)
		if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
			switch s[i+2] {
			case 'T', 't', 'Z', 'X':
				return
			}
		}
		time.Sleep(time.Millisecond)
	}
}

// Children lists p's children from every thread (a Go program forks from
// any of them).
func Children(p int) []int {
	var out []int
	files, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", p))
	for _, f := range files {
		b, _ := os.ReadFile(f)
		for _, w := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(w); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

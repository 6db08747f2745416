package snapshot

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// failingDisk mounts an ext4 file system that fails its writes after the
// write calls have returned: it lies on a loop device whose backing file
// is on a tmpfs of 16 MiB, far too small for it, so the kernel's
// writeback gets I/O errors. It returns the mount point.
func failingDisk(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("loop devices and mounts need root")
	}
	for _, tool := range []string{"losetup", "mkfs.ext4"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	base := t.TempDir()
	backing, mnt := filepath.Join(base, "backing"), filepath.Join(base, "mnt")
	for _, d := range []string{backing, mnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := syscall.Mount("tmpfs", backing, "tmpfs", 0, "size=16m"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(backing, syscall.MNT_DETACH) })
	img := filepath.Join(backing, "disk.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 512<<20); err != nil { // sparse
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-O", "^has_journal", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	out, err := exec.Command("losetup", "--find", "--show", img).Output()
	if err != nil {
		t.Fatalf("losetup: %v", err)
	}
	loop := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", loop).Run() })
	if err := syscall.Mount(loop, mnt, "ext4", 0, ""); err != nil {
		t.Fatalf("mount %s: %v", loop, err)
	}
	t.Cleanup(func() { syscall.Unmount(mnt, syscall.MNT_DETACH) })
	return mnt
}

// backupOf backs up a directory holding one file of n random bytes into
// a new repository in a directory store.
func backupOf(t *testing.T, n int) *Repository {
	t.Helper()
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "data"), randBytes(n), 0o644); err != nil {
		t.Fatal(err)
	}
	s := fileStore(t)
	r := openRepo(t, s, nil)
	if _, err := r.Backup(context.Background(), BackupRequest{Dir: src}); err != nil {
		t.Fatal(err)
	}
	return r
}

// TestDiskErrorFailsRestore restores onto a failing disk more than
// flushEvery, so the first errors reach a background syncfs. The restore
// must fail and stay marked incomplete.
func TestDiskErrorFailsRestore(t *testing.T) {
	mnt := failingDisk(t)
	r := backupOf(t, flushEvery+32<<20)
	dst := filepath.Join(mnt, "data")
	_, err := r.Restore(context.Background(), RestoreRequest{Target: dst})
	if err == nil {
		t.Fatal("a restore onto a disk that fails its writes succeeded")
	}
	// The writes themselves went to the page cache; only a sync can see
	// that the disk failed them.
	if !strings.Contains(err.Error(), "sync restored data") {
		t.Errorf("restore: %v, want the failed sync", err)
	}
	if _, ok := RestoredFrom(dst); ok {
		t.Error("the failed restore has a completion marker")
	}
	if !RestoreIncomplete(dst) {
		t.Error("the failed restore is not marked incomplete")
	}
}

// TestDiskErrorUnderHookFailsFinish: a restore made Unfinished succeeds,
// then a post_restore hook's writes fail on the disk, and somebody else's
// syncfs sees the error first (another process on a shared file system).
// syncfs tells each error once to each descriptor open before it was
// seen: the Finisher, opened before the hook, still reports it, and the
// target stays a half restore. (A descriptor opened after it was seen,
// what finishing used before, is not told.)
func TestDiskErrorUnderHookFailsFinish(t *testing.T) {
	mnt := failingDisk(t)
	r := backupOf(t, 1<<20)
	dst := filepath.Join(mnt, "data")
	if _, err := r.Restore(context.Background(), RestoreRequest{Target: dst, Unfinished: true}); err != nil {
		t.Fatalf("restore of 1 MiB: %v", err)
	}
	fin, err := NewFinisher(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer fin.Close()
	if err := os.WriteFile(filepath.Join(dst, "written-by-the-hook"), randBytes(48<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	other, err := os.Open(mnt)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := unix.Syncfs(int(other.Fd())); err == nil {
		t.Fatal("the other syncfs saw no error: the disk did not fail")
	}
	if err := fin.Finish(); err == nil {
		t.Fatal("Finish reported no error for writes the disk failed")
	}
	if !RestoreIncomplete(dst) {
		t.Error("the target counts as complete")
	}
}

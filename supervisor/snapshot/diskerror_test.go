package snapshot

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/lifeboat/lifeboat/supervisor/storage"
)

// TestDiskErrorFailsRestore restores onto a disk that fails its writes
// after the write calls have returned: an ext4 file system on a loop
// device whose backing file lies on a tmpfs too small for it, so the
// kernel's writeback gets I/O errors. The restore writes more than
// flushEvery, so the first errors reach a background syncfs. The restore
// must fail and stay marked incomplete.
func TestDiskErrorFailsRestore(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("loop devices and mounts need root")
	}
	for _, tool := range []string{"losetup", "mkfs.ext4"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	ctx := context.Background()
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "big"), randBytes(flushEvery+32<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := storage.OpenFile(filepath.Join(t.TempDir(), "store"))
	if err != nil {
		t.Fatal(err)
	}
	r := openRepo(t, s, nil)
	if _, err := r.Backup(ctx, BackupRequest{Dir: src}); err != nil {
		t.Fatal(err)
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
	if err := os.Truncate(img, 512<<20); err != nil { // sparse: far more than the tmpfs holds
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

	dst := filepath.Join(mnt, "data")
	_, err = r.Restore(ctx, RestoreRequest{Target: dst})
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

package snapshot

import (
	"context"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/lifeboat/lifeboat/internal/testrig"
	"github.com/lifeboat/lifeboat/supervisor/storage"
)

// A real MariaDB's logical dump (mariadb-dump) and physical backup
// (mariabackup --stream) are streams of one snapshot in MinIO; each
// restores into a fresh server with the rows intact. A dump that fails
// fails the snapshot: nothing is listed.
func TestMariaDBStreams(t *testing.T) {
	ctx := context.Background()
	src := testrig.StartMariaDB(t, testrig.MariaDBOptions{})
	src.Exec(t, "CREATE DATABASE shop")
	src.Exec(t, "CREATE TABLE shop.orders (id INT PRIMARY KEY, item VARCHAR(64)) ENGINE=InnoDB")
	src.Exec(t, "INSERT INTO shop.orders VALUES (1, 'boat'), (2, 'oar'), (3, 'sail')")
	want := src.Exec(t, "SELECT id, item FROM shop.orders ORDER BY id")

	m := testrig.StartMinIO(t)
	store, err := storage.Open(ctx, m.StoreURL("mariadb", "repo"),
		storage.Options{AccessKey: m.AccessKey, SecretKey: m.SecretKey, CreateBucket: true})
	if err != nil {
		t.Fatal(err)
	}
	r := openRepo(t, store, []byte("mariadb streams key"))

	client := func(bin string, args ...string) []string {
		return append([]string{testrig.Binary(t, bin), "--no-defaults"}, args...)
	}
	dump := client("mariadb-dump", append(src.ClientArgs(), "--all-databases", "--single-transaction", "--gtid")...)
	physical := client("mariabackup", append([]string{"--backup", "--stream=xbstream", "--target-dir=" + t.TempDir()}, src.ClientArgs()...)...)

	// A failing dump (an unknown database) is a failed snapshot.
	broken := client("mariadb-dump", append(src.ClientArgs(), "--databases", "no_such_db")...)
	if _, err := r.Backup(ctx, BackupRequest{Streams: []StreamSource{{Name: "dump", Command: broken}}}); err == nil {
		t.Fatal("a backup whose mariadb-dump failed succeeded")
	}
	if list, err := r.Snapshots(ctx); err != nil || len(list) != 0 {
		t.Fatalf("after a failed dump: %d snapshots listed (%v)", len(list), err)
	}

	snap, err := r.Backup(ctx, BackupRequest{Streams: []StreamSource{{Name: "dump", Command: dump}, {Name: "physical", Command: physical}}})
	if err != nil {
		t.Fatal(err)
	}

	// The logical dump into a fresh server through the mariadb client.
	logical := testrig.StartMariaDB(t, testrig.MariaDBOptions{ServerID: 2})
	if _, err := r.Restore(ctx, RestoreRequest{Manifest: snap, Streams: map[string]StreamSink{
		"dump": {Command: client("mariadb", logical.ClientArgs()...)},
	}}); err != nil {
		t.Fatal(err)
	}
	if got := logical.Exec(t, "SELECT id, item FROM shop.orders ORDER BY id"); got != want {
		t.Errorf("rows after restoring the dump:\n%s\nwant:\n%s", got, want)
	}

	// A client that cannot reach its server fails the restore.
	if _, err := r.Restore(ctx, RestoreRequest{Manifest: snap, Streams: map[string]StreamSink{
		"dump": {Command: client("mariadb", "--socket="+filepath.Join(t.TempDir(), "none.sock"), "--user=root")},
	}}); err == nil {
		t.Error("restoring the dump through a client without a server succeeded")
	}

	// The physical backup: unpacked by mbstream, prepared, started.
	dir := t.TempDir()
	if _, err := r.Restore(ctx, RestoreRequest{Manifest: snap, Streams: map[string]StreamSink{
		"physical": {Command: []string{testrig.Binary(t, "mbstream"), "-x", "-C", dir}},
	}}); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(testrig.Binary(t, "mariabackup"), "--no-defaults", "--prepare", "--target-dir="+dir).CombinedOutput(); err != nil {
		t.Fatalf("mariabackup --prepare: %v\n%s", err, out)
	}
	physicalDB := testrig.StartMariaDB(t, testrig.MariaDBOptions{ServerID: 3, DataDir: dir})
	if got := physicalDB.Exec(t, "SELECT id, item FROM shop.orders ORDER BY id"); got != want {
		t.Errorf("rows in the restored physical backup:\n%s\nwant:\n%s", got, want)
	}
}

package testrig

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// MariaDBOptions configures StartMariaDB.
type MariaDBOptions struct {
	ServerID int      // --server-id; default 1
	DataDir  string   // existing data dir to start on (e.g. restored); default a fresh one
	Args     []string // extra mariadbd arguments
}

// MariaDB is a `mariadbd` on loopback with binary logging and strict GTIDs,
// as a replication primary or replica would run.
type MariaDB struct {
	*Server
	Socket   string
	Port     int
	DataDir  string
	ServerID int
}

// StartMariaDB initialises a data directory (unless one is given) and starts
// mariadbd on it, waiting until it answers queries.
func StartMariaDB(t testing.TB, opts MariaDBOptions) *MariaDB {
	t.Helper()
	bin := Binary(t, "mariadbd")
	client := Binary(t, "mariadb")
	if opts.ServerID == 0 {
		opts.ServerID = 1
	}
	root := t.TempDir()
	datadir := opts.DataDir
	if datadir == "" {
		datadir = filepath.Join(root, "data")
		install := Binary(t, "mariadb-install-db")
		args := []string{"--no-defaults", "--datadir=" + datadir, "--auth-root-authentication-method=normal", "--skip-test-db"}
		if os.Geteuid() == 0 {
			args = append(args, "--user=root")
		}
		if out, err := exec.Command(install, args...).CombinedOutput(); err != nil {
			t.Fatalf("testrig: mariadb-install-db: %v\n%s", err, out)
		}
	}
	db := &MariaDB{Socket: filepath.Join(root, "mysqld.sock"), Port: FreePort(t), DataDir: datadir, ServerID: opts.ServerID}
	args := []string{"--no-defaults", "--datadir=" + datadir, "--socket=" + db.Socket,
		"--port=" + strconv.Itoa(db.Port), "--bind-address=127.0.0.1",
		"--log-bin=mysql-bin", "--server-id=" + strconv.Itoa(opts.ServerID), "--gtid-strict-mode=ON",
		"--pid-file=" + filepath.Join(root, "mysqld.pid"), "--log-error=" + filepath.Join(root, "error.log"),
		"--innodb-buffer-pool-size=64M", "--innodb-log-file-size=16M"}
	if os.Geteuid() == 0 {
		args = append(args, "--user=root")
	}
	args = append(args, opts.Args...)
	db.Server = newServer(t, "mariadbd", bin, args, nil)
	db.startAndWait(t, func(ctx context.Context) error {
		out, err := exec.CommandContext(ctx, client, "--no-defaults", "-S", db.Socket, "-uroot", "-e", "SELECT 1").CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, strings.TrimSpace(string(out)))
		}
		return nil
	})
	t.Cleanup(db.Stop)
	return db
}

// Exec runs SQL through the mariadb client as root and returns its tab-separated
// output without column names; it fails the test on error.
func (db *MariaDB) Exec(t testing.TB, sql string) string {
	t.Helper()
	out, err := db.Query(sql)
	if err != nil {
		t.Fatalf("testrig: mariadb %q: %v", sql, err)
	}
	return out
}

// Query is Exec that returns the error instead of failing the test.
func (db *MariaDB) Query(sql string) (string, error) {
	client := LookBinary("mariadb")
	out, err := exec.Command(client, "--no-defaults", "-S", db.Socket, "-uroot", "-N", "-B", "-e", sql).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%v: %s", err, strings.TrimSpace(string(out)))
	}
	return strings.TrimSpace(string(out)), nil
}

// ClientArgs are the mariadb/mariabackup arguments that reach this server as root.
func (db *MariaDB) ClientArgs() []string {
	return []string{"--socket=" + db.Socket, "--user=root"}
}

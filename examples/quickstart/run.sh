#!/usr/bin/env bash
# The quickstart: one container's life and death on the file:// store, with
# no servers and no root.
#
#   1. build lifeboat
#   2. run an app that writes data under `lifeboat run`
#   3. `lifeboat notify backup --wait`: the data is durable in the store
#   4. stop the "container" (SIGTERM: lifeboat stops the app, takes a final
#      backup) and throw its data directory away
#   5. run again on the empty directory: lifeboat restores the data before
#      the app starts, and the app sees it
#
# Exit status 0 when the data came back identical. Run it from anywhere:
#   bash examples/quickstart/run.sh
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/lifeboat-quickstart.XXXXXX")
pid=
cleanup() {
	[ -n "$pid" ] && kill "$pid" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

say() { printf '\n==> %s\n' "$*"; }

say "building lifeboat into $work/bin"
(cd "$root" && go build -o "$work/bin/lifeboat" ./cmd/lifeboat)
lifeboat=$work/bin/lifeboat

data=$work/data                # the app's data directory (a volume in a real container)
store=file://$work/store       # the object store; s3://... in production
export LIFEBOAT_SOCKET=$work/lifeboat.sock

# The app: appends a journal entry every 100 ms, and on SIGTERM writes a
# clean-shutdown record and exits 0, as a well-behaved database would.
app='trap "echo clean-shutdown >> $0/journal; exit 0" TERM
i=0
while :; do
	i=$((i+1))
	echo "entry $i" >> "$0/journal"
	sleep 0.1
done'

say "container 1: lifeboat run --data $data --store $store -- <app>"
"$lifeboat" run --data "$data" --store "$store" --log-format text -- sh -c "$app" "$data" 2> "$work/run1.log" &
pid=$!

# Wait (up to 20 s) until the app has written a few entries.
for _ in $(seq 200); do
	[ -f "$data/journal" ] && [ "$(wc -l < "$data/journal")" -ge 5 ] && break
	sleep 0.1
done
[ -f "$data/journal" ] || { echo "the app never wrote; lifeboat's log:"; cat "$work/run1.log"; exit 1; }

say "lifeboat notify backup --wait"
id=$("$lifeboat" notify backup --wait --reason quickstart)
echo "snapshot $id is durable"

say "lifeboat status"
"$lifeboat" status | sed -n '/^data:/,$p'

say "stopping container 1 (SIGTERM): the app flushes, lifeboat takes the final backup"
kill -TERM "$pid"
wait "$pid"
pid=
grep -E 'final backup|snapshot committed' "$work/run1.log" | sed 's/^/  /'
cp -a "$data" "$work/before"
echo "the journal ends with: $(tail -n 1 "$data/journal")"

say "the container is gone: deleting $data"
rm -rf "$data"

say "container 2: the same command on an empty data directory"
"$lifeboat" run --data "$data" --store "$store" --log-format text -- \
	sh -c 'echo "app sees $(wc -l < "$0/journal") journal lines, the last: $(tail -n 1 "$0/journal")"' "$data" 2> "$work/run2.log"
grep -E 'restor' "$work/run2.log" | sed 's/^/  /'

say "comparing the data before the loss with the data after the restore"
if diff -r --exclude=.lifeboat-restored "$work/before" "$data"; then
	echo "identical: the data survived the container"
else
	echo "the restored data differs"
	exit 1
fi

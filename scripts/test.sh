#!/usr/bin/env bash
# The whole test suite: installs the real servers (cached after the first
# run), then runs every package's tests against them. CI runs exactly this.
# Extra arguments go to `go test` (e.g. scripts/test.sh -run Restore ./supervisor/...).
set -euo pipefail
cd "$(dirname "$0")/.."

deps_bin=$(bash scripts/test-deps.sh all | tail -n 1)
export PATH="$deps_bin:$PATH:/usr/sbin:/sbin"

go vet ./...
unformatted=$(gofmt -l $(git ls-files '*.go') 2>/dev/null || true)
if [ -n "$unformatted" ]; then
  echo "gofmt would change: $unformatted" >&2
  exit 1
fi

if [ $# -eq 0 ]; then
  set -- ./...
fi
# -p 2: the packages that start servers run two at a time on the 2-core CI machine.
exec go test -p 2 -timeout 30m -count=1 "$@"

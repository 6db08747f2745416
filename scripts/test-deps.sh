#!/usr/bin/env bash
# Installs the real servers and tools the test suite and benchmarks talk to.
# Idempotent: Debian packages are installed only when missing, and the Go-built
# servers (MinIO, Consul, Vault) are cached in $LIFEBOAT_DEPS_BIN keyed by
# version, so a second run takes seconds.
set -euo pipefail

MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
CONSUL_VERSION=v1.22.5
VAULT_VERSION=v1.21.0

BIN=${LIFEBOAT_DEPS_BIN:-$(go env GOPATH)/lifeboat-deps/bin}
mkdir -p "$BIN"
log() { printf 'test-deps: %s\n' "$*" >&2; }

need_apt=()
for pair in mariadbd:mariadb-server mariabackup:mariadb-backup restic:restic rclone:rclone \
            tini:tini dumb-init:dumb-init git:git unshare:util-linux ip:iproute2 hyperfine:hyperfine; do
  cmd=${pair%%:*} pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  log "apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# build NAME VERSION MODULE [replace lines...]: builds MODULE@VERSION through a
# throw-away wrapper module (Consul's and Vault's go.mod carry replace
# directives, so `go install` refuses them).
build_wrapped() {
  local name=$1 version=$2 module=$3; shift 3
  local out="$BIN/$name-$version"
  if [ -x "$out" ]; then ln -sf "$out" "$BIN/$name"; return; fi
  log "building $name $version (several minutes, cached afterwards)"
  local dir; dir=$(mktemp -d)
  cat >"$dir/go.mod" <<MOD
module lifeboat.local/deps/$name

go 1.25

require $module $version
MOD
  for r in "$@"; do echo "replace $r" >>"$dir/go.mod"; done
  printf '//go:build tools\n\npackage tools\n\nimport _ "%s"\n' "$module" >"$dir/tools.go"
  (cd "$dir" && GONOSUMDB=github.com/hashicorp GOFLAGS=-mod=mod go mod tidy >/dev/null 2>&1 || true
   cd "$dir" && GONOSUMDB=github.com/hashicorp GOFLAGS=-mod=mod CGO_ENABLED=0 go build -o "$out.tmp" "$module")
  mv "$out.tmp" "$out"
  rm -rf "$dir"
  ln -sf "$out" "$BIN/$name"
}

build_minio() {
  local out="$BIN/minio-$MINIO_VERSION"
  if [ ! -x "$out" ]; then
    log "building minio $MINIO_VERSION (several minutes, cached afterwards)"
    local gobin; gobin=$(mktemp -d)
    CGO_ENABLED=0 GOBIN="$gobin" go install "github.com/minio/minio@$MINIO_VERSION"
    mv "$gobin/minio" "$out"
    rm -rf "$gobin"
  fi
  ln -sf "$out" "$BIN/minio"
}

case "${1:-all}" in
  minio) build_minio ;;
  consul) build_wrapped consul "$CONSUL_VERSION" github.com/hashicorp/consul ;;
  vault) build_wrapped vault "$VAULT_VERSION" github.com/hashicorp/vault \
           'github.com/99designs/keyring => github.com/Jeffail/keyring v1.2.3' \
           'github.com/ma314smith/signedxml v1.1.1 => github.com/moov-io/signedxml v1.1.1' ;;
  all)
    build_minio
    build_wrapped consul "$CONSUL_VERSION" github.com/hashicorp/consul
    build_wrapped vault "$VAULT_VERSION" github.com/hashicorp/vault \
      'github.com/99designs/keyring => github.com/Jeffail/keyring v1.2.3' \
      'github.com/ma314smith/signedxml v1.1.1 => github.com/moov-io/signedxml v1.1.1'
    ;;
  *) echo "usage: $0 [all|minio|consul|vault]" >&2; exit 2 ;;
esac
echo "$BIN"

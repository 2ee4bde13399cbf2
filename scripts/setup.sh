#!/usr/bin/env bash
# What `make run` (setup.sh run) and `make test` (setup.sh test) need besides Rust: checked
# in a few milliseconds, and installed only when something is missing. On Debian and
# Ubuntu with apt (through sudo when not root); elsewhere it names what to install.
# `.ci/run` goes through here too, so CI and a newcomer's machine take the same path.
set -euo pipefail
want=${1:-test}
case "$want" in run | test | docs) ;; *)
  echo "usage: $0 run|test|docs" >&2
  exit 2
  ;;
esac

missing=()     # Debian packages
need() {       # need PACKAGE CHECK...: the package when the check fails
  local pkg=$1
  shift
  "$@" >/dev/null 2>&1 || missing+=("$pkg")
}
has() { command -v "$1"; }

# The build: a C toolchain (mimalloc, OpenSSL bindings), cmake (zlib-ng, for Pingora), OpenSSL's
# headers, and protoc with its well-known types (etcd-client compiles etcd's protos).
need build-essential has cc
need cmake has cmake
need pkg-config has pkg-config
need libssl-dev pkg-config --exists openssl
need protobuf-compiler has protoc
need libprotobuf-dev test -e /usr/include/google/protobuf/descriptor.proto
# The system's trust store, which every outbound TLS connection verifies providers with.
need ca-certificates test -s /etc/ssl/certs/ca-certificates.crt
if [ "$want" = test ]; then
  # The suite starts its own Redis and etcd on free ports, checks /metrics and the alert
  # rules with promtool, signs test certificates with openssl, runs the SDKs in a venv.
  need redis-server has redis-server
  need redis-tools has redis-cli
  need etcd-server has etcd
  need etcd-client has etcdctl
  need prometheus has promtool
  need openssl has openssl
  need curl has curl
  need python3-venv python3 -c 'import ensurepip, venv'
  # The console's test drives a headless chromium through its matching chromedriver.
  need chromium has chromium
  need chromium-driver has chromedriver
fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  if has apt-get >/dev/null; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
      if ! has sudo >/dev/null; then
        echo "setup: not root and no sudo: install ${missing[*]} as root, then run this again" >&2
        exit 1
      fi
      sudo=sudo
    fi
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    cat >&2 <<EOF
setup: no apt-get here. Install these (Debian package names; on Fedora/RHEL, Arch or
macOS the same tools under their names there: a C compiler, cmake, pkg-config, OpenSSL's
headers, protoc with its include files, redis, etcd with etcdctl, promtool from
Prometheus, openssl, curl, python3 with venv):
  ${missing[*]}
EOF
    exit 1
  fi
fi

# The book (make docs): mdBook, from crates.io (no distribution packages it), without its
# serve and watch features, which the build does not use.
MDBOOK_VERSION=0.5.4
if [ "$want" = docs ] && [ "$(mdbook --version 2>/dev/null)" != "mdbook v$MDBOOK_VERSION" ]; then
  echo "setup: installing mdbook $MDBOOK_VERSION" >&2
  cargo install --locked mdbook --version "$MDBOOK_VERSION" --no-default-features --features search
fi

if [ "$want" = test ] && ! cargo nextest --version >/dev/null 2>&1; then
  echo "setup: installing cargo-nextest" >&2
  cargo install --locked cargo-nextest
fi

#!/usr/bin/env bash
# The vendored Pingora crates (vendor/pingora-core, vendor/pingora-proxy) are the published
# crates, stripped, plus the patch series in vendor/patches/ applied in order. This script
# rebuilds them from the published .crate files (vendor/README.md says why each patch exists).
#
#   scripts/vendor-pingora.sh check [VERSION]  the vendored trees equal upstream + series
#                                              (exit 1 and the difference if not; exit 0
#                                              with "SKIP" when the crates cannot be had)
#   scripts/vendor-pingora.sh apply [VERSION]  replace the vendored trees with upstream +
#                                              series (a new VERSION: re-vendoring)
#   scripts/vendor-pingora.sh diff  [VERSION]  the vendored trees' changes beyond the series,
#                                              as a patch to save as the series' next file
#
# VERSION defaults to the one vendored now. The .crate files come from cargo's own cache, or
# else through `cargo fetch` (crates.io, the same registry the build uses); offline, with
# nothing cached, `check` skips and says so, the others fail.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENDOR="$ROOT/vendor"
CRATES=(pingora-core pingora-proxy)
MODE="${1:-check}"
VERSION="${2:-$(sed -n 's/^version = "\(.*\)"$/\1/p' "$VENDOR/pingora-core/Cargo.toml" | head -n1)}"
CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"

case "$MODE" in check | apply | diff) ;; *)
    echo "usage: $0 check|apply|diff [VERSION]" >&2
    exit 2
    ;;
esac

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

cached() { ls "$CARGO_HOME"/registry/cache/*/"$1-$VERSION.crate" 2>/dev/null | head -n1; }

# Finds (or fetches) each crate; prints nothing and returns 1 when one cannot be had.
find_crates() {
    local missing=0 c
    for c in "${CRATES[@]}"; do [ -n "$(cached "$c")" ] || missing=1; done
    if [ "$missing" = 1 ]; then
        mkdir -p "$TMP/fetch/src"
        touch "$TMP/fetch/src/lib.rs"
        {
            printf '[package]\nname = "vendor-fetch"\nversion = "0.0.0"\nedition = "2021"\npublish = false\n\n[dependencies]\n'
            for c in "${CRATES[@]}"; do printf '%s = "=%s"\n' "$c" "$VERSION"; done
            printf '\n[workspace]\n'
        } >"$TMP/fetch/Cargo.toml"
        local host
        host="$(rustc -vV | sed -n 's/^host: //p')"
        (cd "$TMP/fetch" && cargo fetch -q --target "$host") >"$TMP/fetch.log" 2>&1 || return 1
    fi
    for c in "${CRATES[@]}"; do [ -n "$(cached "$c")" ] || return 1; done
}

if ! find_crates; then
    if [ "$MODE" = check ]; then
        echo "SKIP vendor check: pingora-core/pingora-proxy $VERSION are not in cargo's cache and" \
            "could not be fetched (offline?); the vendored trees were NOT compared with upstream + series."
        exit 0
    fi
    echo "cannot get pingora-core/pingora-proxy $VERSION:" >&2
    cat "$TMP/fetch.log" >&2 2>/dev/null || true
    exit 1
fi

# Upstream, stripped: examples, benches, the lock file and cargo's packaging files removed,
# and the [[example]]/[[bench]] tables (each ends at a blank line) dropped from Cargo.toml.
mkdir -p "$TMP/new"
for c in "${CRATES[@]}"; do
    tar -xzf "$(cached "$c")" -C "$TMP"
    mv "$TMP/$c-$VERSION" "$TMP/new/$c"
    (
        cd "$TMP/new/$c"
        rm -rf examples benches Cargo.lock Cargo.toml.orig .cargo_vcs_info.json .cargo-ok
        awk '/^\[\[(example|bench)\]\]$/ { skip = 1 } skip && /^$/ { skip = 0; next } !skip' \
            Cargo.toml >Cargo.toml.new
        mv Cargo.toml.new Cargo.toml
    )
done

# The series, in order; git apply refuses a patch that does not apply exactly (no fuzz).
# GIT_CEILING_DIRECTORIES keeps it from treating an enclosing repository as the target.
for p in "$VENDOR"/patches/[0-9][0-9][0-9][0-9]-*.patch; do
    (cd "$TMP/new" && GIT_CEILING_DIRECTORIES="$TMP" git apply -p1 "$p") || {
        echo "$(basename "$p") does not apply to $VERSION" >&2
        exit 1
    }
done

case "$MODE" in
check)
    if diff -r "$TMP/new/pingora-core" "$VENDOR/pingora-core" >"$TMP/diff" &&
        diff -r "$TMP/new/pingora-proxy" "$VENDOR/pingora-proxy" >>"$TMP/diff"; then
        echo "vendor check: vendor/pingora-core and vendor/pingora-proxy are $VERSION + vendor/patches ($(ls "$VENDOR"/patches/*.patch | wc -l) patches)"
    else
        echo "vendor check FAILED: the vendored trees differ from $VERSION + vendor/patches" \
            "(a change not in the series? run $0 diff):" >&2
        diff -r "$TMP/new/pingora-core" "$VENDOR/pingora-core" >&2 || true
        diff -r "$TMP/new/pingora-proxy" "$VENDOR/pingora-proxy" >&2 || true
        exit 1
    fi
    ;;
apply)
    for c in "${CRATES[@]}"; do
        rm -rf "${VENDOR:?}/$c"
        cp -a "$TMP/new/$c" "$VENDOR/$c"
    done
    echo "vendor/pingora-core and vendor/pingora-proxy are now $VERSION + vendor/patches"
    ;;
diff)
    mkdir -p "$TMP/cmp/a" "$TMP/cmp/b"
    for c in "${CRATES[@]}"; do
        mv "$TMP/new/$c" "$TMP/cmp/a/$c"
        cp -a "$VENDOR/$c" "$TMP/cmp/b/$c"
    done
    # git diff exits 1 when there are differences: that is the expected case.
    (cd "$TMP/cmp" && git diff --no-index --no-color --src-prefix= --dst-prefix= a b) || [ $? = 1 ]
    ;;
esac

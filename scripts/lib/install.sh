# shellcheck shell=bash
# Installing what the project needs on Debian 12.
#   chat_install_packages   apt-get installs the missing build and run-time packages.
#   chat_install_nats       puts nats-server 2.10 (Debian 13's package) into $CHAT_DEPS.
#   chat_nats_bin           prints the path of the nats-server to use (fails if none).
#   chat_build              configures (once) and builds the project into chat_build_dir.
# Needs common.sh.

CHAT_APT_PACKAGES=(
    build-essential cmake pkg-config libnats-dev libwebsockets-dev libwebsockets-evlib-ev libev-dev
    libprotobuf-c-dev protobuf-c-compiler libhiredis-dev check libjansson-dev libcurl4-openssl-dev
    libzstd-dev libssl-dev libpq-dev redis-server postgresql-15 postgresql-client-15 curl
    ca-certificates clang libclang-rt-14-dev openssl python3-websockets
)

# chat_apt_missing PKG...: prints the packages that are not installed.
chat_apt_missing() {
    local p status
    for p in "$@"; do
        status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)
        [[ "$status" == ii* ]] || printf '%s\n' "$p"
    done
}

CHAT_APT_UPDATED=

# chat_apt_install PKG...: apt-get install, with one apt-get update first per run.
chat_apt_install() {
    local -a opts=(-y -q --no-install-recommends -o DPkg::Lock::Timeout=300)
    if [[ -z "$CHAT_APT_UPDATED" ]]; then
        chat_log "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300 update >/dev/null \
            || chat_die "apt-get update failed"
        CHAT_APT_UPDATED=1
    fi
    chat_log "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install "${opts[@]}" "$@" >/dev/null \
        || chat_die "apt-get install $* failed"
}

chat_install_packages() {
    local -a missing
    mapfile -t missing < <(chat_apt_missing "${CHAT_APT_PACKAGES[@]}")
    if (( ${#missing[@]} == 0 )); then
        return 0
    fi
    [[ $EUID -eq 0 ]] || chat_die "packages missing (${missing[*]}); run as root to install them"
    chat_apt_install "${missing[@]}"
    mapfile -t missing < <(chat_apt_missing "${CHAT_APT_PACKAGES[@]}")
    (( ${#missing[@]} == 0 )) || chat_die "still not installed after apt-get: ${missing[*]}"
}

# chat_nats_version BIN: prints "MAJOR MINOR" of a nats-server binary.
chat_nats_version() {
    local out
    out=$("$1" --version 2>/dev/null) || return 1
    [[ "$out" =~ v?([0-9]+)\.([0-9]+)\.[0-9]+ ]] || return 1
    printf '%s %s\n' "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}"
}

# chat_nats_has_sync BIN: true if the server knows jetstream.sync_interval (2.10 or newer).
chat_nats_has_sync() {
    local v
    v=$(chat_nats_version "$1") || return 1
    local major=${v% *} minor=${v#* }
    (( major > 2 || (major == 2 && minor >= 10) ))
}

# chat_nats_bin: the nats-server to run: the one in $CHAT_DEPS, else one on the system.
chat_nats_bin() {
    local deps b
    deps=$(chat_deps_dir)
    for b in "$deps/nats/usr/sbin/nats-server" "$deps/nats/usr/bin/nats-server" \
             /usr/sbin/nats-server /usr/bin/nats-server; do
        if [[ -x "$b" ]] && chat_nats_version "$b" >/dev/null; then
            printf '%s\n' "$b"
            return 0
        fi
    done
    return 1
}

# chat_apt_mirror: the Debian archive URI the machine's own apt configuration uses for its
# release (so we reach the same, and only the configured, registry).
chat_apt_mirror() {
    local codename='' uri rel target
    if [[ -r /etc/os-release ]]; then
        codename=$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")
    fi
    codename=${codename:-bookworm}
    # shellcheck disable=SC2016  # $(...) are apt's format fields
    local fmt='$(REPO_URI)|$(RELEASE)|$(TARGET_OF)'
    while IFS='|' read -r uri rel target; do
        if [[ "$target" == deb && "$rel" == "$codename" ]]; then
            printf '%s\n' "${uri%/}"
            return 0
        fi
    done < <(apt-get indextargets --no-release-info --format "$fmt" 2>/dev/null)
    return 1
}

# chat_fetch_deb DIR SUITE_LINE PKG: downloads PKG with a private apt state in DIR, using a
# private sources list that holds SUITE_LINE; does not touch the machine's apt sources.
# Prints the path of the .deb.
chat_fetch_deb() {
    local dir=$1 line=$2 pkg=$3
    rm -rf -- "$dir"
    mkdir -p -- "$dir/lists/partial" "$dir/cache/archives/partial" "$dir/debs"
    printf '%s\n' "$line" >"$dir/sources.list"
    local -a o=(
        -o "Dir::Etc::sourcelist=$dir/sources.list"
        -o Dir::Etc::sourceparts=-
        -o "Dir::State::Lists=$dir/lists"
        -o "Dir::Cache=$dir/cache"
        -o APT::Get::List-Cleanup=0
        -o APT::Sandbox::User=root
        -q
    )
    apt-get "${o[@]}" update >"$dir/update.log" 2>&1 || return 1
    (cd -- "$dir/debs" && apt-get "${o[@]}" download "$pkg") >"$dir/download.log" 2>&1 || return 1
    local deb
    for deb in "$dir/debs/${pkg}_"*.deb; do
        [[ -f "$deb" ]] && { printf '%s\n' "$deb"; return 0; }
    done
    return 1
}

# chat_unpack_nats DEB DEST: extracts the package into DEST (atomically) and checks that
# its nats-server runs.
chat_unpack_nats() {
    local deb=$1 dest=$2 tmp
    tmp="$dest.tmp.$$"
    rm -rf -- "$tmp"
    mkdir -p -- "$tmp"
    dpkg -x "$deb" "$tmp" || { rm -rf -- "$tmp"; return 1; }
    local b=''
    for b in "$tmp/usr/sbin/nats-server" "$tmp/usr/bin/nats-server"; do
        [[ -x "$b" ]] && break
    done
    if [[ ! -x "$b" ]] || ! chat_nats_version "$b" >/dev/null; then
        rm -rf -- "$tmp"
        return 1
    fi
    rm -rf -- "$dest"
    mv -- "$tmp" "$dest"
}

# chat_nats_cached: true if $CHAT_DEPS holds a nats-server; with "sync", one of 2.10 or newer.
chat_nats_cached() {
    local bin deps
    deps=$(chat_deps_dir)
    bin=$(chat_nats_bin) && [[ "$bin" == "$deps/"* ]] || return 1
    [[ "${1:-}" != sync ]] || chat_nats_has_sync "$bin"
}

chat_install_nats() {
    local deps bin lockfd
    deps=$(chat_deps_dir)
    chat_nats_cached sync && return 0
    mkdir -p -- "$deps"
    # One fetch at a time per checkout (two stacks may start together).
    exec {lockfd}>"$deps/.nats.lock"
    flock "$lockfd"
    if chat_nats_cached sync; then
        exec {lockfd}>&-
        return 0
    fi

    local keyring=/usr/share/keyrings/debian-archive-keyring.gpg mirror deb v
    if [[ ! -e /usr/share/keyrings/debian-archive-trixie-stable.gpg && $EUID -eq 0 ]]; then
        # Older bookworm keyrings lack the Debian 13 keys; the current one has them.
        (chat_apt_install debian-archive-keyring) || true
    fi
    if mirror=$(chat_apt_mirror); then
        chat_log "fetching nats-server from Debian 13 (trixie) via $mirror"
        if deb=$(chat_fetch_deb "$deps/apt-trixie" "deb [signed-by=$keyring] $mirror trixie main" nats-server) \
            && chat_unpack_nats "$deb" "$deps/nats" \
            && bin=$(chat_nats_bin) && chat_nats_has_sync "$bin"; then
            rm -rf -- "$deps/apt-trixie"
            v=$("$bin" --version 2>&1)
            chat_log "using $v ($bin)"
            exec {lockfd}>&-
            return 0
        fi
        chat_note "fetching nats-server from trixie failed; logs in $deps/apt-trixie"
    else
        chat_note "could not find the machine's Debian mirror in its apt configuration"
    fi

    # Fallback: Debian 12's own nats-server 2.9 (unpacked the same way, so no system service
    # is installed or started). Later runs try trixie again.
    chat_warn "falling back to Debian 12's nats-server 2.9: it has no jetstream sync_interval," \
        "so JetStream data will NOT be fsynced (an acked message can be lost on power failure)"
    if chat_nats_cached; then
        exec {lockfd}>&-
        return 0
    fi
    if mirror=$(chat_apt_mirror) \
        && deb=$(chat_fetch_deb "$deps/apt-bookworm" "deb [signed-by=$keyring] $mirror bookworm main" nats-server) \
        && chat_unpack_nats "$deb" "$deps/nats"; then
        rm -rf -- "$deps/apt-bookworm"
    elif ! chat_nats_bin >/dev/null; then
        chat_apt_install nats-server
    fi
    exec {lockfd}>&-
    chat_nats_bin >/dev/null || chat_die "no nats-server could be installed"
}

# chat_build: configure the build directory if it has no CMake cache (or if CHAT_SANITIZE
# changed), then build with two jobs. Needs CHAT_ROOT.
chat_build() {
    local dir cached=''
    dir=$(chat_build_dir)
    local -a cfg=(-S "$CHAT_ROOT" -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo)
    if [[ -n "${CHAT_SANITIZE:-}" ]]; then
        cfg+=("-DCHAT_SANITIZE=$CHAT_SANITIZE")
    fi
    if [[ -f "$dir/CMakeCache.txt" ]]; then
        cached=$(sed -n 's/^CHAT_SANITIZE:[A-Z]*=//p' "$dir/CMakeCache.txt")
    fi
    if [[ ! -f "$dir/CMakeCache.txt" || "$cached" != "${CHAT_SANITIZE:-$cached}" ]]; then
        chat_log "cmake configure ${dir#"$CHAT_ROOT/"}${CHAT_SANITIZE:+ (CHAT_SANITIZE=$CHAT_SANITIZE)}"
        cmake "${cfg[@]}" || chat_die "cmake configure failed"
    fi
    chat_log "cmake build ${dir#"$CHAT_ROOT/"}"
    cmake --build "$dir" -j2 || chat_die "build failed"
}

# chat_install_browser: what the browser tests (tests/browser, ctest label "browser") need:
# Debian's chromium (and an emoji font, so the demo's screenshot shows emoji, not boxes), and
# playwright-core in tests/browser/node_modules from the committed package-lock.json. It never
# downloads a browser: the tests drive /usr/bin/chromium through playwright-core's
# executablePath.
chat_install_browser() {
    local dir="$CHAT_ROOT/tests/browser" lock stamp
    local -a missing
    mapfile -t missing < <(chat_apt_missing chromium fonts-noto-color-emoji)
    if (( ${#missing[@]} > 0 )); then
        [[ $EUID -eq 0 ]] || chat_die "packages missing (${missing[*]}); run as root to install them"
        chat_apt_install "${missing[@]}"
    fi
    [[ -x /usr/bin/chromium ]] || chat_die "/usr/bin/chromium is missing after apt-get install chromium"
    if ! command -v npm >/dev/null 2>&1; then
        [[ $EUID -eq 0 ]] || chat_die "npm is missing; run as root to install it"
        chat_apt_install nodejs npm
    fi
    [[ -f "$dir/package-lock.json" ]] || chat_die "$dir/package-lock.json is missing"
    # npm ci again only when the lock changed since the last install.
    lock=$(sha256sum -- "$dir/package-lock.json")
    lock=${lock%% *}
    stamp="$dir/node_modules/.chat-lock-sha256"
    if [[ -d "$dir/node_modules/playwright-core" && -f "$stamp" && "$(cat -- "$stamp")" == "$lock" ]]; then
        return 0
    fi
    chat_log "npm ci (tests/browser: playwright-core)"
    (cd -- "$dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error >/dev/null) \
        || chat_die "npm ci in $dir failed"
    printf '%s\n' "$lock" >"$stamp"
}

# chat_install_fault_tools: what the fault suite needs beyond the build: strace (the power-loss
# scenario traces nats-server's writes and fsyncs to cut its store back to its last fsync).
chat_install_fault_tools() {
    command -v strace >/dev/null 2>&1 && return 0
    [[ $EUID -eq 0 ]] || chat_die "strace is missing; run as root to install it"
    chat_apt_install strace
}

# chat_install_ops_tools: the validators of the deployment files (deploy/check.sh), none of them
# a service on this machine: docker-compose from apt (small, for `docker-compose config`), and
# promtool and haproxy from Debian 12's prometheus and haproxy packages, unpacked with dpkg -x into
# $CHAT_DEPS (prometheus/, haproxy/ with the libraries haproxy needs beside it), as nats-server
# is; nothing is installed as a package or started. About 25 MB to download once.
chat_install_ops_tools() {
    local deps mirror keyring=/usr/share/keyrings/debian-archive-keyring.gpg deb p lockfd
    deps=$(chat_deps_dir)
    if ! command -v docker-compose >/dev/null 2>&1; then
        [[ $EUID -eq 0 ]] || chat_die "docker-compose is missing; run as root to install it"
        chat_apt_install docker-compose
    fi
    mkdir -p -- "$deps"
    exec {lockfd}>"$deps/.ops.lock"
    flock "$lockfd"
    if [[ ! -x "$deps/prometheus/usr/bin/promtool" || ! -x "$deps/haproxy/usr/sbin/haproxy" ]]; then
        mirror=$(chat_apt_mirror) || chat_die "could not find the machine's Debian mirror in its apt configuration"
        if [[ ! -x "$deps/prometheus/usr/bin/promtool" ]]; then
            chat_log "fetching promtool (Debian 12's prometheus package) into ${deps#"$CHAT_ROOT/"}/prometheus"
            deb=$(chat_fetch_deb "$deps/apt-ops" "deb [signed-by=$keyring] $mirror bookworm main" prometheus) \
                || chat_die "downloading Debian's prometheus package failed; logs in $deps/apt-ops"
            rm -rf -- "$deps/prometheus.tmp"
            dpkg -x "$deb" "$deps/prometheus.tmp" || chat_die "dpkg -x $deb failed"
            rm -rf -- "$deps/prometheus"
            mv -- "$deps/prometheus.tmp" "$deps/prometheus"
        fi
        if [[ ! -x "$deps/haproxy/usr/sbin/haproxy" ]]; then
            chat_log "fetching haproxy (Debian 12's package and its libraries) into ${deps#"$CHAT_ROOT/"}/haproxy"
            rm -rf -- "$deps/haproxy.tmp"
            for p in haproxy liblua5.3-0 libopentracing-c-wrapper0 libopentracing1; do
                deb=$(chat_fetch_deb "$deps/apt-ops" "deb [signed-by=$keyring] $mirror bookworm main" "$p") \
                    || chat_die "downloading Debian's $p package failed; logs in $deps/apt-ops"
                dpkg -x "$deb" "$deps/haproxy.tmp" || chat_die "dpkg -x $deb failed"
            done
            rm -rf -- "$deps/haproxy"
            mv -- "$deps/haproxy.tmp" "$deps/haproxy"
        fi
        rm -rf -- "$deps/apt-ops"
    fi
    exec {lockfd}>&-
    "$deps/prometheus/usr/bin/promtool" --version >/dev/null 2>&1 || chat_die "$deps/prometheus/usr/bin/promtool does not run"
    local libs
    libs=$(printf '%s:' "$deps"/haproxy/usr/lib/*-linux-gnu)
    LD_LIBRARY_PATH="$libs" "$deps/haproxy/usr/sbin/haproxy" -v >/dev/null 2>&1 \
        || chat_die "$deps/haproxy/usr/sbin/haproxy does not run"
}

# chat_install_s3: the S3-compatible server of the archive tests (tests/integration/test_archive.c)
# into $CHAT_DEPS/s3: @20minutes/s3rver 5.0.0 from npm, a fork of s3rver that checks AWS
# Signature V4 signatures (s3rver 3.7.1 accepts any V4 signature unchecked), so a signing mistake in
# the archive's libcurl requests fails the tests; it serves path-style PUT, range GET and DELETE and
# keeps objects as files. Node 20+ is needed (its router); with an older Node the plain s3rver 3.7.1
# is installed instead, with a warning. The launcher $CHAT_DEPS/s3/s3-server.js takes ADDRESS PORT
# DIRECTORY BUCKET (access key and secret S3RVER); the test starts it on 127.0.0.1 and stops it by pid.
chat_install_s3() {
    local deps dir want major lockfd
    deps=$(chat_deps_dir)
    dir="$deps/s3"
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        [[ $EUID -eq 0 ]] || chat_die "node and npm are missing; run as root to install them"
        chat_apt_install nodejs npm
    fi
    major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
    want='@20minutes/s3rver@5.0.0'
    if ((major < 20)); then
        chat_warn "node $(node --version) is older than 20: installing s3rver 3.7.1, which does not check SigV4 signatures"
        want='s3rver@3.7.1'
    fi
    if [[ -f "$dir/s3-server.js" && "$(cat -- "$dir/.chat-installed" 2>/dev/null)" == "$want" ]]; then
        return 0
    fi
    mkdir -p -- "$dir"
    exec {lockfd}>"$deps/.s3.lock"
    flock "$lockfd"
    if [[ ! -f "$dir/s3-server.js" || "$(cat -- "$dir/.chat-installed" 2>/dev/null)" != "$want" ]]; then
        chat_log "npm install $want into ${dir#"$CHAT_ROOT/"}"
        [[ -f "$dir/package.json" ]] || printf '{"name":"chat-test-s3","private":true}\n' >"$dir/package.json"
        (cd -- "$dir" && npm install --no-audit --no-fund --loglevel=error "$want" >/dev/null) \
            || chat_die "npm install $want in $dir failed"
        cat >"$dir/s3-server.js.tmp" <<'JS'
// S3-compatible server for the archive tests (written by chat_install_s3, scripts/lib/install.sh).
// node s3-server.js ADDRESS PORT DIRECTORY BUCKET; credentials S3RVER / S3RVER; stop it with SIGTERM.
'use strict';
let S3rver;
try {
  S3rver = require('@20minutes/s3rver');
} catch (e) {
  S3rver = require('s3rver');
}
const [address, port, directory, bucket] = process.argv.slice(2);
require('fs').mkdirSync(directory, { recursive: true });
new S3rver({ address, port: Number(port), directory, silent: true, configureBuckets: [{ name: bucket, configs: [] }] })
  .run()
  .then(() => console.log(`s3 ready on ${address}:${port} bucket ${bucket}`),
        (e) => { console.error(e); process.exit(1); });
JS
        mv -f -- "$dir/s3-server.js.tmp" "$dir/s3-server.js"
        printf '%s\n' "$want" >"$dir/.chat-installed"
    fi
    exec {lockfd}>&-
    (cd -- "$dir" && node -e "try { require('@20minutes/s3rver') } catch (e) { require('s3rver') }") \
        || chat_die "the S3 server in $dir does not load"
}

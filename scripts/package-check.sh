#!/usr/bin/env bash
# Builds the .deb and the .rpm from packaging/, lints the .deb, installs it and checks what
# docs/production-deployment.md promises: user, directories, modes, config file, systemd unit,
# a real start as the service user with the packaged config, upgrade, remove and purge. Then
# inspects the .rpm and installs it too, and finally runs the .deb under a real systemd in a
# container (packaging/test/systemd-check.sh). Prints PASS/FAIL per check; exits 1 on any
# failure.
#
# Runs as root (CI does); installs what it needs (idempotent) and purges a previous install
# first, so it can run again and again. Packages the binary of the dev profile, which the test
# run has just built; PROFILE=release packages a release build (what a release ships).
# PACKAGE_CHECK_SYSTEMD=0 leaves out the container.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1

PROFILE="${PROFILE:-dev}"
# As scripts/test.sh: then `cargo build` reuses the binary the test run built.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1
OUT=target/packages
START_DEADLINE=60
STOP_DEADLINE=60
started=$SECONDS
failures=0
checks=0
daemon_pid=
defaults_pid=

log() { printf '==> [%ss] %s\n' "$((SECONDS - started))" "$*"; }
pass() {
    checks=$((checks + 1))
    printf 'PASS: %s\n' "$*"
}
fail() {
    checks=$((checks + 1))
    failures=$((failures + 1))
    printf 'FAIL: %s\n' "$*"
}
skip() { printf 'SKIP: %s\n' "$*"; }
# check DESCRIPTION COMMAND...: PASS when the command succeeds.
check() {
    local what=$1
    shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}
# owner:group and octal mode of a path, as stat prints them.
perms() { stat -c '%U:%G %a' "$1" 2>/dev/null; }
check_perms() {
    local got
    got=$(perms "$1")
    if [ "$got" = "$2" ]; then pass "$1 is $2"; else fail "$1 is '$got', expected $2"; fi
}
absent() { [ ! -e "$1" ]; }
nats_server_extracted() {
    local f
    f=$(find /var/lib/harmonylite -name nats-server -type f | head -n 1)
    [ -n "$f" ] && [ "$(stat -c %U "$f")" = harmonylite ]
}
# The operator docs both packages ship in /usr/share/doc/harmonylite (Cargo.toml assets).
shipped_docs=(configuration production-deployment operations runbooks security metrics dashboard migrating-from-go)
docs_installed() {
    local d
    for d in "${shipped_docs[@]}"; do
        test -s "/usr/share/doc/harmonylite/$d.md" || return 1
    done
}
# The alert rules (with their promtool unit tests) and the Grafana dashboard, shipped in
# /usr/share/doc/harmonylite/monitoring (docs/metrics.md, "Alert rules and dashboard").
shipped_monitoring=(harmonylite-alerts.yml harmonylite-alerts.test.yml grafana-dashboard.json)
monitoring_installed() {
    local f
    for f in "${shipped_monitoring[@]}"; do
        cmp -s "packaging/monitoring/$f" "/usr/share/doc/harmonylite/monitoring/$f" || return 1
    done
}
user_exists() { getent passwd harmonylite >/dev/null; }
group_exists() { getent group harmonylite >/dev/null; }
installed() { [ "$(dpkg-query -W -f='${db:Status-Status}' harmonylite 2>/dev/null)" = installed ]; }
summary() {
    printf 'package-check: %s passed, %s failed\n' "$((checks - failures))" "$failures"
    printf 'package-check took %ss\n' "$((SECONDS - started))"
}
finish() {
    # Never leave the daemon we started behind, whatever happened.
    local pid
    for pid in $daemon_pid $defaults_pid; do
        if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null; fi
    done
}
trap finish EXIT

if [ "$(id -u)" != 0 ]; then
    echo "package-check: run as root (it installs and removes packages)" >&2
    exit 2
fi

# ---------------------------------------------------------------- tools
need_apt=()
command -v lintian >/dev/null || need_apt+=(lintian)
command -v rpm >/dev/null || need_apt+=(rpm)
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
command -v shellcheck >/dev/null || need_apt+=(shellcheck)
command -v sqlite3 >/dev/null || need_apt+=(sqlite3)
command -v man >/dev/null || need_apt+=(man-db)
if [ "${#need_apt[@]}" -gt 0 ]; then
    log "apt-get install ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${need_apt[@]}" >/dev/null
fi
# cargo subcommand version: "cargo-deb 3.8.0" / "cargo-generate-rpm 0.21.1".
tool_version() { cargo "$1" --version 2>/dev/null | awk '{print $2}'; }
if [ "$(tool_version deb)" != "$CARGO_DEB_VERSION" ]; then
    log "cargo install cargo-deb $CARGO_DEB_VERSION"
    cargo install --locked --quiet cargo-deb --version "$CARGO_DEB_VERSION"
fi
if [ "$(tool_version generate-rpm)" != "$CARGO_GENERATE_RPM_VERSION" ]; then
    log "cargo install cargo-generate-rpm $CARGO_GENERATE_RPM_VERSION"
    cargo install --locked --quiet cargo-generate-rpm --version "$CARGO_GENERATE_RPM_VERSION"
fi

# ---------------------------------------------------------------- scripts
log "shellcheck"
check "shellcheck: this script, packaging/test and the deb maintainer scripts" \
    shellcheck scripts/package-check.sh packaging/test/*.sh packaging/debian/postinst \
    packaging/debian/prerm packaging/debian/postrm
check "shellcheck: the rpm scriptlets (sh)" shellcheck --shell=sh packaging/rpm/*.sh

# ---------------------------------------------------------------- build
log "cargo build --profile $PROFILE --bin harmonylite"
if ! cargo build --locked --profile "$PROFILE" --bin harmonylite; then
    fail "cargo build --profile $PROFILE"
    summary
    exit 1
fi
rm -rf "$OUT"
mkdir -p "$OUT"
# cargo-deb warns that the dev profile is meant for development; the packages are the same.
check "cargo deb builds the .deb" \
    cargo deb --locked --profile "$PROFILE" --no-build --fast --output "$OUT/"
# gzip instead of the default zstd: 8 s instead of a minute for the unstripped dev binary.
check "cargo generate-rpm builds the .rpm" \
    cargo generate-rpm --profile "$PROFILE" --payload-compress gzip --output "$OUT/"
# The same files as a newer revision, for the upgrade checks.
check "cargo deb builds revision 2 (for the upgrade)" \
    cargo deb --locked --profile "$PROFILE" --no-build --fast --deb-revision 2 \
    --output "$OUT/upgrade/"
deb=$(find "$OUT" -maxdepth 1 -name 'harmonylite_*.deb' | head -n 1)
deb2=$(find "$OUT/upgrade" -maxdepth 1 -name 'harmonylite_*-2_*.deb' | head -n 1)
rpm_file=$(find "$OUT" -maxdepth 1 -name 'harmonylite-*.rpm' | head -n 1)
if [ -z "$deb" ] || [ -z "$deb2" ] || [ -z "$rpm_file" ]; then
    fail "packages found in $OUT"
    summary
    exit 1
fi
log "built $deb and $rpm_file"

# ---------------------------------------------------------------- lintian
log "lintian $deb"
lintian --fail-on error,warning --display-info "$deb" >"$OUT/lintian.txt" 2>&1
lintian_status=$?
# Root is fine on a throwaway CI machine; lintian only warns about it.
grep -v 'running with root privileges' "$OUT/lintian.txt"
if [ "$lintian_status" = 0 ]; then
    pass "lintian: no error and no warning (overrides: packaging/debian/lintian-overrides)"
else
    fail "lintian reports errors or warnings (see $OUT/lintian.txt)"
fi

# ---------------------------------------------------------------- install
if dpkg-query -W harmonylite >/dev/null 2>&1; then
    log "purging the harmonylite package left by an earlier run"
    dpkg -P harmonylite >/dev/null
fi
if rpm -q harmonylite >/dev/null 2>&1; then
    log "erasing the harmonylite rpm left by an earlier run"
    rpm -e --nodeps harmonylite >/dev/null 2>&1
fi
# Leftovers of an interrupted run: no package owns them any more.
rm -rf /etc/harmonylite /var/lib/harmonylite /var/log/harmonylite
user_exists && userdel harmonylite
group_exists && groupdel harmonylite

log "dpkg -i $deb"
check "dpkg -i installs the package" dpkg -i "$deb"
check "package is installed" installed
if version=$(/usr/bin/harmonylite -version 2>&1); then
    pass "harmonylite -version runs: $(echo "$version" | tr '\n' ' ')"
else
    fail "harmonylite -version: $version"
fi
check "harmonylite user exists" user_exists
check "harmonylite group exists" group_exists
uid=$(id -u harmonylite 2>/dev/null || echo 65536)
check "harmonylite is a system user (uid $uid < 1000)" test "$uid" -lt 1000
check "harmonylite has no login shell" \
    test "$(getent passwd harmonylite | cut -d: -f7)" = /usr/sbin/nologin
check "harmonylite's primary group is harmonylite" \
    test "$(id -gn harmonylite 2>/dev/null)" = harmonylite
check_perms /usr/bin/harmonylite "root:root 755"
check_perms /etc/harmonylite "root:harmonylite 750"
check_perms /etc/harmonylite/config.toml "root:harmonylite 640"
check_perms /var/lib/harmonylite "harmonylite:harmonylite 750"
check_perms /var/log/harmonylite "harmonylite:harmonylite 750"
check_perms /usr/lib/systemd/system/harmonylite.service "root:root 644"
check "config.toml is a conffile" \
    grep -qx ' */etc/harmonylite/config.toml [0-9a-f]*' \
    <(dpkg-query -W -f='${Conffiles}\n' harmonylite)
check "config.toml points db_path into /var/lib/harmonylite" \
    grep -qx 'db_path = "/var/lib/harmonylite/data.db"' /etc/harmonylite/config.toml
check "config.toml runs the bundled NATS (no nats.urls set)" \
    bash -c '! grep -q "^urls" /etc/harmonylite/config.toml'
check "the unit is not enabled" \
    absent /etc/systemd/system/multi-user.target.wants/harmonylite.service
check "the journald drop-in is only an example" \
    bash -c 'test -f /usr/share/doc/harmonylite/examples/journald-harmonylite.conf &&
             ! test -e /etc/systemd/journald.conf.d/harmonylite.conf'
check "copyright and nats-server license installed" \
    test -s /usr/share/doc/harmonylite/copyright -a \
    -s /usr/share/doc/harmonylite/nats-server-LICENSE
check "operator docs installed: ${shipped_docs[*]}" docs_installed
check "monitoring files installed as in packaging/monitoring: ${shipped_monitoring[*]}" \
    monitoring_installed
check_perms /usr/share/doc/harmonylite/monitoring/harmonylite-alerts.yml "root:root 644"
check "man page installed" test -s /usr/share/man/man1/harmonylite.1.gz
check "postinst try-restarts a running service on upgrade" \
    grep -q 'deb-systemd-invoke try-restart harmonylite.service' \
    /var/lib/dpkg/info/harmonylite.postinst
check "prerm stops the service on removal" \
    grep -q 'deb-systemd-invoke stop harmonylite.service' /var/lib/dpkg/info/harmonylite.prerm

# ---------------------------------------------------------------- systemd unit
unit=/usr/lib/systemd/system/harmonylite.service
notify_unit() { grep -qx 'Type=notify' "$1" && grep -qx 'WatchdogSec=[0-9]*s' "$1"; }
if verify=$(systemd-analyze verify "$unit" 2>&1); then
    pass "systemd-analyze verify $unit${verify:+ ($verify)}"
else
    fail "systemd-analyze verify $unit: $verify"
fi
if systemd-analyze security --offline=true "$unit" >"$OUT/security.txt" 2>&1; then
    exposure=$(sed -n 's/.*Overall exposure level for harmonylite.service: \([0-9.]*\).*/\1/p' \
        "$OUT/security.txt")
    if [ -n "$exposure" ] && awk -v e="$exposure" 'BEGIN { exit !(e <= 1.5) }'; then
        pass "systemd-analyze security: exposure $exposure (<= 1.5)"
    else
        fail "systemd-analyze security: exposure '${exposure}' (want <= 1.5, see $OUT/security.txt)"
    fi
    check "the unit is Type=notify with a watchdog" notify_unit "$unit"
    check "docs/production-deployment.md states the measured exposure $exposure" \
        grep -q "exposure level.*\b${exposure}\b" docs/production-deployment.md
else
    skip "systemd-analyze security --offline cannot run here: $(head -n 1 "$OUT/security.txt")"
fi

# ---------------------------------------------------------------- run as the service user
# What the unit does, without systemd: the packaged binary and config, as user harmonylite,
# working directory /var/lib/harmonylite. setpriv execs the daemon (no PAM session, no parent
# that forwards signals), so $! is the daemon and `wait` returns its own exit status.
log "starting harmonylite as the service user"
as_service() { setpriv --reuid harmonylite --regid harmonylite --init-groups --no-new-privs "$@"; }
# An application's database, written the way an application would.
as_service sqlite3 /var/lib/harmonylite/data.db \
    "CREATE TABLE books (id INTEGER PRIMARY KEY, title TEXT NOT NULL);
     INSERT INTO books (title) VALUES ('Dune'), ('Solaris');"
run_log="$OUT/daemon.log"
(cd /var/lib/harmonylite && exec setpriv --reuid harmonylite --regid harmonylite \
    --init-groups --no-new-privs /usr/bin/harmonylite -config /etc/harmonylite/config.toml) \
    >"$run_log" 2>&1 &
daemon_pid=$!
ready=
for _ in $(seq $((START_DEADLINE * 5))); do
    if grep -q 'node ready' "$run_log"; then
        ready=1
        break
    fi
    kill -0 "$daemon_pid" 2>/dev/null || break
    sleep 0.2
done
if [ -n "$ready" ]; then
    pass "daemon logged 'node ready' with the packaged config"
    check "the bundled nats-server was extracted below /var/lib/harmonylite, owned by the service" \
        nats_server_extracted
    check "capture is installed in the application's database" \
        test "$(sqlite3 /var/lib/harmonylite/data.db \
            "SELECT count(*) FROM sqlite_master WHERE substr(name, 1, 15) = '__harmonylite__'")" \
        -gt 0
    kill -TERM "$daemon_pid"
    stopped=
    for _ in $(seq $((STOP_DEADLINE * 5))); do
        kill -0 "$daemon_pid" 2>/dev/null || {
            stopped=1
            break
        }
        sleep 0.2
    done
    if [ -n "$stopped" ]; then
        wait "$daemon_pid"
        status=$?
        check "daemon exits 0 after SIGTERM (exit $status)" test "$status" = 0
    else
        fail "daemon still running ${STOP_DEADLINE}s after SIGTERM"
    fi
else
    fail "daemon did not log 'node ready' within ${START_DEADLINE}s"
fi
if kill -0 "$daemon_pid" 2>/dev/null; then kill -KILL "$daemon_pid"; fi
daemon_pid=
check "no process of user harmonylite left" bash -c '! pgrep -u harmonylite >/dev/null'
echo "--- last lines of $run_log"
tail -n 15 "$run_log"
echo "---"

# The packaged config with every key uncommented (first occurrence: the default, or the example
# of a derived default) must still be accepted: it catches a key or default that drifted.
log "packaged config with every key uncommented"
defaults_dir=$(mktemp -d)
awk '/^\[/ { section = $0 }
     /^# [a-z_]+ = / { key = section " " $2; if (!(key in seen)) { seen[key] = 1; sub(/^# /, "") } }
     { print }' /etc/harmonylite/config.toml |
    sed "s|/var/lib/harmonylite|$defaults_dir|g" >"$defaults_dir/config.toml"
echo "$(grep -c '^[a-z_]* = ' "$defaults_dir/config.toml") keys set in $defaults_dir/config.toml"
/usr/bin/harmonylite -config "$defaults_dir/config.toml" >"$defaults_dir/log" 2>&1 &
defaults_pid=$!
for _ in $(seq $((START_DEADLINE * 5))); do
    grep -q 'node ready' "$defaults_dir/log" && break
    kill -0 "$defaults_pid" 2>/dev/null || break
    sleep 0.2
done
if grep -q 'node ready' "$defaults_dir/log"; then
    pass "every key of config.toml, uncommented, is accepted (node ready)"
else
    fail "config.toml with every key uncommented: $(grep -v nats_server "$defaults_dir/log" | tail -n 3)"
fi
kill -TERM "$defaults_pid" 2>/dev/null
wait "$defaults_pid" 2>/dev/null
defaults_pid=
rm -rf "$defaults_dir"

# ---------------------------------------------------------------- upgrade
# A newer revision of the same package: the config change and the data survive.
log "upgrade to revision 2"
echo '# local change kept across upgrades' >>/etc/harmonylite/config.toml
check "dpkg -i upgrades to revision 2" dpkg -i "$deb2"
check "upgrade keeps the changed config" \
    grep -qx '# local change kept across upgrades' /etc/harmonylite/config.toml
check "upgrade keeps the database" test -s /var/lib/harmonylite/data.db
check_perms /etc/harmonylite/config.toml "root:harmonylite 640"
check_perms /var/lib/harmonylite "harmonylite:harmonylite 750"

# ---------------------------------------------------------------- remove, purge
log "dpkg -r harmonylite"
check "dpkg -r removes the package" dpkg -r harmonylite
check "binary removed" absent /usr/bin/harmonylite
check "unit removed" absent /usr/lib/systemd/system/harmonylite.service
check "remove keeps the config" test -f /etc/harmonylite/config.toml
check "remove keeps the data" test -s /var/lib/harmonylite/data.db
check "remove keeps /var/log/harmonylite" test -d /var/log/harmonylite
check "remove keeps the user" user_exists

log "dpkg -P harmonylite"
check "dpkg -P purges the package" dpkg -P harmonylite
check "package is gone from dpkg" bash -c '! dpkg-query -W harmonylite >/dev/null 2>&1'
check "purge removes /etc/harmonylite" absent /etc/harmonylite
check "purge removes /var/lib/harmonylite" absent /var/lib/harmonylite
check "purge removes /var/log/harmonylite" absent /var/log/harmonylite
check "purge removes the user" bash -c '! getent passwd harmonylite >/dev/null'
check "purge removes the group" bash -c '! getent group harmonylite >/dev/null'

# ---------------------------------------------------------------- rpm
log "rpm -qp $rpm_file"
rpm -qp --dump "$rpm_file" >"$OUT/rpm-dump.txt"
rpm -qp --scripts "$rpm_file" >"$OUT/rpm-scripts.txt"
cat "$OUT/rpm-dump.txt"
# --dump: path size mtime digest mode owner group isconfig isdoc rdev symlink
rpm_entry() { awk -v p="$1" '$1 == p { print $5, $6, $7, $8 }' "$OUT/rpm-dump.txt"; }
check_rpm_entry() {
    local got
    got=$(rpm_entry "$1")
    if [ "$got" = "$2" ]; then pass "rpm: $1 is $2"; else fail "rpm: $1 is '$got', expected $2"; fi
}
check_rpm_entry /usr/bin/harmonylite "0100755 root root 0"
check_rpm_entry /etc/harmonylite/config.toml "0100640 root harmonylite 1"
check_rpm_entry /usr/lib/systemd/system/harmonylite.service "0100644 root root 0"
check "rpm: config.toml is %config(noreplace)" \
    bash -c "rpm -qp --qf '[%{FILENAMES} %{FILEFLAGS:fflags}\n]' '$rpm_file' |
             grep -qx '/etc/harmonylite/config.toml cn'"
check "rpm: nats-server license included" \
    grep -q '^/usr/share/licenses/harmonylite/nats-server-LICENSE ' "$OUT/rpm-dump.txt"
rpm_docs() {
    local d
    for d in "${shipped_docs[@]}"; do
        grep -q "^/usr/share/doc/harmonylite/$d.md " "$OUT/rpm-dump.txt" || return 1
    done
}
check "rpm: operator docs included: ${shipped_docs[*]}" rpm_docs
rpm_monitoring() {
    local f
    for f in "${shipped_monitoring[@]}"; do
        grep -q "^/usr/share/doc/harmonylite/monitoring/$f " "$OUT/rpm-dump.txt" || return 1
    done
}
check "rpm: monitoring files included: ${shipped_monitoring[*]}" rpm_monitoring
check_rpm_entry /usr/share/doc/harmonylite/monitoring/grafana-dashboard.json "0100644 root root 0"
check "rpm: %pre creates the user" grep -q 'useradd --system' "$OUT/rpm-scripts.txt"
check "rpm: %preun stops and disables on erase" \
    grep -q 'disable --now harmonylite.service' "$OUT/rpm-scripts.txt"
check "rpm: %postun try-restarts on upgrade" \
    grep -q 'try-restart harmonylite.service' "$OUT/rpm-scripts.txt"

# The rpm's scriptlets, for real: rpm installs on Debian with --nodeps (its database does not
# know Debian's packages).
# Debian's rpm also wants --force-debian to install.
rpm_install=(rpm -i --nodeps)
if rpm --help 2>&1 | grep -q -- --force-debian; then rpm_install+=(--force-debian); fi
log "${rpm_install[*]} $rpm_file"
check "rpm -i installs the package" "${rpm_install[@]}" "$rpm_file"
check "rpm: harmonylite -version runs" /usr/bin/harmonylite -version
check "rpm: monitoring files installed as in packaging/monitoring" monitoring_installed
check "rpm: user and group exist" bash -c 'getent passwd harmonylite >/dev/null &&
                                          getent group harmonylite >/dev/null'
check_perms /etc/harmonylite "root:harmonylite 750"
check_perms /etc/harmonylite/config.toml "root:harmonylite 640"
check_perms /var/lib/harmonylite "harmonylite:harmonylite 750"
check_perms /var/log/harmonylite "harmonylite:harmonylite 750"
check "rpm -e erases the package" rpm -e --nodeps harmonylite
check "rpm: erase removes the binary" absent /usr/bin/harmonylite
check "rpm: erase keeps the data directory" test -d /var/lib/harmonylite
# RPM has no purge: clean up by hand, as docs/production-deployment.md says.
rm -rf /etc/harmonylite /var/lib/harmonylite /var/log/harmonylite
userdel harmonylite 2>/dev/null
groupdel harmonylite 2>/dev/null

# ---------------------------------------------------------------- under systemd
# An older build for the upgrade across versions: the last commit whose internal tables are
# format 1 (stream floors came with 385a7e8). Built from `git archive` in its own target
# directory (its binary must not replace this one's), only for the systemd stage: it costs a
# whole build. Prints the .deb's path, or nothing.
OLD_COMMIT="${PACKAGE_CHECK_OLD_COMMIT:-32663cb}"
build_old_deb() {
    local out src target
    out=$(realpath "$OUT")
    src="$out/old-src"
    target="$(pwd)/target/package-check-old"
    rm -rf "$src" "$out/old" && mkdir -p "$src" || return
    git archive "$OLD_COMMIT" | tar -x -C "$src" || return
    (
        cd "$src" &&
            CARGO_TARGET_DIR="$target" cargo build --locked --profile "$PROFILE" \
                --bin harmonylite &&
            CARGO_TARGET_DIR="$target" cargo deb --locked --profile "$PROFILE" --no-build --fast \
                --deb-version "0.1.0~old.$OLD_COMMIT" --output "$out/old/"
    ) >"$out/old-build.log" 2>&1 || return
    find "$out/old" -maxdepth 1 -name 'harmonylite_*.deb' | head -n 1
}
# The build machine has no systemd as PID 1: boot one in a container for the service's life
# cycle (enable, start, upgrade restart, stop, removal). PACKAGE_CHECK_SYSTEMD=0 leaves it out.
if [ "${PACKAGE_CHECK_SYSTEMD:-1}" != 0 ]; then
    old_deb=$(build_old_deb)
    if [ -n "$old_deb" ]; then
        pass "cargo deb builds the older build $OLD_COMMIT (for the upgrade across versions)"
    else
        fail "building the older build $OLD_COMMIT (see $OUT/old-build.log)"
    fi
    log "packaging/test/systemd-check.sh (systemd-nspawn)"
    systemd_out=$(packaging/test/systemd-check.sh "$deb" "$deb2" ${old_deb:+"$old_deb"} 2>&1)
    systemd_status=$?
    echo "$systemd_out"
    passed=$(grep -c '^PASS: ' <<<"$systemd_out")
    failed=$(grep -c '^FAIL: ' <<<"$systemd_out")
    checks=$((checks + passed + failed))
    failures=$((failures + failed))
    if [ "$systemd_status" != 0 ] && [ "$failed" = 0 ]; then
        fail "packaging/test/systemd-check.sh exited $systemd_status"
    fi
else
    skip "systemd container check (PACKAGE_CHECK_SYSTEMD=0)"
fi

summary
[ "$failures" = 0 ]

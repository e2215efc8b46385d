#!/usr/bin/env bash
# The .deb under a real systemd: boots a minimal Debian 12 container with systemd-nspawn
# (private network, throwaway copy of a cached root file system) and checks the service's life:
# install leaves it disabled and stopped; enable --now brings it to "node ready" inside the
# unit's sandbox; its STATUS= line shows in `systemctl status`; a frozen daemon (SIGSTOP) is
# restarted by the watchdog; an upgrade restarts it; stop exits 0; removal stops it; purge
# cleans up.
#
# With OLD.deb (an older build, see scripts/package-check.sh), first the upgrade across
# versions: the older build runs with application data, the new package replaces it (config
# and data kept, service restarted, internal tables migrated), and a database from a newer
# build (a downgrade) is refused with exit status 2 and no restart loop.
#
# Usage: packaging/test/systemd-check.sh PACKAGE.deb UPGRADE.deb [OLD.deb]
# Called by scripts/package-check.sh. Runs as root. Prints PASS/FAIL/SKIP lines; exits 1 on a
# failure and 0 after a SKIP (a machine that cannot boot a container is not a package bug).
set -uo pipefail

deb=$(realpath "$1")
deb2=$(realpath "$2")
old_deb=${3:+$(realpath "$3")}
ROOTFS_CACHE=/var/cache/harmonylite-package-check/bookworm
READY_DEADLINE=60
failures=0
nspawn_pid=
work=

pass() { printf 'PASS: systemd: %s\n' "$*"; }
fail() {
    failures=$((failures + 1))
    printf 'FAIL: systemd: %s\n' "$*"
}
skip() {
    printf 'SKIP: systemd: %s\n' "$*"
    exit 0
}
check() {
    local what=$1
    shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}
cleanup() {
    if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
        # SIGTERM asks nspawn to shut the container down cleanly.
        kill -TERM "$nspawn_pid"
        for _ in $(seq 100); do
            kill -0 "$nspawn_pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -0 "$nspawn_pid" 2>/dev/null && kill -KILL "$nspawn_pid"
    fi
    if [ -n "$work" ]; then rm -rf "$work"; fi
}
trap cleanup EXIT

# ---------------------------------------------------------------- container
need_apt=()
command -v systemd-nspawn >/dev/null || need_apt+=(systemd-container)
command -v mmdebstrap >/dev/null || need_apt+=(mmdebstrap)
if [ "${#need_apt[@]}" -gt 0 ]; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null ||
        skip "cannot install ${need_apt[*]}"
fi
if [ ! -x "$ROOTFS_CACHE/usr/lib/systemd/systemd" ]; then
    rm -rf "$ROOTFS_CACHE"
    mkdir -p "$(dirname "$ROOTFS_CACHE")"
    mmdebstrap_log="$(dirname "$ROOTFS_CACHE")/mmdebstrap.log"
    mmdebstrap --quiet --variant=minbase \
        --include=systemd,systemd-sysv,dbus,adduser,sqlite3,man-db,procps \
        bookworm "$ROOTFS_CACHE" >"$mmdebstrap_log" 2>&1 || {
        rm -rf "$ROOTFS_CACHE"
        skip "mmdebstrap could not build a Debian 12 root: $(tail -n 2 "$mmdebstrap_log")"
    }
fi
work=$(mktemp -d /var/tmp/harmonylite-systemd-check.XXXXXX)
cp -a "$ROOTFS_CACHE" "$work/root"
cp "$deb" "$work/root/root/harmonylite-1.deb"
cp "$deb2" "$work/root/root/harmonylite-2.deb"
if [ -n "$old_deb" ]; then cp "$old_deb" "$work/root/root/harmonylite-old.deb"; fi

# --keep-unit and --register=no: the host may have no systemd of its own to ask for a scope.
setsid systemd-nspawn --quiet --directory="$work/root" --private-network --register=no \
    --keep-unit --machine="hlcheck-$$" --console=passive --boot >"$work/nspawn.log" 2>&1 &
nspawn_pid=$!
init_pid=
for _ in $(seq 100); do
    # nspawn forks helpers first; the container's init is the child named systemd.
    init_pid=$(pgrep -P "$nspawn_pid" -x systemd | head -n 1)
    [ -n "$init_pid" ] && break
    kill -0 "$nspawn_pid" 2>/dev/null || break
    sleep 0.1
done
[ -n "$init_pid" ] || skip "systemd-nspawn did not start: $(tail -n 3 "$work/nspawn.log")"
# Runs a shell command inside the container.
in_ct() { nsenter --target "$init_pid" --all /bin/sh -c "$1"; }
# Until its manager answers on the bus, systemctl fails at once; then it reports the boot state.
state=
for _ in $(seq 300); do
    state=$(in_ct 'systemctl is-system-running' 2>/dev/null)
    case "$state" in
    running | degraded) break ;;
    esac
    kill -0 "$init_pid" 2>/dev/null || break
    sleep 0.2
done
case "$state" in
running | degraded) ;;
*) skip "container did not boot (state '$state'): $(tail -n 3 "$work/nspawn.log")" ;;
esac
pass "Debian 12 container booted under systemd $(in_ct 'systemctl --version | head -n 1')"

prop() { in_ct "systemctl show -P $1 harmonylite.service"; }
# The nats-server child (pid $1) is in harmonylite.service's cgroup and under its sandbox.
nats_in_service() {
    [ -n "$1" ] && in_ct "grep -q harmonylite.service /proc/$1/cgroup" &&
        sandboxed "$(in_ct "cat /proc/$1/status")"
}
# /proc/PID/status of a process in seccomp filter mode, with no_new_privs and no capability.
sandboxed() {
    grep -q '^Seccomp:[[:space:]]*2$' <<<"$1" && grep -q '^NoNewPrivs:[[:space:]]*1$' <<<"$1" &&
        grep -q '^CapEff:[[:space:]]*0*$' <<<"$1"
}
# Waits until the daemon with pid $1 logs its readiness line.
wait_ready() {
    for _ in $(seq $((READY_DEADLINE * 5))); do
        in_ct "journalctl -u harmonylite _PID=$1 -o cat --no-pager" 2>/dev/null |
            grep -q 'node ready' && return 0
        sleep 0.2
    done
    return 1
}

# ---------------------------------------------------------------- across versions
db=/var/lib/harmonylite/data.db
# SQL on the node's database, as the service user: the statements on stdin (no shell quoting
# to get wrong), waiting up to 5 s while the running node holds the write lock.
sql() { printf '%s\n' "$1" | in_ct "runuser -u harmonylite -- sqlite3 -cmd '.timeout 5000' $db"; }
if [ -n "$old_deb" ]; then
    old_version=$(dpkg-deb -f "$old_deb" Version)
    check "dpkg -i installs the older build $old_version" \
        in_ct 'dpkg -i /root/harmonylite-old.deb >/dev/null'
    in_ct 'echo "# kept across the upgrade" >>/etc/harmonylite/config.toml'
    check "the application creates its table and a row" \
        sql "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT); INSERT INTO notes VALUES (1, 'before');"
    in_ct 'systemctl enable --now harmonylite 2>/dev/null'
    old_pid=$(prop MainPID)
    check "the older build logged 'node ready'" wait_ready "$old_pid"
    check "the older build keeps format 1 internal tables" \
        test "$(sql "SELECT value FROM __harmonylite__state WHERE key = 'format'")" = 1
    check "the application writes while the older build runs" \
        sql "INSERT INTO notes VALUES (2, 'while the older build ran');"
    # The edited configuration is kept, as an operator answering dpkg's conffile question with
    # the default would keep it (the packaged example changed between the versions).
    check "dpkg -i of the new package upgrades $old_version" \
        in_ct 'dpkg --force-confdef --force-confold -i /root/harmonylite-1.deb </dev/null >/dev/null'
    upgraded_pid=$(prop MainPID)
    check "the upgrade restarted the service (pid $old_pid -> $upgraded_pid)" \
        test -n "$upgraded_pid" -a "$upgraded_pid" != "$old_pid" -a "$upgraded_pid" != 0
    check "the new build logged 'node ready'" wait_ready "$upgraded_pid"
    check "the configuration was kept" \
        in_ct 'grep -q "kept across the upgrade" /etc/harmonylite/config.toml'
    check "the application's rows were kept" \
        test "$(sql "SELECT group_concat(body, '|') FROM notes")" = "before|while the older build ran"
    check "the internal tables were migrated (format 3: stream floors, capture logs)" \
        test "$(sql "SELECT value FROM __harmonylite__state WHERE key = 'format'")" = 3 -a \
        "$(sql "SELECT count(*) FROM sqlite_schema WHERE name = '__harmonylite__notes_changes'")" = 1 -a \
        "$(sql "SELECT count(*) FROM sqlite_schema WHERE name = '__harmonylite__applied'")" = 0 -a \
        "$(sql "SELECT count(*) FROM sqlite_schema WHERE name = '__harmonylite__floors'")" = 1
    # A database from a newer build (simulated: format 99), as after a downgrade: refused
    # with exit status 2, not restarted in a loop, database untouched. (The older build above
    # predates this rule: it exits 1 on a newer database.)
    in_ct 'systemctl stop harmonylite'
    check "the database is marked as a newer build's" \
        sql "UPDATE __harmonylite__state SET value = 99 WHERE key = 'format';"
    restarts=$(prop NRestarts)
    in_ct 'systemctl start harmonylite 2>/dev/null'
    for _ in $(seq 100); do
        [ "$(prop ActiveState)" = failed ] && break
        sleep 0.2
    done
    check "a database from a newer build is refused with exit status 2 (status $(prop ExecMainStatus))" \
        test "$(prop ExecMainStatus)" = 2 -a "$(prop ActiveState)" = failed
    check "and not restarted in a loop" test "$(prop NRestarts)" = "$restarts"
    check "the journal says why" \
        in_ct 'journalctl -u harmonylite --no-pager | grep -q "downgrades are refused"'
    check "the database was left as it was" \
        test "$(sql "SELECT value FROM __harmonylite__state WHERE key = 'format'")" = 99
    in_ct 'systemctl disable harmonylite 2>/dev/null; systemctl reset-failed harmonylite;
           dpkg -P harmonylite >/dev/null'
fi

# ---------------------------------------------------------------- install
check "dpkg -i installs the package" in_ct 'dpkg -i /root/harmonylite-1.deb >/dev/null'
check "installing does not enable the service" \
    test "$(in_ct 'systemctl is-enabled harmonylite' 2>/dev/null)" = disabled
check "installing does not start the service" test "$(prop ActiveState)" = inactive

# ---------------------------------------------------------------- start
check "systemctl enable --now harmonylite" in_ct 'systemctl enable --now harmonylite 2>/dev/null'
main_pid=$(prop MainPID)
if wait_ready "$main_pid"; then
    pass "the service logged 'node ready' inside the unit's sandbox"
else
    fail "no 'node ready' within ${READY_DEADLINE}s; journal:"
    in_ct 'journalctl -u harmonylite -o cat --no-pager | tail -n 20'
fi
check "the service is active" test "$(prop ActiveState)" = active
status=$(in_ct "cat /proc/$main_pid/status" 2>/dev/null)
check "the daemon runs as user harmonylite" \
    test "$(in_ct "ps -o user= -p $main_pid" | tr -d ' ')" = harmonylite
check "seccomp filter, no new privileges, no capabilities are in force" sandboxed "$status"
nats_pid=$(in_ct 'pgrep -u harmonylite -x nats-server' | head -n 1)
check "the bundled nats-server runs in the service's cgroup, sandboxed too" \
    nats_in_service "$nats_pid"
security=$(in_ct 'systemd-analyze security harmonylite.service 2>&1 | tail -n 1')
pass "systemd-analyze security on the running system: ${security#→ }"

# ---------------------------------------------------------------- notify, status, watchdog
# Type=notify: the daemon's STATUS= line is what `systemctl status` shows.
status_text=
for _ in $(seq 50); do
    status_text=$(prop StatusText)
    case "$status_text" in "replicating, "* | "not ready: "*) break ;; esac
    sleep 0.2
done
case "$status_text" in
"replicating, "* | "not ready: "*) pass "systemctl status shows the daemon's status: $status_text" ;;
*) fail "no STATUS= from the daemon (StatusText '$status_text')" ;;
esac
check "systemctl status prints it" in_ct 'systemctl status harmonylite --no-pager | grep -q "Status: \""'
check "the watchdog is armed (WatchdogUSec=$(prop WatchdogUSec))" \
    test "$(prop WatchdogUSec)" != 0 -a "$(prop WatchdogUSec)" != infinity
# A frozen daemon stops feeding the watchdog: systemd kills it and Restart= starts it again.
# A drop-in shortens the packaged 30 s to keep the check quick.
in_ct 'mkdir -p /etc/systemd/system/harmonylite.service.d &&
       printf "[Service]\nWatchdogSec=6s\n" >/etc/systemd/system/harmonylite.service.d/wd.conf &&
       systemctl daemon-reload && systemctl restart harmonylite'
frozen_pid=$(prop MainPID)
wait_ready "$frozen_pid" || fail "no 'node ready' after the restart with WatchdogSec=6s"
restarts=$(prop NRestarts)
in_ct "kill -STOP $frozen_pid"
thawed_pid=$frozen_pid
for _ in $(seq 300); do
    thawed_pid=$(prop MainPID)
    [ "$thawed_pid" != "$frozen_pid" ] && [ "$thawed_pid" != 0 ] && break
    sleep 0.2
done
check "the watchdog restarted the frozen daemon (pid $frozen_pid -> $thawed_pid)" \
    test "$thawed_pid" != "$frozen_pid" -a "$(prop NRestarts)" -gt "$restarts"
check "the journal names the watchdog" \
    in_ct 'journalctl -u harmonylite --no-pager | grep -qi "watchdog timeout"'
check "the restarted daemon logged 'node ready'" wait_ready "$thawed_pid"
in_ct 'rm -r /etc/systemd/system/harmonylite.service.d && systemctl daemon-reload &&
       systemctl restart harmonylite'
main_pid=$(prop MainPID)
check "back to the packaged unit (node ready)" wait_ready "$main_pid"

# ---------------------------------------------------------------- upgrade
check "dpkg -i of revision 2 upgrades the package" \
    in_ct 'dpkg -i /root/harmonylite-2.deb >/dev/null'
new_pid=$(prop MainPID)
check "the upgrade restarted the running service (pid $main_pid -> $new_pid)" \
    test -n "$new_pid" -a "$new_pid" != "$main_pid" -a "$new_pid" != 0 -a "$(prop ActiveState)" = active

check "the restarted service logged 'node ready'" wait_ready "$new_pid"

# ---------------------------------------------------------------- stop
check "systemctl stop" in_ct 'systemctl stop harmonylite'
check "stop is a clean exit (Result=$(prop Result), status $(prop ExecMainStatus))" \
    test "$(prop Result)" = success -a "$(prop ExecMainStatus)" = 0
check "no process of user harmonylite left after stop" in_ct '! pgrep -u harmonylite >/dev/null'

# ---------------------------------------------------------------- remove, purge
check "systemctl start again" in_ct 'systemctl start harmonylite'
check "dpkg -r removes the package" in_ct 'dpkg -r harmonylite >/dev/null'
check "removal stopped the service" test "$(prop ActiveState 2>/dev/null)" != active
check "no process of user harmonylite left after removal" \
    in_ct '! pgrep -u harmonylite >/dev/null'
check "removal keeps config and data" \
    in_ct 'test -f /etc/harmonylite/config.toml && test -d /var/lib/harmonylite'
check "dpkg -P purges the package" in_ct 'dpkg -P harmonylite >/dev/null'
check "purge removes data, logs, config, user and group" \
    in_ct '! test -e /var/lib/harmonylite && ! test -e /var/log/harmonylite &&
           ! test -e /etc/harmonylite && ! getent passwd harmonylite && ! getent group harmonylite'

[ "$failures" = 0 ]

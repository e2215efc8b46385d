//! Convergence property test: replicas make random local writes, fold their capture logs at
//! random points (`cdc::fold`), exchange scanned batches partially while they write, then
//! receive everything shuffled and duplicated. All replicas
//! must end identical (table content and clock state), and identical to a run of the final
//! delivery in another order.

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng};

use super::tests::Replica;

const SCHEMA: &str = r#"
    CREATE TABLE a(id INTEGER PRIMARY KEY, v TEXT);
    CREATE TABLE "u t"(k TEXT, n INT, email TEXT UNIQUE COLLATE NOCASE, code INT, w,
        PRIMARY KEY(k, n), UNIQUE(code)) WITHOUT ROWID;
    CREATE TABLE r(x, y);
"#;
const TABLES: [&str; 3] = ["a", "u t", "r"];
const REPLICAS: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    Upsert {
        at: usize,
        table: usize,
        key: u8,
        value: u8,
    },
    Update {
        at: usize,
        table: usize,
        key: u8,
        value: u8,
    },
    Delete {
        at: usize,
        table: usize,
        key: u8,
    },
    Move {
        at: usize,
        table: usize,
        key: u8,
        to: u8,
    },
    Publish {
        at: usize,
    },
    /// The writer folds the capture logs (as its timer does between the application's writes).
    Fold {
        at: usize,
    },
    Deliver {
        to: usize,
        from: usize,
        pick: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let at = 0..REPLICAS;
    let table = 0..TABLES.len();
    prop_oneof![
        4 => (at.clone(), table.clone(), 0u8..4, 0u8..3).prop_map(|(at, table, key, value)| Op::Upsert { at, table, key, value }),
        3 => (at.clone(), table.clone(), 0u8..4, 0u8..3).prop_map(|(at, table, key, value)| Op::Update { at, table, key, value }),
        1 => (at.clone(), table.clone(), 0u8..4).prop_map(|(at, table, key)| Op::Delete { at, table, key }),
        1 => (at.clone(), table.clone(), 0u8..4, 0u8..4).prop_map(|(at, table, key, to)| Op::Move { at, table, key, to }),
        2 => at.clone().prop_map(|at| Op::Publish { at }),
        2 => at.clone().prop_map(|at| Op::Fold { at }),
        2 => (at.clone(), at, any::<usize>()).prop_map(|(to, from, pick)| Op::Deliver { to, from, pick }),
    ]
}

/// The application's SQL for an op (errors such as UNIQUE violations are the app's problem and
/// simply make the op a no-op).
fn app_sql(op: &Op) -> Option<(usize, String)> {
    let (at, table) = match *op {
        Op::Upsert { at, table, .. }
        | Op::Update { at, table, .. }
        | Op::Delete { at, table, .. }
        | Op::Move { at, table, .. } => (at, table),
        Op::Publish { .. } | Op::Fold { .. } | Op::Deliver { .. } => return None,
    };
    let sql = match table {
        0 => sql_a(op),
        1 => sql_u_t(op),
        _ => sql_r(op),
    };
    Some((at, sql))
}

/// Table `a`: an integer key.
fn sql_a(op: &Op) -> String {
    match *op {
        Op::Upsert { key, value, .. } => format!(
            "INSERT INTO a VALUES ({key}, 'v{value}') ON CONFLICT(id) DO UPDATE SET v = excluded.v"
        ),
        Op::Update { key, value, .. } => format!("UPDATE a SET v = 'w{value}' WHERE id = {key}"),
        Op::Delete { key, .. } => format!("DELETE FROM a WHERE id = {key}"),
        Op::Move { key, to, .. } => format!("UPDATE a SET id = {} WHERE id = {key}", to + 10),
        Op::Publish { .. } | Op::Fold { .. } | Op::Deliver { .. } => unreachable!("not a write"),
    }
}

/// Table `u t`: a composite key and two UNIQUE indexes. Emails collide case-insensitively;
/// codes collide on the second index.
fn sql_u_t(op: &Op) -> String {
    let email = |v: u8| ["'e0'", "'E0'", "'e1'"][usize::from(v % 3)];
    let code = |key: u8, v: u8| (key + v) % 3;
    let row = |key: u8| format!("k = 'k{}' AND n = {}", key % 2, key / 2);
    match *op {
        Op::Upsert { at, key, value, .. } => format!(
            "INSERT INTO \"u t\" VALUES ('k{}', {}, {}, {}, {at}) ON CONFLICT(k, n) \
             DO UPDATE SET email = excluded.email, code = excluded.code, w = excluded.w",
            key % 2,
            key / 2,
            email(value),
            code(key, value),
        ),
        Op::Update { key, value: 2, .. } => format!(
            "UPDATE \"u t\" SET code = {}, w = w || '.' WHERE {}",
            code(key, 1),
            row(key)
        ),
        Op::Update { key, value, .. } => format!(
            "UPDATE \"u t\" SET email = {}, w = w || '.' WHERE {}",
            email(value),
            row(key)
        ),
        Op::Delete { key, .. } => format!("DELETE FROM \"u t\" WHERE {}", row(key)),
        Op::Move { key, to, .. } => format!(
            "UPDATE \"u t\" SET k = 'm{to}', n = {to} WHERE {}",
            row(key)
        ),
        Op::Publish { .. } | Op::Fold { .. } | Op::Deliver { .. } => unreachable!("not a write"),
    }
}

/// Table `r`: no primary key (rowid).
fn sql_r(op: &Op) -> String {
    match *op {
        Op::Upsert { key, value, .. } => format!("INSERT INTO r(x, y) VALUES ({key}, {value})"),
        Op::Update { key, value, .. } => {
            format!("UPDATE r SET y = {value} WHERE rowid = {}", key + 1)
        }
        Op::Delete { key, .. } => format!("DELETE FROM r WHERE rowid = {}", key + 1),
        Op::Move { key, to, .. } => {
            format!("UPDATE r SET rowid = {} WHERE rowid = {}", to + 20, key + 1)
        }
        Op::Publish { .. } | Op::Fold { .. } | Op::Deliver { .. } => unreachable!("not a write"),
    }
}

/// Table content plus the clock state, byte-exact.
fn state(r: &Replica) -> Vec<Vec<String>> {
    crate::db::testutil::fold_all(&r.conn);
    let mut out: Vec<Vec<String>> = TABLES.iter().map(|t| r.content(t)).collect();
    for t in TABLES {
        let clock = crate::cdc::triggers::clock_table(t);
        out.push(r.content(&clock));
    }
    out
}

fn copy(r: &Replica, node: u64) -> Replica {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("copy.sqlite");
    r.conn
        .execute("VACUUM INTO ?1", [path.to_str().unwrap()])
        .unwrap();
    Replica::open(dir, path, node)
}

fn run(ops: &[Op], seed: u64) -> Result<(), TestCaseError> {
    let mut replicas: Vec<Replica> = (0..REPLICAS)
        .map(|i| Replica::new(i as u64 + 1, SCHEMA))
        .collect();
    let mut outbox: Vec<Vec<Vec<u8>>> = vec![Vec::new(); REPLICAS];
    for op in ops {
        if let Some((at, sql)) = app_sql(op) {
            let _ = replicas[at].app.execute_batch(&sql);
            continue;
        }
        match *op {
            Op::Publish { at } => {
                let msgs = replicas[at].publish();
                outbox[at].extend(msgs);
            }
            Op::Fold { at } => crate::db::testutil::fold_all(&replicas[at].conn),
            Op::Deliver { to, from, pick } if to != from && !outbox[from].is_empty() => {
                let msg = outbox[from][pick % outbox[from].len()].clone();
                replicas[to].receive(&[msg]);
            }
            _ => {}
        }
    }
    for (i, r) in replicas.iter_mut().enumerate() {
        let msgs = r.publish();
        outbox[i].extend(msgs);
    }
    let copies: Vec<Replica> = replicas.iter().map(|r| copy(r, r.node.0)).collect();
    let seed_bytes: Vec<u8> = seed
        .to_le_bytes()
        .iter()
        .cycle()
        .take(32)
        .copied()
        .collect();
    let mut rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes);
    let deliver = |targets: Vec<Replica>, rng: &mut TestRng| -> Vec<Replica> {
        let mut targets = targets;
        for (i, r) in targets.iter_mut().enumerate() {
            let mut msgs: Vec<Vec<u8>> = (0..REPLICAS)
                .filter(|&j| j != i)
                .flat_map(|j| outbox[j].clone())
                .collect();
            let dups: Vec<Vec<u8>> = msgs.iter().step_by(3).cloned().collect();
            msgs.extend(dups);
            for k in (1..msgs.len()).rev() {
                msgs.swap(k, rng.next_u32() as usize % (k + 1));
            }
            // Several apply calls of random size, as consumers would.
            for chunk in msgs.chunks(1 + rng.next_u32() as usize % 5) {
                r.receive(chunk);
            }
            r.receive(&[]);
        }
        targets
    };
    let first = deliver(replicas, &mut rng);
    let second = deliver(copies, &mut rng);
    let expected = state(&first[0]);
    for (i, r) in first.iter().chain(&second).enumerate() {
        prop_assert_eq!(
            &state(r),
            &expected,
            "replica {} differs (seed {})",
            i % REPLICAS,
            seed
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(Config { cases: 64, failure_persistence: None, ..Config::default() })]

    #[test]
    fn replicas_converge(ops in proptest::collection::vec(op(), 1..60), seed in any::<u64>()) {
        run(&ops, seed)?;
    }
}

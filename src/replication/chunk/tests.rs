use super::*;

fn bytes(b: &[u8]) -> Bytes {
    Bytes::copy_from_slice(b)
}

fn pending() -> Added {
    Added::Pending {
        evicted: Vec::new(),
    }
}

/// A completed set as `(payload, evicted)`; `None` for anything else.
fn joined(added: Added) -> Option<(Vec<u8>, Vec<SetKey>)> {
    match added {
        Added::Complete { pieces, evicted } => Some((join(pieces), evicted)),
        _ => None,
    }
}

fn key(id: &str, total: u32) -> SetKey {
    SetKey {
        id: id.to_owned(),
        total,
    }
}

#[test]
fn splits_and_reassembles_in_any_order_with_duplicates() {
    let payload: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let pieces: Vec<Bytes> = split(&Bytes::from(payload.clone()), 3000);
    assert_eq!(pieces.len(), 4);
    let mut r = Reassembly::default();
    let now = Instant::now();
    let n = pieces.len() as u32;
    assert_eq!(r.add("x", 2, n, pieces[2].clone(), now), pending());
    assert_eq!(r.add("x", 0, n, pieces[0].clone(), now), pending());
    assert_eq!(r.add("x", 3, n, pieces[3].clone(), now), pending());
    assert_eq!(
        joined(r.add("x", 1, n, pieces[1].clone(), now)),
        Some((payload, Vec::new()))
    );
    assert_eq!(r.pending_sets(), 0);
    assert_eq!((r.held_bytes(), r.held_chunks()), (0, 0));
}

#[test]
fn a_redelivered_chunk_is_held_and_counted_once() {
    let mut r = Reassembly::default();
    let now = Instant::now();
    assert_eq!(r.add("x", 0, 3, bytes(b"abc"), now), pending());
    let (held, chunks) = (r.held_bytes(), r.held_chunks());
    for _ in 0..100 {
        // A fresh allocation with the same content: a redelivery, not the same buffer.
        assert_eq!(r.add("x", 0, 3, bytes(b"abc"), now), Added::Duplicate);
    }
    assert_eq!((r.held_bytes(), r.held_chunks()), (held, chunks));
    assert_eq!(held, slots_bytes(3) + 3);
    assert_eq!(r.add("x", 1, 3, bytes(b"d"), now), pending());
    assert!(joined(r.add("x", 2, 3, bytes(b"e"), now)).is_some_and(|(p, _)| p == b"abcde"));
}

#[test]
fn other_bytes_at_a_held_index_refuse_the_whole_set() {
    let mut r = Reassembly::default();
    let now = Instant::now();
    assert_eq!(r.add("x", 0, 3, bytes(b"abc"), now), pending());
    assert_eq!(r.add("x", 1, 3, bytes(b"def"), now), pending());
    assert!(matches!(
        r.add("x", 0, 3, bytes(b"abX"), now),
        Added::SetRefused(_)
    ));
    assert_eq!(r.pending_sets(), 0, "the set is gone");
    assert_eq!((r.held_bytes(), r.held_chunks()), (0, 0));
}

#[test]
fn another_total_is_another_set() {
    // The same payload republished under another payload limit: two sets that do not mix.
    let mut r = Reassembly::default();
    let now = Instant::now();
    assert_eq!(r.add("x", 0, 2, bytes(b"ab"), now), pending());
    assert_eq!(r.add("x", 0, 3, bytes(b"a"), now), pending());
    assert_eq!(r.add("x", 1, 3, bytes(b"b"), now), pending());
    assert!(joined(r.add("x", 1, 2, bytes(b"c"), now)).is_some_and(|(p, _)| p == b"abc"));
    assert_eq!(r.pending_sets(), 1);
    assert!(joined(r.add("x", 2, 3, bytes(b"c"), now)).is_some_and(|(p, _)| p == b"abc"));
}

#[test]
fn a_new_set_over_the_budget_is_deferred_and_evicts_nothing() {
    let mut r = Reassembly::new(Budget {
        bytes: usize::MAX,
        chunks: 3,
    });
    let now = Instant::now();
    for id in ["a", "b", "c"] {
        assert_eq!(r.add(id, 0, 2, bytes(b"x"), now), pending());
    }
    assert_eq!(r.add("d", 0, 2, bytes(b"x"), now), Added::Deferred);
    assert_eq!((r.pending_sets(), r.held_chunks()), (3, 3));
    // The youngest held set has nothing younger to push out: it waits too.
    assert_eq!(r.add("c", 1, 2, bytes(b"y"), now), Added::Deferred);
    // The oldest evicts the youngest, and completes.
    assert_eq!(
        joined(r.add("a", 1, 2, bytes(b"y"), now)),
        Some((b"xy".to_vec(), vec![key("c", 2)]))
    );
    assert_eq!((r.pending_sets(), r.held_chunks()), (1, 1));
}

#[test]
fn bytes_are_bounded_like_chunks() {
    let slots = slots_bytes(2);
    let mut r = Reassembly::new(Budget {
        bytes: 2 * (slots + 10),
        chunks: usize::MAX,
    });
    let now = Instant::now();
    assert_eq!(r.add("a", 0, 2, bytes(&[1; 10]), now), pending());
    assert_eq!(r.add("b", 0, 2, bytes(&[2; 10]), now), pending());
    assert_eq!(r.add("c", 0, 2, bytes(&[3; 1]), now), Added::Deferred);
    assert_eq!(r.held_bytes(), 2 * (slots + 10));
    assert!(matches!(
        r.add("a", 1, 2, bytes(&[1; 10]), now),
        Added::Complete { evicted, .. } if evicted == vec![key("b", 2)]
    ));
    assert_eq!(r.held_bytes(), 0);
}

/// The guarantee the budget rests on: however many bogus sets flood in, the oldest held set
/// completes, and what is held never passes the budget.
#[test]
fn the_oldest_set_completes_through_a_flood() {
    let budget = Budget {
        bytes: 4096,
        chunks: 16,
    };
    let mut r = Reassembly::new(budget);
    let now = Instant::now();
    let payload: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
    let pieces: Vec<Bytes> = split(&Bytes::from(payload.clone()), 100);
    let n = pieces.len() as u32;
    assert_eq!(r.add("legit", 0, n, pieces[0].clone(), now), pending());
    let mut deferred = 0;
    let mut complete = None;
    for (i, piece) in pieces.iter().enumerate().skip(1) {
        for f in 0..50 {
            let bogus = format!("bogus-{i}-{f}");
            if r.add(&bogus, 0, 4, bytes(&[0; 40]), now) == Added::Deferred {
                deferred += 1;
            }
            assert!(r.held_bytes() <= budget.bytes && r.held_chunks() <= budget.chunks);
        }
        match r.add("legit", i as u32, n, piece.clone(), now) {
            Added::Complete { pieces, .. } => complete = Some(join(pieces)),
            Added::Pending { .. } => {}
            other => panic!("chunk {i} of the oldest set: {other:?}"),
        }
        assert!(r.held_bytes() <= budget.bytes && r.held_chunks() <= budget.chunks);
    }
    assert_eq!(complete, Some(payload));
    assert!(deferred > 0, "the flood reached the budget");
}

#[test]
fn a_set_larger_than_any_receiver_decodes_is_refused() {
    let mut r = Reassembly::new(Budget {
        bytes: usize::MAX,
        chunks: usize::MAX,
    });
    let now = Instant::now();
    // One shared buffer: the set's count grows, the test's memory does not.
    let mib = Bytes::from(vec![7u8; 1 << 20]);
    let mut refused_at = None;
    for i in 0..MAX_CHUNKS {
        match r.add("big", i, MAX_CHUNKS, mib.clone(), now) {
            Added::Pending { .. } => {}
            Added::SetRefused(_) => {
                refused_at = Some(i as usize);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    let at = refused_at.expect("refused before it completed");
    assert_eq!(at, (MAX_SET_BYTES - slots_bytes(MAX_CHUNKS)) / (1 << 20));
    assert_eq!((r.held_bytes(), r.pending_sets()), (0, 0));
}

#[test]
fn stale_sets_expire() {
    let mut r = Reassembly::default();
    let t0 = Instant::now();
    assert_eq!(r.add("a", 0, 3, bytes(b"xx"), t0), pending());
    assert_eq!(r.expire(t0 + MAX_AGE), vec![]);
    assert_eq!(
        r.expire(t0 + MAX_AGE + Duration::from_secs(1)),
        vec![key("a", 3)]
    );
    assert_eq!((r.pending_sets(), r.held_bytes()), (0, 0));
}

#[test]
fn header_parsing() {
    assert_eq!(parse_header("0/3"), Some((0, 3)));
    assert_eq!(parse_header("3/3"), None);
    assert_eq!(parse_header("1/0"), None);
    assert_eq!(parse_header("x/2"), None);
    assert_eq!(parse_header("0/4096"), Some((0, MAX_CHUNKS)));
    assert_eq!(parse_header("0/4097"), None);
}

/// Found by fuzzing: a header claiming 4294967295 chunks sized a slot table of ~100 GB
/// from it and aborted the process (allocation failure, not even a panic).
#[test]
fn huge_totals_are_refused_without_allocating() {
    let mut r = Reassembly::default();
    let now = Instant::now();
    assert!(matches!(
        r.add("x", 0, u32::MAX, bytes(b"a"), now),
        Added::Malformed(_)
    ));
    assert!(matches!(
        r.add("x", 5, 3, bytes(b"a"), now),
        Added::Malformed(_)
    ));
    assert_eq!(r.pending_sets(), 0, "a refused chunk leaves no set behind");
    // Slot tables count against the bound: sets of the largest total cannot pile up.
    let most = MAX_BYTES / slots_bytes(MAX_CHUNKS);
    for i in 0..most + 10 {
        r.add(&i.to_string(), 0, MAX_CHUNKS, Bytes::new(), now);
    }
    assert!(r.pending_sets() <= most);
    assert!(r.held_bytes() <= MAX_BYTES);
    r.expire(now + MAX_AGE + Duration::from_secs(1));
    assert_eq!(r.held_bytes(), 0);
}

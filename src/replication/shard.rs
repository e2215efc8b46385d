//! Which shard (JetStream stream) a row's changes travel on: a stable hash of table and key.
//!
//! Stability matters across builds and machines (every node must agree on nothing here for
//! correctness, but a stable mapping keeps one key's versions on one stream, in order), so the
//! hash is FNV-1a 64 over an explicit byte encoding, never `std::hash`.

use crate::change::Value;
use crate::ids::ShardId;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

struct Fnv(u64);

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
    }

    /// Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
    fn write_len_prefixed(&mut self, bytes: &[u8]) {
        self.write(&(bytes.len() as u64).to_be_bytes());
        self.write(bytes);
    }
}

/// The shard of a row of `table` with primary-key values `key`, in `0..shards` (`shards == 0`
/// is treated as one shard).
pub fn shard_of(table: &str, key: &[Value], shards: u32) -> ShardId {
    if shards <= 1 {
        return ShardId(0);
    }
    let mut h = Fnv(FNV_OFFSET);
    h.write_len_prefixed(table.as_bytes());
    for v in key {
        match v {
            Value::Null => h.write(&[0]),
            Value::Integer(i) => {
                h.write(&[1]);
                h.write(&i.to_be_bytes());
            }
            Value::Real(f) => {
                h.write(&[2]);
                h.write(&f.to_bits().to_be_bytes());
            }
            Value::Text(t) => {
                h.write(&[3]);
                h.write_len_prefixed(t);
            }
            Value::Blob(b) => {
                h.write(&[4]);
                h.write_len_prefixed(b);
            }
        }
    }
    // The remainder is below `shards`, a u32.
    ShardId((h.0 % u64::from(shards)) as u32)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn fnv_matches_reference_vectors() {
        let mut h = Fnv(FNV_OFFSET);
        h.write(b"a");
        assert_eq!(h.0, 0xaf63_dc4c_8601_ec8c);
        let mut h = Fnv(FNV_OFFSET);
        h.write(b"foobar");
        assert_eq!(h.0, 0x8594_4171_f739_67e8);
    }

    #[test]
    fn stable_values() {
        // Hard-coded (computed independently in Python): changing the encoding moves every key to another stream.
        assert_eq!(shard_of("users", &[Value::Integer(1)], 16), ShardId(10));
        assert_eq!(shard_of("users", &[Value::Integer(2)], 16), ShardId(7));
        assert_eq!(
            shard_of("order", &[Value::text("a"), Value::Integer(-1)], 7),
            ShardId(3)
        );
        assert_eq!(
            shard_of("my table", &[Value::Blob(vec![0, 1])], 1000),
            ShardId(388)
        );
        assert_eq!(shard_of("t", &[Value::Null], 3), ShardId(0));
        assert_eq!(shard_of("t", &[Value::Real(1.5)], 3), ShardId(2));
        assert_eq!(shard_of("t", &[Value::Integer(1)], 1), ShardId(0));
        assert_eq!(shard_of("t", &[Value::Integer(1)], 0), ShardId(0));
    }

    #[test]
    fn text_and_blob_differ() {
        let t = (0..64).map(|i| shard_of("t", &[Value::text(&i.to_string())], 1 << 20));
        let b = (0..64).map(|i| shard_of("t", &[Value::Blob(i.to_string().into_bytes())], 1 << 20));
        assert!(t.zip(b).any(|(x, y)| x != y));
    }

    proptest! {
        #[test]
        fn in_range_and_deterministic(table in ".{0,12}", k in any::<i64>(), shards in 1u32..64) {
            let a = shard_of(&table, &[Value::Integer(k)], shards);
            prop_assert!(a.0 < shards);
            prop_assert_eq!(a, shard_of(&table, &[Value::Integer(k)], shards));
        }
    }
}

//! What one decode may allocate, whatever the payload's compression ratio.
//!
//! `decode` opens a [`Metering`] for its thread; the `deserialize_with` functions below charge
//! every element of the batch's vectors (tables, column names, rows, key and column values) at
//! `size_of` of its Rust type before it is built, and refuse a row or table with more entries
//! than SQLite allows columns. A definite-length CBOR array is charged for its announced length
//! up front, so a huge array is refused before its first element is read. [`cost`] computes
//! the same charge from a built batch, so `encode` refuses exactly what `decode` would.
//!
//! Text, blob and name bytes are not charged: they are copies of decoded CBOR bytes, bounded by
//! `MAX_DECODED_BYTES`.

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::mem::size_of;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

use super::{ChangeBatch, RowChange, TableChanges, Value};

/// Bytes of vector elements one decode may build (see the `wire` module doc for the numbers).
pub const DECODE_BUDGET_BYTES: usize = 128 << 20;
/// SQLite's hard upper bound on columns per table (`SQLITE_MAX_COLUMN`); a row or table with
/// more entries comes from no SQLite database.
pub const MAX_COLUMNS: usize = 32767;
/// Elements preallocated from an announced length: a short message announcing a long array
/// must not make the decoder reserve memory its content will never fill.
const PREALLOC_MAX_BYTES: usize = 64 * 1024;

/// Why metering stopped a decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    Budget { limit: usize },
    Entries { what: &'static str, limit: usize },
}

#[derive(Clone, Copy)]
struct Ledger {
    budget: usize,
    /// `None` outside `decode`: nothing is charged.
    remaining: Option<usize>,
    exceeded: Option<Exceeded>,
}

thread_local! {
    static LEDGER: Cell<Ledger> = const {
        Cell::new(Ledger { budget: 0, remaining: None, exceeded: None })
    };
}

/// The budget of the decode running on this thread; the previous state returns on drop, so a
/// panic or a nested decode leaves nothing behind.
pub struct Metering {
    previous: Ledger,
}

impl Metering {
    pub fn start(budget: usize) -> Metering {
        let previous = LEDGER.with(|l| {
            l.replace(Ledger {
                budget,
                remaining: Some(budget),
                exceeded: None,
            })
        });
        Metering { previous }
    }

    /// Bytes charged so far: the structures the decode built.
    pub fn charged(&self) -> usize {
        LEDGER.with(|l| {
            let l = l.get();
            l.budget - l.remaining.unwrap_or(l.budget)
        })
    }

    /// The limit that stopped the decode, if one did.
    pub fn exceeded(&self) -> Option<Exceeded> {
        LEDGER.with(|l| l.get().exceeded)
    }
}

impl Drop for Metering {
    fn drop(&mut self) {
        LEDGER.with(|l| l.set(self.previous));
    }
}

/// Records why decoding stops and gives the deserializer an error to unwind with.
fn refuse<E: de::Error>(why: Exceeded) -> E {
    LEDGER.with(|l| {
        let mut ledger = l.get();
        ledger.exceeded = Some(why);
        l.set(ledger);
    });
    match why {
        Exceeded::Budget { .. } => E::custom("decode budget exceeded"),
        Exceeded::Entries { what, limit } => E::custom(format!("{what}: over {limit} entries")),
    }
}

fn charge<E: de::Error>(bytes: usize) -> Result<(), E> {
    let mut ledger = LEDGER.with(|l| l.get());
    let Some(remaining) = ledger.remaining else {
        return Ok(());
    };
    match remaining.checked_sub(bytes) {
        Some(left) => {
            ledger.remaining = Some(left);
            LEDGER.with(|l| l.set(ledger));
            Ok(())
        }
        None => Err(refuse(Exceeded::Budget {
            limit: ledger.budget,
        })),
    }
}

/// A vector whose elements are charged before they are built, with at most `limit` of them.
struct Bounded<T> {
    what: &'static str,
    limit: usize,
    element: PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for Bounded<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "an array ({})", self.what)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let too_many = || {
            refuse(Exceeded::Entries {
                what: self.what,
                limit: self.limit,
            })
        };
        let announced = seq.size_hint().unwrap_or(0);
        if announced > self.limit {
            return Err(too_many());
        }
        charge(announced.saturating_mul(size_of::<T>()))?;
        let mut out = Vec::with_capacity(announced.min(PREALLOC_MAX_BYTES / size_of::<T>().max(1)));
        while let Some(element) = seq.next_element()? {
            out.push(element);
            // Indefinite-length arrays announce nothing: charge as elements arrive.
            if out.len() > announced {
                if out.len() > self.limit {
                    return Err(too_many());
                }
                charge(size_of::<T>())?;
            }
        }
        Ok(out)
    }
}

fn bounded<'de, D, T>(d: D, what: &'static str, limit: usize) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    d.deserialize_seq(Bounded {
        what,
        limit,
        element: PhantomData,
    })
}

pub fn tables<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<TableChanges>, D::Error> {
    bounded(d, "the batch's tables", usize::MAX)
}

pub fn names<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    bounded(d, "a table's column names", MAX_COLUMNS)
}

pub fn rows<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<RowChange>, D::Error> {
    bounded(d, "a table's rows", usize::MAX)
}

pub fn values<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Value>, D::Error> {
    bounded(d, "a row's values", MAX_COLUMNS)
}

/// What decoding `batch` charges, or the entry limit it breaks; `decode` refuses the batch
/// exactly when this is over its budget or an error.
pub fn cost(batch: &ChangeBatch) -> Result<usize, Exceeded> {
    let entries = |what: &'static str, len: usize| {
        if len > MAX_COLUMNS {
            Err(Exceeded::Entries {
                what,
                limit: MAX_COLUMNS,
            })
        } else {
            Ok(len)
        }
    };
    let mut bytes = batch.tables.len() * size_of::<TableChanges>();
    for t in &batch.tables {
        let names = entries("a table's column names", t.key_columns.len())?
            + entries("a table's column names", t.columns.len())?;
        bytes += names * size_of::<String>() + t.rows.len() * size_of::<RowChange>();
        for r in &t.rows {
            let values = entries("a row's values", r.key.len())?
                + entries("a row's values", r.values.len())?;
            bytes += values * size_of::<Value>();
        }
    }
    Ok(bytes)
}

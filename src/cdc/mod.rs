//! Change capture (being written).

pub mod watch;

//! `harmonylite` (being written).
fn main() {}

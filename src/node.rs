//! Wiring (being written).

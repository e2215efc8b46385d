//! Hybrid logical clock versions (pure): wall-clock milliseconds in the high bits, a counter in
//! the low 16 bits.

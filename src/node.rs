//! Wiring: builds every subsystem, owns the root cancellation token and the task set, and stops
//! everything in order.

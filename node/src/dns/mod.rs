//! The DNS stub (being built).

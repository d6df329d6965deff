//! fpn-gms (being built).

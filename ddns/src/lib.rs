//! fpn-ddns (being built).

//! Where an endpoint's randomness comes from: the operating system in a
//! real node, a seed in the simulators.
//!
//! Ephemeral X25519 secrets, DDE nonces, negotiation ids and cookie secrets
//! are drawn here. With [`Entropy::Os`] every draw is fresh OS randomness,
//! so no long-lived key in the process can recompute a past ephemeral (the
//! forward secrecy DPRP promises); [`Entropy::Seeded`] expands one seed with
//! HKDF and is reproducible, which is what a deterministic simulator needs
//! and exactly what a real node must not use.

use std::fmt;

use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};

use crate::{Error, Result};

/// The randomness source of an [`Endpoint`](crate::dprp::Endpoint), chosen
/// by its constructor.
pub enum Entropy {
    /// Fresh OS randomness (`getrandom`) for every draw. Use this in a node.
    Os,
    /// A deterministic stream expanded from a seed: the same seed gives the
    /// same ephemerals and ids. For simulators and benchmarks only: anyone
    /// who learns the seed (one memory dump) recomputes every past secret.
    Seeded([u8; 32]),
}

impl fmt::Debug for Entropy {
    // Never the seed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Os => f.write_str("Os"),
            Self::Seeded(_) => f.write_str("Seeded(..)"),
        }
    }
}

/// The running source built from an [`Entropy`].
pub(crate) enum Rng {
    Os(SystemRandom),
    Seeded { prk: hkdf::Prk, counter: u64 },
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

impl Rng {
    pub(crate) fn new(e: Entropy) -> Self {
        match e {
            Entropy::Os => Self::Os(SystemRandom::new()),
            Entropy::Seeded(mut seed) => {
                let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"fpn v1 dprp seed").extract(&seed);
                zeroize::Zeroize::zeroize(&mut seed);
                Self::Seeded { prk, counter: 0 }
            }
        }
    }

    /// Fills `out`. Only the OS source can fail (it never does on Linux once
    /// the pool is initialised, but a failure must not become a panic).
    pub(crate) fn fill(&mut self, out: &mut [u8]) -> Result<()> {
        match self {
            Self::Os(r) => r.fill(out).map_err(|_| Error::Entropy),
            Self::Seeded { prk, counter } => {
                let c = counter.to_be_bytes();
                *counter += 1;
                prk.expand(&[b"fpn v1 dprp rng", &c], Len(out.len()))
                    .and_then(|okm| okm.fill(out))
                    .map_err(|_| Error::Entropy)
            }
        }
    }
}

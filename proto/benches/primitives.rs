//! The public-key primitives DPRP is built from, measured alone with the
//! crates and calls fpn-proto uses (`keys.rs`, `dprp/`): Ed25519 sign and
//! verify (ring), X25519 key generation (a base-point multiplication) and
//! X25519 agreement (x25519-dalek `StaticSecret`), and the OS randomness a
//! negotiation start draws (56 bytes from ring's `SystemRandom`, as
//! `dprp::entropy` does). These are the figures design note 3 weighs
//! against the 200 us negotiation budget, and note 24's getrandom cost.
//!
//! Plain harness instead of criterion: `ROUNDS` rounds (default 5) of
//! `ITERS` operations each (default 2000), thread CPU time
//! (CLOCK_THREAD_CPUTIME_ID, so other load on a shared machine does not
//! inflate it), the four primitives interleaved within each round; prints
//! the per-operation median over the rounds with [min..max] and the load
//! average before and after.
//!
//! Run: `cargo bench -p fpn-proto --bench primitives`
//! (`ROUNDS=5 ITERS=2000 cargo bench -p fpn-proto --bench primitives`).

// A bench binary has no public API to document.
#![allow(missing_docs)]

use std::hint::black_box;

use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, Ed25519KeyPair, KeyPair};
use x25519_dalek::{PublicKey, StaticSecret};

#[path = "support/measure.rs"]
mod measure;
use measure::{env_usize, loadavg, thread_cpu};

/// Microseconds per operation of `iters` calls of `f`, in thread CPU time.
fn per_op_us(iters: usize, mut f: impl FnMut(usize)) -> f64 {
    let start = thread_cpu();
    for i in 0..iters {
        f(i);
    }
    (thread_cpu() - start).as_secs_f64() * 1e6 / iters as f64
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs us with
    // no such flag: then one tiny round, as a smoke test.
    let benching = std::env::args().any(|a| a == "--bench");
    let (rounds, iters) = if benching {
        (env_usize("ROUNDS", 5), env_usize("ITERS", 2000))
    } else {
        (1, 10)
    };

    // Same shapes as the code: a credential-sized message (the compact
    // credential plus the CA signature is about 150 bytes), a node key from
    // a seed as `NodeKey::from_seed` builds it.
    let msg = [0x5au8; 160];
    let pair = Ed25519KeyPair::from_seed_unchecked(&[7u8; 32]).expect("valid seed");
    let public = pair.public_key().as_ref().to_vec();
    let sig = pair.sign(&msg);
    let verifier = signature::UnparsedPublicKey::new(&signature::ED25519, &public);
    verifier
        .verify(&msg, sig.as_ref())
        .expect("own signature verifies");

    let peer = PublicKey::from(&StaticSecret::from([9u8; 32]));
    let mut secrets: Vec<[u8; 32]> = (0..iters)
        .map(|i| {
            let mut s = [0u8; 32];
            s[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
            s[31] = 0x40;
            s
        })
        .collect();

    let names = [
        "ed25519 sign (ring)",
        "ed25519 verify (ring)",
        "x25519 keygen (dalek)",
        "x25519 agreement (dalek)",
        "os random, 56 B (ring)",
    ];
    let rng = SystemRandom::new();
    let mut buf = [0u8; 56];
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let load_before = loadavg();
    for _ in 0..rounds {
        results[0].push(per_op_us(iters, |_| {
            black_box(pair.sign(black_box(&msg)));
        }));
        results[1].push(per_op_us(iters, |_| {
            black_box(verifier.verify(black_box(&msg), sig.as_ref())).expect("verifies");
        }));
        results[2].push(per_op_us(iters, |i| {
            let secret = StaticSecret::from(secrets[i]);
            black_box(PublicKey::from(&secret));
        }));
        results[3].push(per_op_us(iters, |i| {
            let secret = StaticSecret::from(secrets[i]);
            black_box(secret.diffie_hellman(black_box(&peer)));
        }));
        results[4].push(per_op_us(iters, |_| {
            rng.fill(black_box(&mut buf))
                .expect("OS randomness available");
        }));
        // Different scalars each round, so no round replays the last one's.
        for s in &mut secrets {
            s[9] = s[9].wrapping_add(1);
        }
    }
    let load_after = loadavg();

    println!(
        "primitives: {rounds} rounds x {iters} ops, thread CPU per op, median [min..max]; load average {load_before} before, {load_after} after"
    );
    for (name, mut r) in names.iter().zip(results) {
        r.sort_by(f64::total_cmp);
        let median = r[r.len() / 2];
        println!(
            "{name:<26} {median:7.1} us [{:.1}..{:.1}]",
            r[0],
            r[r.len() - 1]
        );
    }
}

//! The TUN interface: created with the overlay address and a prefix that
//! covers the overlay range (so the kernel routes the whole range into it),
//! the configured MTU, up, with the kernel's offloads when asked for
//! ([`crate::tun`], design note 16). Closing the device removes the
//! interface.

use std::net::{Ipv4Addr, Ipv6Addr};

use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::tun::{BlockingTunReader, Offloads, Tun, TunConfig, TunReader, TunWriter};

/// Environment variable that turns the TUN offloads off (`0`, `off`,
/// `false`) or on (anything else) whatever the configuration says: for
/// comparisons (bench/overlay.sh) without editing configuration files.
pub const TUN_OFFLOADS_ENV: &str = "FPN_NODE_TUN_OFFLOADS";

/// Environment variable that turns only the coalescing of TCP writes off
/// (`0`): to measure what it adds on top of the read side.
pub const TUN_COALESCE_ENV: &str = "FPN_NODE_TUN_COALESCE";

/// Whether to coalesce TCP writes (when TSO is granted): unless
/// [`TUN_COALESCE_ENV`] is `0`.
pub fn want_coalesce() -> bool {
    env_on(TUN_COALESCE_ENV)
}

/// Environment variable that makes the driver send native packets itself
/// (`0`) instead of through the native send stage: to measure what the
/// stage adds (bench/overlay-ab.sh, configuration `nostages`).
pub const NATIVE_SEND_STAGE_ENV: &str = "FPN_NODE_NATIVE_SEND_STAGE";

/// Environment variable that makes the driver write the TUN itself (`0`)
/// instead of through the TUN write stage (as [`NATIVE_SEND_STAGE_ENV`]).
pub const TUN_WRITE_STAGE_ENV: &str = "FPN_NODE_TUN_WRITE_STAGE";

/// Environment variable that sets when the native receive ring naps, for
/// measurements (bench/overlay-ab.sh, configuration `ringgap`): `gap` (the
/// rule before design note 72: the next packet within 200 us), `0` or
/// `off` (never: woken per packet), or a number (naps from that many
/// thousand packets a second). Unset: the default (100); anything else is
/// said in the log and ignored.
pub const RING_DENSE_ENV: &str = "FPN_NODE_RING_DENSE";

/// When the native receive ring naps: see [`RING_DENSE_ENV`].
pub fn ring_dense() -> crate::native::RingDense {
    use crate::native::RingDense;
    let Ok(v) = std::env::var(RING_DENSE_ENV) else {
        return RingDense::default();
    };
    match v.trim().to_ascii_lowercase().as_str() {
        "gap" => RingDense::Gap,
        "0" | "off" => RingDense::Never,
        n => n.parse().map_or_else(
            |_| {
                tracing::warn!(
                    value = %v,
                    "{RING_DENSE_ENV} is not gap, off or a number of thousands of packets a second; the default is used"
                );
                RingDense::default()
            },
            RingDense::Kpps,
        ),
    }
}

fn env_on(name: &str) -> bool {
    std::env::var(name).map_or(true, |v| v.trim() != "0")
}

/// Whether native batches go to a send stage: unless
/// [`NATIVE_SEND_STAGE_ENV`] is `0`.
pub fn native_send_thread() -> bool {
    env_on(NATIVE_SEND_STAGE_ENV)
}

/// Whether TUN writes go to a write stage: unless [`TUN_WRITE_STAGE_ENV`]
/// is `0`.
pub fn tun_write_stage() -> bool {
    env_on(TUN_WRITE_STAGE_ENV)
}

/// Environment variable that turns the data-path workers off (`0`, `off`,
/// `false`, `no`) or on, over the `workers` key.
pub const WORKERS_ENV: &str = "FPN_NODE_WORKERS";

/// Whether data-path workers run: [`WORKERS_ENV`] when set, else the
/// configuration key.
pub fn want_workers(config: bool) -> bool {
    env_or(WORKERS_ENV, config)
}

/// Environment variable that sets how many TUN workers run (`0`: none, the
/// driver reads the TUN), over the `tun_workers` key.
pub const TUN_WORKERS_ENV: &str = "FPN_NODE_TUN_WORKERS";

/// How many TUN workers run: none without `workers`; else
/// [`TUN_WORKERS_ENV`] when set (at most the config's maximum), else the
/// configuration's count for this machine's cores.
pub fn tun_workers(cfg: &crate::config::NodeConfig, workers: bool) -> usize {
    if !workers {
        return 0;
    }
    if let Some(n) = std::env::var(TUN_WORKERS_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        return n.min(crate::config::MAX_TUN_WORKERS);
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    cfg.tun_workers_for(cores)
}

/// Environment variable that makes the TUN's writes all go into its first
/// queue (`0`) instead of each flow's own: to measure what spreading the
/// flows over the TUN workers adds (bench/overlay-ab.sh `nospread`).
pub const TUN_SPREAD_ENV: &str = "FPN_NODE_TUN_SPREAD";

/// Whether writes go into each flow's queue: unless [`TUN_SPREAD_ENV`] is
/// `0`.
pub fn spread_writes() -> bool {
    env_on(TUN_SPREAD_ENV)
}

/// Whether to ask for offloads: the environment variable when set, else
/// the configuration key.
pub fn want_offloads(config: bool) -> bool {
    env_or(TUN_OFFLOADS_ENV, config)
}

/// A switch from the environment when set, else `config`.
fn env_or(name: &str, config: bool) -> bool {
    match std::env::var(name) {
        Ok(v) => !matches!(v.trim(), "0" | "off" | "false" | "no"),
        Err(_) => config,
    }
}

/// The opened device: the driver's reader and writer, the TUN workers'
/// readers, and what the kernel granted.
#[derive(Debug)]
pub struct OpenTun {
    /// The driver's read half; `None` when workers read every queue.
    pub reader: Option<TunReader>,
    /// One reader per TUN worker, a queue each.
    pub workers: Vec<BlockingTunReader>,
    /// With TUN workers: a writer per queue, in the readers' order (the
    /// driver's and the receive threads' writes are spread over them).
    pub queue_writers: Vec<TunWriter>,
    /// The write half.
    pub writer: TunWriter,
    /// The offloads the kernel granted (none when not asked for).
    pub offloads: Offloads,
    /// The IPv6 overlay address on the interface; `None` when the host has
    /// no IPv6 (the overlay is then IPv4 only).
    pub address6: Option<Ipv6Addr>,
}

/// Creates and brings up `name` with `addr/prefix`, `addr6` (with the
/// network's /48, so the whole IPv6 overlay is routed into it) and `mtu`,
/// asking for every offload when `offloads` is set. With `workers` above
/// zero the device has that many queues, each read by a worker, and a
/// second descriptor of each for writing. A host without IPv6
/// gets the interface without `addr6` and a warning. Needs the current
/// tokio runtime.
pub fn create(
    name: &str,
    (addr, prefix): (Ipv4Addr, u8),
    addr6: Ipv6Addr,
    mtu: u16,
    offloads: bool,
    workers: usize,
) -> Result<OpenTun> {
    let mut cfg = TunConfig::new(name, mtu);
    cfg.queues = workers.max(1);
    cfg.address = Some((addr, prefix));
    cfg.address6 = Some((addr6, fpn_proto::overlay6::PREFIX_LEN));
    cfg.offloads = if offloads {
        Offloads::ALL
    } else {
        Offloads::NONE
    };
    let tun = match Tun::open(&cfg) {
        Err(Error::TunIo { op, source, .. })
            if matches!(op, "IPv6 sysctl" | "IPv6 socket" | "SIOCSIFADDR (IPv6)") =>
        {
            warn!(tun = name, %addr6, error = %source, step = op, "no IPv6 on this host: the overlay is IPv4 only here");
            cfg.address6 = None;
            Tun::open(&cfg)
        }
        r => r,
    };
    let address6 = cfg.address6.map(|(a, _)| a);
    let tun = tun.map_err(|e| match e {
        Error::TunIo { op, source, .. } => Error::Tun {
            name: name.to_owned(),
            reason: format!("{op}: {source} (needs root or CAP_NET_ADMIN; is the name taken?)"),
        },
        e => e,
    })?;
    let granted = tun.offloads();
    info!(tun = name, asked = offloads, offloads = %granted, "TUN offloads");
    let mut queues = tun.into_queue_fds();
    if queues.is_empty() {
        return Err(Error::TunConfig {
            setting: "queues",
            reason: "the device opened without a queue",
        });
    }
    let (reader, writer, readers, queue_writers) = if workers == 0 {
        let (r, w) = queues.swap_remove(0).register()?;
        (Some(r), w, Vec::new(), Vec::new())
    } else {
        let writers = queues
            .iter()
            .map(|q| q.try_clone()?.register_writer())
            .collect::<Result<Vec<_>>>()?;
        let readers = queues.into_iter().map(|q| q.into_blocking()).collect();
        (None, writers[0].clone(), readers, writers)
    };
    info!(tun = name, workers, "TUN queues");
    Ok(OpenTun {
        reader,
        workers: readers,
        queue_writers,
        writer,
        offloads: granted,
        address6,
    })
}

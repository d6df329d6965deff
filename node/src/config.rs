//! The node's configuration file (TOML); every key has a default, so the
//! file is optional. configs/node/node.toml documents each key.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Default TUN MTU. A protected packet is the plain packet plus PCCOM's
/// 24-byte trailer; on the QUIC carrier it rides in a DATAGRAM frame that
/// holds about 1414 bytes on a 1500-byte link (UDP payload 1452 minus QUIC
/// overhead). 1380 + 24 = 1404 fits with room to spare.
pub const DEFAULT_MTU: u16 = 1380;
/// Default UDP port of the QUIC carrier.
pub const DEFAULT_PORT: u16 = 7718;

/// Default of `max_flows`: PIT entries, about 2 KB each (docs/BENCHMARKS.md,
/// bench `flow_scale`), so a full table stays near 140 MB.
pub const DEFAULT_MAX_FLOWS: usize = 65_536;
/// Upper bound of `flow_idle_secs`: a week.
const MAX_FLOW_IDLE_SECS: u64 = 7 * 86_400;
/// Bounds of `max_flows`.
const MIN_MAX_FLOWS: usize = 16;
const MAX_MAX_FLOWS: usize = 4_194_304;

/// Most TUN workers (queues) a node runs, whatever the cores.
pub const MAX_TUN_WORKERS: usize = 8;

/// Settings of `fpn-node up`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Name of the TUN interface.
    pub tun_name: String,
    /// MTU of the TUN interface.
    pub mtu: u16,
    /// Prefix length of the overlay range routed into the TUN (the GMS's
    /// `overlay_range` must lie inside `overlay address / overlay_prefix`).
    pub overlay_prefix: u8,
    /// Where the QUIC carrier listens (UDP).
    pub listen: SocketAddr,
    /// Run the DNS stub on the overlay address, port 53.
    pub dns: bool,
    /// When systemd-resolved runs, send the zone's names to the stub
    /// through it (`resolvectl dns/domain/default-route` on the TUN,
    /// reverted on exit).
    pub split_dns: bool,
    /// Default log filter when RUST_LOG is unset (e.g. "info", "fpn_node=debug").
    pub log: String,
    /// Seconds a peer's directory entry is trusted before it is asked again.
    pub directory_ttl_secs: u64,
    /// Seconds a PIT entry may stay idle before it ages out.
    pub flow_idle_secs: u64,
    /// The most live flows (PIT entries). A new flow into a full table
    /// evicts the least recently used one idle for a second, or is refused
    /// when none is. About 2 KB of memory each (bench `flow_scale`).
    pub max_flows: usize,
    /// Seconds without the GMS (so possibly missed revocations) after which
    /// new negotiations from peers whose credentials date from before the
    /// GMS was lost are refused, until it is back; 0 turns the bound off.
    pub max_gms_silence_secs: u64,
    /// UDP payload size the QUIC carrier uses from its first packet. 1452
    /// (a 1500-byte link, IPv6 headers) lets a full TUN packet plus the
    /// PCCOM trailer fit one DATAGRAM frame at once; 1200 is the safe
    /// minimum for paths with a smaller MTU (then lower `mtu` too).
    pub quic_initial_mtu: u16,
    /// Which carrier data packets take: `auto` (native when probes get
    /// through, QUIC otherwise), `native` (always native) or `quic` (never
    /// probes native).
    pub carrier: CarrierChoice,
    /// Open a new flow to a peer this node negotiated with in the last
    /// five minutes without a negotiation (fast open: the first packet
    /// leaves at once, keyed from the pair's epoch; docs/PROTOCOL.md).
    /// Off: every flow is negotiated. The environment variable
    /// `FPN_NODE_FAST_OPEN=0` (or `1`) overrides it.
    pub fast_open: bool,
    /// Ask the kernel for the TUN offloads (`IFF_VNET_HDR` with checksum,
    /// TSO and USO: reads of up to 64 KB cut to the MSS in the node, and
    /// coalesced TCP writes). Off only to compare; the environment variable
    /// `FPN_NODE_TUN_OFFLOADS=0` overrides it.
    pub tun_offloads: bool,
    /// The QUIC carrier hands the kernel several datagrams of a peer in
    /// one send (UDP GSO, where the kernel has it; quinn falls back by
    /// itself where it fails). Off only to compare or to rule it out.
    pub quic_gso: bool,
    /// Worker threads of the daemon's async runtime; 0 picks them
    /// ([`NodeConfig::runtime_threads_for`]). The environment variable
    /// `FPN_NODE_THREADS` overrides it.
    pub runtime_threads: usize,
    /// Data-path workers (design note 67): the native receive threads open
    /// the packets of established flows and write them to the TUN
    /// themselves, instead of handing every packet to the driver. Off: the
    /// driver carries every packet. The environment variable
    /// `FPN_NODE_WORKERS=0` (or `1`) overrides it.
    pub workers: bool,
    /// TUN workers (with `workers` on): threads that each read one queue
    /// of a multi-queue TUN and seal and send the packets of established
    /// flows themselves; the driver then reads no queue and gets only what
    /// they do not carry. 0 picks ([`NodeConfig::tun_workers_for`]);
    /// `FPN_NODE_TUN_WORKERS` overrides it.
    pub tun_workers: usize,
    /// Ask the default gateway to forward the carrier's UDP port (NAT-PMP)
    /// and report the mapped address to peers as a candidate; renewed in
    /// the background, deleted on a clean stop.
    pub port_mapping: bool,
    /// The `[metrics]` table: `/metrics` for Prometheus (off by default).
    pub metrics: MetricsSettings,
    /// Where the DNS stub's VINs for hosts behind gateways come from, e.g.
    /// `100.127.0.0/16`; must lie inside the overlay route (overlay address
    /// / `overlay_prefix`), which takes them into the TUN, and must not
    /// overlap the GMS's overlay_range.
    pub vin_range: String,
    /// As a gateway: the ports reserved on the public address for NAT-f
    /// flows, e.g. `47000-47999` (one per flow and protocol). Packets to
    /// them are taken from the kernel: keep the host's own services off them.
    /// It may not contain 7717 (DPRP's), nor on a gateway the `listen`
    /// port.
    pub natf_ports: String,
}

/// The `[metrics]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Where `/metrics` is served over HTTP (TCP), e.g. `127.0.0.1:9477`;
    /// `None` (the default): no listener. Unauthenticated: loopback or a
    /// private address.
    pub listen: Option<SocketAddr>,
}

/// The `carrier` key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CarrierChoice {
    /// Per peer, by the path machine.
    #[default]
    Auto,
    /// Native always (failures show in `status`).
    Native,
    /// QUIC always; native is never probed.
    Quic,
}

impl CarrierChoice {
    /// The path machine's force.
    pub fn force(self) -> fpn_proto::path::Force {
        match self {
            Self::Auto => fpn_proto::path::Force::Auto,
            Self::Native => fpn_proto::path::Force::Native,
            Self::Quic => fpn_proto::path::Force::Quic,
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            tun_name: "fpn0".into(),
            mtu: DEFAULT_MTU,
            overlay_prefix: 10,
            // Both families (IPv4 peers arrive mapped and are told apart
            // by the carrier); IPv4 only where the host has no IPv6.
            listen: SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, DEFAULT_PORT)),
            dns: true,
            split_dns: true,
            log: "info".into(),
            directory_ttl_secs: 300,
            flow_idle_secs: 300,
            max_flows: DEFAULT_MAX_FLOWS,
            max_gms_silence_secs: 86_400,
            quic_initial_mtu: 1452,
            carrier: CarrierChoice::Auto,
            fast_open: true,
            tun_offloads: true,
            quic_gso: true,
            runtime_threads: 0,
            workers: true,
            tun_workers: 0,
            port_mapping: true,
            metrics: MetricsSettings::default(),
            vin_range: "100.127.0.0/16".into(),
            natf_ports: "47000-47999".into(),
        }
    }
}

impl NodeConfig {
    /// Parses and checks a configuration text.
    pub fn parse(text: &str) -> Result<Self> {
        let cfg: Self = toml::from_str(text)
            .map_err(|e| Error::Config(fpn_gms_client::toml_error(text, &e)))?;
        cfg.check()?;
        Ok(cfg)
    }

    /// Reads `path`; `None` gives the defaults.
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!(
                "file {}: {e}; leave --config out for the defaults, or start from the example configs/node/node.toml",
                path.display()
            ))
        })?;
        Self::parse(&text).map_err(|e| match e {
            Error::Config(m) => Error::Config(format!("file {}: {m}", path.display())),
            e => e,
        })
    }

    /// The keys a SIGHUP applies to a running node (docs/NODE.md
    /// "Reload"). Everything else is bound into the TUN, sockets, the
    /// nftables table or the engine at start-up.
    pub const RELOADABLE: [&'static str; 1] = ["log"];

    /// How many worker threads the async runtime gets on a machine with
    /// `cores` cores: `runtime_threads` when set, else one on a machine of
    /// at most two cores and one per core above. On two cores one thread
    /// carries 15 % more over QUIC than two (docs/BENCHMARKS.md, "the
    /// node's runtime threads"): the data path's own threads (the native
    /// send, TUN write and receive threads) use the second core, and a
    /// second runtime thread only moves the driver and quinn's tasks
    /// between the cores. Above two cores that was not measured, so tokio's
    /// default (one per core) stays.
    pub fn runtime_threads_for(&self, cores: usize) -> usize {
        match self.runtime_threads {
            0 if cores <= 2 => 1,
            0 => cores,
            n => n,
        }
    }

    /// How many TUN workers run on a machine with `cores` cores:
    /// `tun_workers` when set (at most [`MAX_TUN_WORKERS`]: each has a
    /// queue, a read arena and a raw socket), else none on a machine of
    /// at most two cores and one per two cores above. On two cores, where
    /// both nodes and iperf3 share the cores, one worker carried native TCP
    /// about as fast as the driver at 12 % less CPU per Gbit/s, but QUIC
    /// 20 % slower (its datagrams wake the runtime's connection task from
    /// another thread), and two were slower on both carriers
    /// (docs/BENCHMARKS.md, "TUN workers"). Above two cores nothing was
    /// measured.
    pub fn tun_workers_for(&self, cores: usize) -> usize {
        match self.tun_workers {
            0 if cores <= 2 => 0,
            0 => (cores / 2).min(MAX_TUN_WORKERS),
            n => n.min(MAX_TUN_WORKERS),
        }
    }

    /// The keys that differ between `self` (in force) and `new` and only
    /// take effect after a restart.
    pub fn restart_keys_changed(&self, new: &NodeConfig) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut diff = |name: &'static str, same: bool| {
            if !same {
                out.push(name);
            }
        };
        diff("tun_name", self.tun_name == new.tun_name);
        diff("mtu", self.mtu == new.mtu);
        diff("overlay_prefix", self.overlay_prefix == new.overlay_prefix);
        diff("listen", self.listen == new.listen);
        diff("dns", self.dns == new.dns);
        diff("split_dns", self.split_dns == new.split_dns);
        diff(
            "directory_ttl_secs",
            self.directory_ttl_secs == new.directory_ttl_secs,
        );
        diff("flow_idle_secs", self.flow_idle_secs == new.flow_idle_secs);
        diff("max_flows", self.max_flows == new.max_flows);
        diff(
            "max_gms_silence_secs",
            self.max_gms_silence_secs == new.max_gms_silence_secs,
        );
        diff(
            "quic_initial_mtu",
            self.quic_initial_mtu == new.quic_initial_mtu,
        );
        diff("carrier", self.carrier == new.carrier);
        diff("fast_open", self.fast_open == new.fast_open);
        diff("tun_offloads", self.tun_offloads == new.tun_offloads);
        diff("quic_gso", self.quic_gso == new.quic_gso);
        diff(
            "runtime_threads",
            self.runtime_threads == new.runtime_threads,
        );
        diff("workers", self.workers == new.workers);
        diff("tun_workers", self.tun_workers == new.tun_workers);
        diff("port_mapping", self.port_mapping == new.port_mapping);
        diff("metrics", self.metrics == new.metrics);
        diff("vin_range", self.vin_range == new.vin_range);
        diff("natf_ports", self.natf_ports == new.natf_ports);
        out
    }

    fn check(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Config(m.to_owned()));
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log) {
            return Err(Error::Config(format!("log = {:?}: {e}", self.log)));
        }
        if self.tun_name.is_empty()
            || self.tun_name.len() > 15
            || !self
                .tun_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return bad("tun_name must be 1-15 of a-z A-Z 0-9 - _");
        }
        if !(576..=9000).contains(&self.mtu) {
            return bad("mtu must be between 576 and 9000");
        }
        if !(8..=30).contains(&self.overlay_prefix) {
            return bad("overlay_prefix must be between 8 and 30");
        }
        if !(1200..=9000).contains(&self.quic_initial_mtu) {
            return bad("quic_initial_mtu must be between 1200 and 9000");
        }
        if self.directory_ttl_secs == 0 || self.flow_idle_secs == 0 {
            return bad("directory_ttl_secs and flow_idle_secs must be positive");
        }
        if self.flow_idle_secs > MAX_FLOW_IDLE_SECS {
            return bad(&format!(
                "flow_idle_secs must be at most {MAX_FLOW_IDLE_SECS} (a week)"
            ));
        }
        if !(MIN_MAX_FLOWS..=MAX_MAX_FLOWS).contains(&self.max_flows) {
            return bad(&format!(
                "max_flows must be between {MIN_MAX_FLOWS} and {MAX_MAX_FLOWS}"
            ));
        }
        self.vin_net()?;
        self.natf_port_range()?;
        Ok(())
    }

    /// `vin_range` as network and prefix length.
    pub fn vin_net(&self) -> Result<(Ipv4Addr, u8)> {
        let bad = || {
            Error::Config(format!(
                "vin_range = {:?}: expected an IPv4 prefix of length 8 to 30 such as \"100.127.0.0/16\"",
                self.vin_range
            ))
        };
        let (ip, len) = self.vin_range.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&len) || u32::from(ip) & !(u32::MAX << (32 - len)) != 0 {
            return Err(bad());
        }
        Ok((ip, len))
    }

    /// `natf_ports` as an inclusive range.
    pub fn natf_port_range(&self) -> Result<std::ops::RangeInclusive<u16>> {
        let bad = || {
            Error::Config(format!(
                "natf_ports = {:?}: expected FIRST-LAST such as \"47000-47999\", ports 1024 and above",
                self.natf_ports
            ))
        };
        let (a, b) = self.natf_ports.split_once('-').ok_or_else(bad)?;
        let a: u16 = a.trim().parse().map_err(|_| bad())?;
        let b: u16 = b.trim().parse().map_err(|_| bad())?;
        if a < 1024 || a > b {
            return Err(bad());
        }
        // A NAT-f flow's wire port comes from this range: on the wire, UDP
        // to DPRP's port is taken as a DPRP message or a probe (design
        // note 73), so it may not be handed to a flow. (The carrier's
        // port is checked where the node is known to be a gateway:
        // `natf_ports_for`.)
        let dprp = fpn_proto::dprp::DPRP_PORT;
        if (a..=b).contains(&dprp) {
            return Err(Error::Config(format!(
                "natf_ports = {:?} contains {dprp}, DPRP's port: choose a range without it, such as \"47000-47999\"",
                self.natf_ports
            )));
        }
        Ok(a..=b)
    }

    /// The NAT-f ports a gateway hands out (`natf_ports`), refused when
    /// they contain the carrier's port (`listen`): UDP to it never reaches
    /// the native receive ring, and the kernel's DNAT of a flow on it would
    /// take the carrier's own datagrams. Only a gateway reserves them, so
    /// any other node keeps whatever `listen` it has.
    pub fn natf_ports_for(&self, gateway: bool) -> Result<std::ops::RangeInclusive<u16>> {
        let range = self.natf_port_range()?;
        let port = self.listen.port();
        if gateway && range.contains(&port) {
            return Err(Error::Config(format!(
                "natf_ports = {:?} contains {port}, the carrier's port (listen = {}): move one of the two",
                self.natf_ports, self.listen
            )));
        }
        Ok(range)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_natf_port_range_with_dprp_s_or_the_carrier_s_port_is_refused() {
        for range in ["7000-7999", "7717-7717"] {
            let text = format!("natf_ports = \"{range}\"");
            let err = NodeConfig::parse(&text).unwrap_err().to_string();
            assert!(err.contains("contains 7717, DPRP's port"), "{range}: {err}");
        }
        // The carrier's port: refused for a gateway only, named in the error.
        let text = "listen = \"[::]:47100\"\nnatf_ports = \"47000-47999\"";
        let c = NodeConfig::parse(text).unwrap();
        let err = c.natf_ports_for(true).unwrap_err().to_string();
        assert!(err.contains("contains 47100, the carrier's port"), "{err}");
        assert_eq!(c.natf_ports_for(false).unwrap(), 47000..=47999);
        let c = NodeConfig::parse("natf_ports = \"7719-7800\"").unwrap();
        assert_eq!(c.natf_ports_for(true).unwrap(), 7719..=7800);
    }

    #[test]
    fn the_example_file_parses_to_the_defaults() {
        let text = include_str!("../../configs/node/node.toml");
        assert_eq!(NodeConfig::parse(text).unwrap(), NodeConfig::default());
    }

    #[test]
    fn the_runtime_gets_one_thread_on_two_cores_unless_configured() {
        let mut c = NodeConfig::default();
        assert_eq!(c.runtime_threads_for(1), 1);
        assert_eq!(c.runtime_threads_for(2), 1);
        assert_eq!(c.runtime_threads_for(8), 8);
        c.runtime_threads = 3;
        assert_eq!(c.runtime_threads_for(2), 3);
        let parsed = NodeConfig::parse("runtime_threads = 2").unwrap();
        assert_eq!(parsed.runtime_threads_for(2), 2);
        assert!(NodeConfig::parse("runtime_threads = -1").is_err());
        assert_eq!(c.tun_workers_for(2), 0);
        assert_eq!(c.tun_workers_for(4), 2);
        assert_eq!(c.tun_workers_for(64), MAX_TUN_WORKERS);
        let parsed = NodeConfig::parse("tun_workers = 1").unwrap();
        assert_eq!(parsed.tun_workers_for(4), 1);
    }

    #[test]
    fn bad_values_and_unknown_keys_are_refused() {
        for bad in [
            "mtu = 100",
            "tun_name = \"a-very-long-interface-name\"",
            "tun_name = \"bad name\"",
            "overlay_prefix = 31",
            "vin_range = \"100.127.0.1/16\"",
            "vin_range = \"100.127.0.0/31\"",
            "vin_range = \"nope\"",
            "natf_ports = \"80-90\"",
            "natf_ports = \"48000-47000\"",
            "listen = \"nope\"",
            "colour = \"blue\"",
            "flow_idle_secs = 0",
            "flow_idle_secs = 99999999999",
            "max_flows = 0",
            "max_flows = 99999999",
            "carrier = \"udp\"",
            "[metrics]\nlisten = \"localhost\"",
            "[metrics]\nlisten = \"127.0.0.1\"",
            "[metrics]\nport = 9477",
        ] {
            assert!(NodeConfig::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(NodeConfig::default().metrics.listen, None, "off by default");
        let m = NodeConfig::parse("[metrics]\nlisten = \"127.0.0.1:9477\"").unwrap();
        assert_eq!(m.metrics.listen, Some("127.0.0.1:9477".parse().unwrap()));
        let c = NodeConfig::parse("tun_name = \"fpn7\"\nmtu = 1280\ndns = false").unwrap();
        assert_eq!((c.tun_name.as_str(), c.mtu, c.dns), ("fpn7", 1280, false));
        for (text, force) in [
            ("carrier = \"auto\"", fpn_proto::path::Force::Auto),
            ("carrier = \"native\"", fpn_proto::path::Force::Native),
            ("carrier = \"quic\"", fpn_proto::path::Force::Quic),
        ] {
            assert_eq!(NodeConfig::parse(text).unwrap().carrier.force(), force);
        }
    }
}

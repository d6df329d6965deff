//! `fpn-node up`: wires the pieces together and runs until told to stop.
//!
//! Start-up order: lock the state directory, load the identity, create the
//! TUN, bind the carrier, start the GMS session (keys from the cache are
//! usable at once), build the DPRP endpoint and the PIT, start the node
//! core's driver, the GMS task, the DNS stub and the control socket, then
//! log `node ready`.
//! Shutdown (SIGTERM, SIGINT, `fpn-node down`, or the GMS revoking the
//! node) reverses it; the TUN disappears when its device is dropped.

pub(crate) mod addrs;
mod ping;
mod tun;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fpn_gms_client::{self as client, Identity, Session, SessionConfig, sd_notify};
use fpn_proto::dprp::{self, Endpoint, Entropy, Prefix};
use fpn_proto::flow::FlowId;
use fpn_proto::pit::{Pit, PitConfig};
use ring::rand::SecureRandom;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument, error, info, info_span, warn};

pub use addrs::local_addresses;
pub use tun::{tun_workers, want_workers};

use crate::carrier::{QuicCarrier, QuicCarrierConfig};
use crate::clock::Clock;
use crate::config::NodeConfig;
use crate::control::{Call, ControlServer, MAX_PING_COUNT, Request, Response};
use crate::core::{Command, CoreConfig, NodeCore};
use crate::directory::Directory;
use crate::dns::{DnsConfig, DnsStub, NameTable, resolved};
use crate::driver::{Driver, Query};
use crate::error::{Error, Result};
use crate::gms::{GmsTask, Shared};
use crate::state::StateDir;
use crate::status::{
    ConfigStatus, CredentialStatus, GmsStatus, GroupStatus, Netcheck, PingReport, Status, WhyReport,
};

/// Enrolls with `token` and saves the identity in `state`.
pub async fn enroll(token: &str, state: &StateDir) -> Result<Identity> {
    let endpoint = client::endpoint_any()?;
    let id = client::enroll(token.trim(), &endpoint)
        .await
        .map_err(|e| enroll_error(token.trim(), e))?;
    state.save_identity(&id)?;
    endpoint.close(0u32.into(), b"enrolled");
    Ok(id)
}

/// A failed enrollment as the user can fix it: the refusals a newcomer
/// meets (a used or expired token, a removed GE) with the step that fixes
/// each, and a GMS that does not answer with where to look.
fn enroll_error(token: &str, e: fpn_gms_client::Error) -> Error {
    use fpn_gms_client::Error as C;
    use fpn_gms_client::wire::RefusalCode as R;
    match e {
        C::Refused { code, reason } => {
            let code = R::from_u16(code);
            let fix = match code {
                R::TokenUsed => {
                    "a token enrolls once: if this machine enrolled with it, run `sudo fpn-node up --state DIR` with that state directory; otherwise create a new token on the GMS with `fpn-gms token create NAME`"
                }
                R::TokenExpired => {
                    "create a new token on the GMS with `fpn-gms token create NAME --ttl 1h` and enroll with it at once"
                }
                R::InvalidToken => {
                    "the GMS does not know this token (mistyped, or made by another GMS): copy it again, or create a new one with `fpn-gms token create NAME`"
                }
                R::UnknownGe => {
                    "the GE was removed: add it again with `fpn-gms ge add NAME --kind ges --mode op --group N`, then `fpn-gms token create NAME`"
                }
                R::Revoked => {
                    "the GE is revoked: remove it (`fpn-gms ge remove NAME`), add it again and create a new token"
                }
                R::BadProof | R::Protocol => {
                    "this fpn-node and the GMS disagree on the protocol: run the same fpn version on both"
                }
                R::Internal => "the GMS failed to store the enrollment: look at its log and retry",
            };
            Error::EnrollRefused { code, reason, fix }
        }
        e @ (C::Timeout(_) | C::Connection(_) | C::Connect(_)) => {
            match fpn_gms_client::token::Token::parse(token) {
                Ok(t) => Error::GmsUnreachable {
                    addr: t.gms_addr.clone(),
                    source: e,
                },
                Err(_) => e.into(),
            }
        }
        e => e.into(),
    }
}

/// Whether this process may create the TUN device and set routes: root,
/// or CAP_NET_ADMIN in its effective set (a systemd unit's
/// AmbientCapabilities, or `setcap` on the binary).
fn has_net_admin() -> bool {
    // SAFETY: geteuid has no preconditions and touches no memory of ours.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    const CAP_NET_ADMIN: u32 = 12;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}

/// What identifies this node.
#[derive(Debug, Clone)]
struct Me {
    name: String,
    ge: fpn_proto::ge::GeId,
    overlay: Ipv4Addr,
    /// The IPv6 overlay address once the TUN has it (`None`: no IPv6 here).
    overlay6: Option<std::net::Ipv6Addr>,
    /// The network's IPv6 overlay prefix (from the CA key).
    net6: fpn_proto::overlay6::Overlay6,
    zone: String,
}

/// How the running daemon reloads its configuration on SIGHUP: the file
/// `up` read it from, and how to change the log filter (the binary owns
/// the tracing subscriber). `Default`: nothing to reload from.
#[derive(Default)]
pub struct Reload {
    /// The `--config` file (`None`: the defaults; SIGHUP changes nothing).
    pub path: Option<PathBuf>,
    /// Installs a new log filter; `None` when `RUST_LOG` fixed it.
    pub set_log: Option<LogSetter>,
}

/// Installs a log filter (the `log` key's text); `Err` says why not.
pub type LogSetter = Box<dyn Fn(&str) -> std::result::Result<(), String> + Send + Sync>;

impl std::fmt::Debug for Reload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reload")
            .field("path", &self.path)
            .field("set_log", &self.set_log.is_some())
            .finish()
    }
}

/// Runs the daemon until it is stopped. `Err(Error::Terminated)` when the
/// GMS revoked this node (its keys are erased first).
pub async fn up(state: StateDir, cfg: NodeConfig) -> Result<()> {
    up_with(state, cfg, Reload::default()).await
}

/// [`up`], reloading the configuration's live keys
/// ([`NodeConfig::RELOADABLE`]) on SIGHUP as `reload` says, and telling
/// systemd `READY=1` once the node serves and `STOPPING=1` when it stops
/// (`Type=notify`; nothing without `NOTIFY_SOCKET`).
pub async fn up_with(state: StateDir, cfg: NodeConfig, reload: Reload) -> Result<()> {
    // The mistakes of a first run, each named with its fix, before the
    // lock file (whose "No such file" would name neither).
    if !has_net_admin() {
        return Err(Error::NeedsPrivilege {
            state: state.root().to_owned(),
        });
    }
    state.check_enrolled()?;
    // A daemon that was just told to stop may still be closing: give it a moment.
    let mut tries = 0;
    let _lock = loop {
        match state.lock() {
            Err(Error::AlreadyRunning(_)) if tries < 30 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            r => break r?,
        }
    };
    let identity = state.load_identity()?;
    let cred = client::verify_from_gms(&identity.credential, &identity.ca_public)?;
    let me = Me {
        name: cred.info.name.clone(),
        ge: cred.info.id,
        overlay: cred.info.overlay,
        overlay6: None,
        net6: fpn_proto::overlay6::Overlay6::of_ca(&identity.ca_public),
        zone: identity.zone.clone(),
    };
    let span = info_span!("node", name = %me.name, ge = %me.ge);
    run(state, cfg, identity, cred, me, reload)
        .instrument(span)
        .await
}

async fn run(
    state: StateDir,
    cfg: NodeConfig,
    identity: Identity,
    cred: fpn_proto::credential::Credential,
    mut me: Me,
    reload: Reload,
) -> Result<()> {
    // Bound first: a metrics address that cannot be used stops the start
    // before anything else is set up.
    let metrics = cfg
        .metrics
        .listen
        .map(|a| fpn_gms_client::metrics::MetricsServer::bind(a).map_err(Error::Metrics))
        .transpose()?;
    let net6 = fpn_proto::overlay6::Overlay6::of_ca(&identity.ca_public);
    let want_workers = tun::want_workers(cfg.workers);
    let create = |workers| {
        tun::create(
            &cfg.tun_name,
            (me.overlay, cfg.overlay_prefix),
            net6.address(me.overlay),
            cfg.mtu,
            tun::want_offloads(cfg.tun_offloads),
            workers,
        )
    };
    let mut dev = match tun::tun_workers(&cfg, want_workers) {
        0 => create(0)?,
        n => create(n).or_else(|e| {
            // A device of that name made without queues (persistent), or
            // a kernel without multi-queue TUN: one queue, the driver's.
            warn!(error = %e, workers = n, "TUN with a queue per worker not made; the driver reads one queue");
            create(0)
        })?,
    };
    let tun_offloads = dev.offloads;
    // The daemon keeps a handle so the interface outlives the driver until
    // the end of shutdown (it goes away with the last descriptor).
    let tun_keep = dev.writer.clone();
    let overlay6 = dev.address6;
    me.overlay6 = overlay6;
    info!(tun = %cfg.tun_name, overlay = %me.overlay, overlay6 = ?overlay6, mtu = cfg.mtu, offloads = %tun_offloads, "TUN up");

    let mut ccfg = QuicCarrierConfig::new(identity.clone());
    ccfg.listen = cfg.listen;
    // From the first packet on, a full TUN packet plus the PCCOM trailer
    // must fit one DATAGRAM frame (see config::DEFAULT_MTU).
    ccfg.initial_mtu = cfg.quic_initial_mtu;
    ccfg.mtu_upper_bound = ccfg.mtu_upper_bound.max(cfg.quic_initial_mtu);
    ccfg.segmentation_offload = cfg.quic_gso;
    let (carrier, inbound) = QuicCarrier::bind(ccfg)?;
    let carrier = Arc::new(carrier);
    let port = carrier.local_addr().port();
    let reported = local_addresses(port, &cfg.tun_name);
    info!(listen = %carrier.local_addr(), reported = ?reported, "carrier bound");

    // The relay link (idle until the GMS names a relay), and the carrier
    // that falls back to it when direct QUIC to a peer fails.
    let (relayed_tx, relayed_rx) = mpsc::channel(4096);
    // Both families when the carrier has them: the relay may be reachable
    // over IPv6 only.
    let relay_bind = if carrier.local_addr().is_ipv6() {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from(([0, 0, 0, 0], 0))
    };
    let relay = match fpn_relay::RelayClient::new(
        relay_bind,
        &identity.ca_cert,
        &identity.cert,
        identity.key_pkcs8(),
        relayed_tx,
    ) {
        Ok(r) => Some(r),
        Err(e) => {
            warn!(error = %e, "relay link unavailable: peers reach this node directly or not at all");
            None
        }
    };
    let path_carrier = crate::carrier::PathCarrier::new(carrier.clone(), relay.clone());
    let relay_inbound = tokio::spawn(path_carrier.clone().run_inbound(relayed_rx));

    // The GMS session runs on the carrier's socket: the address the GMS
    // sees it come from is then the carrier's reflexive address (what a
    // NAT maps port 7718 to), which peers are handed as a candidate.
    let endpoint = carrier.endpoint();
    let punch_requests = carrier
        .take_punch_requests()
        .ok_or_else(|| Error::Control("the carrier's punch requests were taken already".into()))?;
    // The native receive path skips the datagrams of the QUIC sockets (the
    // carrier's, which the GMS session shares, and the relay link's).
    let own_udp_ports: Vec<u16> = [Some(port), relay.as_ref().and_then(|r| r.local_port())]
        .into_iter()
        .flatten()
        .collect();
    let mut scfg = SessionConfig::with_cache(state.key_cache());
    scfg.reported = reported.clone();
    // Renewals replace node.crt and credential where enrollment put them.
    scfg.identity_dir = Some(state.root().to_path_buf());
    let session = Session::start(identity.clone(), endpoint, scfg)?;

    // The real-address plane: the prefixes the credential names besides
    // the overlay address (a GES's real address, a gateway's LANs) are
    // this node's to protect too; nothing to configure on the node.
    let real_prefixes = cred.prefixes.clone();
    let kind = cred.info.kind;
    let mut protected = vec![
        Prefix::host(IpAddr::V4(me.overlay)),
        Prefix::host(IpAddr::V6(net6.address(me.overlay))),
    ];
    protected.extend(real_prefixes.iter().copied());
    let mut dcfg = dprp::Config::new(identity.node_key()?, cred, identity.ca_public, protected);
    dcfg.fast_open = want_fast_open(cfg.fast_open);
    dcfg.fast_first = want_fast_first();
    // Before design note 73 the setting never reached DPRP: every gateway
    // reserved 47000-47999 whatever it said.
    dcfg.natf_ports = cfg.natf_ports_for(kind.is_gateway())?;
    info!(
        fast_open = dcfg.fast_open,
        fast_first = dcfg.fast_first,
        "DPRP"
    );
    if std::env::var_os(UNSAFE_NO_FLOOD_LIMITS).is_some() {
        dcfg.limits = unlimited(dcfg.limits);
        tracing::warn!(
            "{UNSAFE_NO_FLOOD_LIMITS} is set: DPRP budgets, capacities and cookies are off (tests only)"
        );
    }
    let clock = Clock::new();
    // Fresh OS randomness for every ephemeral, nonce and id: a seed kept for
    // the process's life would let one memory dump recompute them all.
    let dprp = Endpoint::new(dcfg, Entropy::Os, fpn_gms_client::now_unix(), clock.now())?;
    let pit = Pit::new(PitConfig {
        idle_timeout: Duration::from_secs(cfg.flow_idle_secs),
        max_entries: cfg.max_flows,
        ..PitConfig::default()
    });

    // The native carrier: its table is named after the TUN, so opening it
    // replaces one a killed node left (the crash recovery).
    // Data-path workers on the native receive threads write the TUN
    // themselves (design note 67).
    // With several TUN workers, each flow's packets are written into the
    // queue of its flow, so the kernel hands its outbound packets to that
    // queue's worker (the workers share the flows).
    let tun_writer: Arc<dyn crate::driver::TunWriter> =
        match crate::driver::SpreadWriter::new(std::mem::take(&mut dev.queue_writers)) {
            Some(spread) if tun::spread_writes() => Arc::new(spread),
            _ => Arc::new(dev.writer),
        };
    let coalesce = tun::want_coalesce();
    let mut hub = crate::driver::WorkerHub::new();
    let install_capacity = crate::core::worker::Worker::capacity_for(cfg.max_flows);
    let taps = if want_workers && cfg.carrier != crate::config::CarrierChoice::Quic {
        hub.ring_workers(&tun_writer, tun_offloads, coalesce, clock, install_capacity)
    } else {
        Vec::new()
    };
    // With TUN workers the driver sends only a flow's first packets, and
    // on its own thread: a worker may send the flow's next ones once the
    // driver has (`driver/fence.rs`), so they must be on the wire by then.
    let send_thread = tun::native_send_thread() && dev.workers.is_empty();
    let (native, native_unavailable, flow_ctl) =
        open_native(&cfg, own_udp_ports, taps, send_thread);
    if native.is_none() {
        hub.drop_ring_workers();
    }
    let tun_queues = std::mem::take(&mut dev.workers);
    if !tun_queues.is_empty() {
        let (slot, room) = crate::driver::tun_slot(crate::core::buffer_len_for(cfg.mtu));
        let parts = crate::driver::TunWorkerParts {
            carrier: path_carrier.clone(),
            native: native.is_some(),
            clock,
            slot,
            room,
            install_capacity,
        };
        hub.tun = Some(crate::driver::TunWorkers::start(tun_queues, &parts, &hub)?);
    }
    hub.started();
    let kinds = hub.kinds();
    let workers = (kinds != crate::core::InstallKinds::default()).then_some(hub);
    info!(receive = kinds.native, tun = kinds.tun, "data-path workers");
    // A NAT-f gateway table a killed node left: its pairs are stale (the
    // new node makes a fresh one at its first mapping).
    if let Ok(true) = crate::native::natf_cleanup(&cfg.tun_name) {
        info!("deleted the NAT-f gateway table a previous run left");
    }

    let (dir_tx, dir_rx) = mpsc::channel(256);
    let (eng_tx, eng_rx) = mpsc::channel(1024);
    let (query_tx, query_rx) = mpsc::channel(32);
    let net_len = cfg.overlay_prefix;
    let net = Ipv4Addr::from(u32::from(me.overlay) & (u32::MAX << (32 - u32::from(net_len))));
    let vin_range = cfg.vin_net()?;
    if vin_range.1 < net_len
        || !crate::core::in_net(vin_range.0, (net, net_len))
        || crate::core::in_net(me.overlay, vin_range)
    {
        return Err(crate::error::Error::Config(format!(
            "vin_range = \"{}/{}\" must lie inside the overlay route {net}/{net_len} (the TUN's) and not hold this node's overlay address {}: pick a range such as 100.127.0.0/16 outside the GMS's overlay_range",
            vin_range.0, vin_range.1, me.overlay
        )));
    }
    let mut core = NodeCore::new(
        CoreConfig {
            overlay: me.overlay,
            mtu: cfg.mtu,
            overlay_net: (net, net_len),
            path: fpn_proto::path::PathConfig {
                force: cfg.carrier.force(),
                ..fpn_proto::path::PathConfig::default()
            },
            unix_start: fpn_gms_client::now_unix(),
            max_gms_silence: (cfg.max_gms_silence_secs > 0)
                .then(|| Duration::from_secs(cfg.max_gms_silence_secs)),
            vin_range,
            net6,
        },
        dprp,
        pit,
    );
    core.enable_installs(kinds);
    let dir = Directory::load(&state.peer_cache()).unwrap_or_else(|e| {
        warn!(error = %e, "peer cache unreadable; starting empty");
        Directory::default()
    });
    for r in dir.iter() {
        let _ = eng_tx.try_send(Command::Peer(r.clone()));
    }
    // Hosts behind gateways from the cache: VINs (and, on a gateway, its
    // hosts) work before the GMS answers.
    if !dir.hosts().is_empty() {
        let _ = eng_tx.try_send(Command::Hosts(crate::directory::core_hosts(dir.hosts())));
    }
    let names = NameTable::new();
    // The DNS stub's names are published by the driver from the core's
    // peer table; until the first change, this node's own name is there.
    let names6 = overlay6.map(|_| net6);
    if let Err(e) = names.insert(&me.name, crate::driver::peer_target(me.overlay, names6)) {
        warn!(error = %e, "own name not in the name table");
    }
    core.set_real_prefixes(real_prefixes.clone());
    let real_plane = start_real_plane(&cfg.tun_name, &real_prefixes, kind);
    let (local_tx, local_rx) = mpsc::channel(4);
    let moves = start_move_watch(&cfg.tun_name, port, reported.clone(), local_tx);
    let driver = Driver {
        core,
        clock,
        carrier: path_carrier.clone(),
        tun: crate::driver::TunParts {
            reader: dev.reader,
            writer: tun_writer,
            offloads: tun_offloads,
            coalesce,
            write_stage: tun::tun_write_stage(),
        },
        commands: eng_rx,
        queries: query_rx,
        inbound,
        dir_requests: dir_tx,
        names: Some((names.clone(), me.name.clone(), me.overlay, names6)),
        native,
        native_unavailable,
        natf_tun: Some(cfg.tun_name.clone()),
        on_path: kind.is_gateway() && real_plane.is_some(),
        real_plane,
        moves,
        workers,
    };
    let mut engine_task = tokio::spawn(driver.run().instrument(info_span!("engine")));
    // The engine ends only when told to, or when its data path cannot go
    // on (a TUN worker stopped): then the node stops too.
    let mut engine_ended = false;

    let shared = Shared::new(dir);
    let (observe_tx, observe_rx) = mpsc::channel(4);
    // Port mapping runs in the background: start-up never waits for the
    // gateway, and the mapped address reaches the GMS when it comes.
    let (mapped_tx, mapped_rx) = mpsc::channel(4);
    let portmap = cfg
        .port_mapping
        .then(|| crate::portmap::PortMapper::start(port, mapped_tx));
    let gms = GmsTask {
        session,
        ca_public: identity.ca_public,
        own_ge: me.ge,
        engine: eng_tx.clone(),
        carrier: carrier.clone(),
        relay: relay.clone(),
        shared: shared.clone(),
        cache_path: state.peer_cache(),
        requests: dir_rx,
        ttl: cfg.directory_ttl_secs,
        punch_requests,
        observe_requests: observe_rx,
        reported: reported.clone(),
        mapped_updates: portmap.as_ref().map(|_| mapped_rx),
        mapped: None,
        local_updates: Some(local_rx),
        fetch_credentials: !real_prefixes.is_empty(),
        queries: query_tx.clone(),
        following: crate::gms::Following::default(),
    };
    let mut gms_task = tokio::spawn(gms.run().instrument(info_span!("gms")));

    let mut split_dns = None;
    let dns_task = if cfg.dns {
        let dcfg = DnsConfig::new(SocketAddr::new(IpAddr::V4(me.overlay), 53), &me.zone, names)?;
        let stub = DnsStub::bind(dcfg).await?;
        info!(listen = %stub.local_addr(), zone = %me.zone, "DNS stub up");
        let local = stub.local_addr();
        let task = tokio::spawn(stub.run());
        if cfg.split_dns {
            split_dns = split_dns_set_up(&cfg.tun_name, local, &me.zone);
        }
        Some(task)
    } else {
        None
    };

    let control = ControlServer::bind(&state.control_socket())?;
    let (call_tx, mut calls) = mpsc::channel::<Call>(32);
    let control_task = tokio::spawn(control.serve(call_tx));

    let mut term = signal(SignalKind::terminate()).map_err(|source| Error::Io {
        what: "installing the SIGTERM handler".into(),
        source,
    })?;
    let mut int = signal(SignalKind::interrupt()).map_err(|source| Error::Io {
        what: "installing the SIGINT handler".into(),
        source,
    })?;
    let mut hup = signal(SignalKind::hangup()).map_err(|source| Error::Io {
        what: "installing the SIGHUP handler".into(),
        source,
    })?;
    let config_status = Arc::new(std::sync::Mutex::new(ConfigStatus {
        path: reload
            .path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        log: cfg.log.clone(),
        log_from_env: reload.set_log.is_none(),
        ..ConfigStatus::default()
    }));
    let mut in_force = cfg.clone();
    info!(
        name = %me.name,
        overlay = %me.overlay,
        zone = %me.zone,
        "node ready"
    );
    notify_systemd(sd_notify::READY);

    let ctx = Ctx {
        me: me.clone(),
        queries: query_tx,
        shared: shared.clone(),
        tun_offloads,
        observe: observe_tx,
        tun_name: cfg.tun_name.clone(),
        carrier_port: port,
        portmap: portmap
            .as_ref()
            .map(crate::portmap::PortMapper::status_handle),
        config: config_status.clone(),
        carrier: path_carrier.clone(),
        relay: relay.clone(),
    };
    let metrics_task = match metrics {
        Some(m) => {
            info!(listen = %m.local_addr(), "metrics at /metrics");
            let ctx = ctx.clone();
            Some(
                m.spawn(std::sync::Arc::new(move || {
                    let ctx = ctx.clone();
                    Box::pin(async move { ctx.metrics().await })
                }))
                .map_err(Error::Metrics)?,
            )
        }
        None => None,
    };
    let outcome: Result<()> = loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: stopping"); break Ok(()); }
            _ = int.recv() => { info!("SIGINT: stopping"); break Ok(()); }
            _ = hup.recv() => reload_config(&reload, &mut in_force, &config_status),
            _ = &mut engine_task, if !engine_ended => {
                engine_ended = true;
                break Err(Error::Control("the engine stopped: its data path cannot go on (see the log above)".into()));
            }
            r = &mut gms_task => {
                match r {
                    Ok(Err(Error::Terminated(reason))) => {
                        error!(%reason, "this node was revoked by the GMS: erasing its keys and stopping");
                        let _ = eng_tx.send(Command::EraseKeys).await;
                        let _ = std::fs::remove_file(state.key_cache());
                        break Err(Error::Terminated(reason));
                    }
                    Ok(Err(e)) => break Err(e),
                    Ok(Ok(())) => break Err(Error::Control("the GMS session task ended".into())),
                    Err(e) => break Err(Error::Control(format!("the GMS session task failed: {e}"))),
                }
            }
            c = calls.recv() => {
                let Some(c) = c else { continue };
                if c.request == Request::Down {
                    info!("stop requested over the control socket");
                    let _ = c.reply.send(Response { ok: true, ..Response::default() });
                    break Ok(());
                }
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    let resp = ctx.answer(c.request).await;
                    let _ = c.reply.send(resp);
                });
            }
        }
    };

    notify_systemd(sd_notify::STOPPING);
    control_task.abort();
    if let Some(t) = metrics_task {
        t.abort();
    }
    if let Some(sd) = split_dns {
        let ifname = sd.ifname().to_owned();
        if let Err(e) = sd.revert(&resolved::SystemRunner) {
            warn!(error = %e, ifname, "reverting the systemd-resolved set-up");
        }
    }
    if let Some(t) = dns_task {
        t.abort();
    }
    gms_task.abort();
    drop(eng_tx);
    drop(ctx);
    if !engine_ended {
        let _ = tokio::time::timeout(Duration::from_secs(2), engine_task).await;
    }
    if let Some(ctl) = flow_ctl {
        // The driver's handle is gone with it: the thread deletes the table.
        let table = ctl.table().to_owned();
        let closing = tokio::task::spawn_blocking(move || ctl.close());
        if tokio::time::timeout(Duration::from_secs(3), closing)
            .await
            .is_err()
        {
            warn!(%table, "the native table was not deleted in time; the next start replaces it");
        }
    }
    // The gateway forgets the mapping at its lifetime's end anyway; deleting
    // it now closes the port at once (bounded to about a second).
    if let Some(pm) = portmap {
        pm.stop().await;
    }
    carrier.close().await;
    if let Some(r) = &relay {
        r.close();
    }
    relay_inbound.abort();
    drop(tun_keep);
    info!("stopped; TUN removed");
    outcome
}

/// Sends `state` to systemd; a failure is logged, never fatal.
fn notify_systemd(state: &str) {
    if let Err(e) = sd_notify::notify(state) {
        warn!(error = %e, state, "cannot notify systemd");
    }
}

/// SIGHUP: reads the configuration file again and applies its live keys
/// ([`NodeConfig::RELOADABLE`]). An unreadable or invalid file changes
/// nothing (logged, and shown in `status`); changed keys that need a
/// restart are logged and shown as pending.
fn reload_config(
    reload: &Reload,
    in_force: &mut NodeConfig,
    status: &std::sync::Mutex<ConfigStatus>,
) {
    let mut st = status.lock().unwrap_or_else(|p| p.into_inner());
    let Some(path) = &reload.path else {
        info!("SIGHUP: no --config file; nothing to reload");
        return;
    };
    notify_systemd(&sd_notify::reloading_message());
    let new = match NodeConfig::load(Some(path)) {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "SIGHUP: reload failed; the configuration in force is kept");
            st.reload_error = Some(e.to_string());
            notify_systemd(sd_notify::READY);
            return;
        }
    };
    if let Some(set_log) = &reload.set_log
        && new.log != in_force.log
    {
        // Checked by NodeConfig::load already; a refusal here keeps the old filter.
        if let Err(e) = set_log(&new.log) {
            warn!(error = %e, "SIGHUP: log filter not changed");
            st.reload_error = Some(e);
            notify_systemd(sd_notify::READY);
            return;
        }
    }
    in_force.log = new.log.clone();
    st.log = new.log.clone();
    st.reloads += 1;
    st.reload_error = None;
    // Compared with the file the node started from: a key changed back
    // is no longer pending.
    let pending = in_force.restart_keys_changed(&new);
    st.restart_pending = pending.iter().map(|k| (*k).to_owned()).collect();
    if pending.is_empty() {
        info!(log = %new.log, "configuration reloaded");
    } else {
        warn!(log = %new.log, restart = ?pending, "configuration reloaded; changed keys that need a restart keep their old values until then");
    }
    notify_systemd(sd_notify::READY);
}

/// Opens the native carrier unless `carrier = "quic"`; when the host does
/// not allow it (no CAP_NET_RAW/CAP_NET_ADMIN, no nft), says so once and
/// returns why, and every peer stays on QUIC. `send_thread`: the driver's
/// native batches go through a send stage.
fn open_native(
    cfg: &NodeConfig,
    own_udp_ports: Vec<u16>,
    taps: Vec<Box<dyn crate::native::RxTap>>,
    send_thread: bool,
) -> (
    Option<crate::driver::NativeParts>,
    Option<fpn_proto::path::Unavailable>,
    Option<crate::native_link::FlowCtl>,
) {
    if cfg.carrier == crate::config::CarrierChoice::Quic {
        return (None, None, None);
    }
    let local = addrs::local_ips(&cfg.tun_name);
    if local.is_empty() {
        // The receive ring's filter takes packets to the host's addresses
        // (either family, note 63); there are none.
        info!("no underlay address on this host: every peer uses QUIC");
        return (None, Some(fpn_proto::path::Unavailable::NoAddress), None);
    }
    match crate::native_link::open(
        &cfg.tun_name,
        local.clone(),
        own_udp_ports,
        send_thread,
        taps,
        tun::ring_dense(),
    ) {
        Ok((link, rx, ctl, ready)) => {
            info!(
                table = ctl.table(),
                send_thread = link.has_send_thread(),
                "native carrier open"
            );
            let flow_ops = ctl.sender().expect("a fresh FlowCtl has its sender");
            (
                Some(crate::driver::NativeParts {
                    link,
                    rx,
                    flow_ops,
                    ready,
                    local: crate::native_link::LocalAddrs::new(local),
                    tun: cfg.tun_name.clone(),
                }),
                None,
                Some(ctl),
            )
        }
        Err((why, e)) => {
            warn!(error = %e, reason = ?why, "native carrier unavailable: every peer stays on QUIC");
            (None, Some(why), None)
        }
    }
}

/// Sends the zone to the stub through systemd-resolved when it runs; logs
/// what to do instead when it does not.
fn split_dns_set_up(ifname: &str, stub: SocketAddr, zone: &str) -> Option<resolved::SplitDns> {
    let probe = resolved::ResolvedProbe::default();
    match resolved::set_up(&probe, &resolved::SystemRunner, ifname, stub, zone) {
        Ok(resolved::SplitDnsOutcome::Configured(sd)) => {
            info!(
                ifname,
                zone, "systemd-resolved sends the zone to the DNS stub"
            );
            Some(sd)
        }
        Ok(resolved::SplitDnsOutcome::NotPresent(why)) => {
            info!("{}", why.advice(zone, stub));
            None
        }
        Err(e) => {
            warn!(error = %e, "systemd-resolved split DNS not set up");
            None
        }
    }
}

/// What control requests need.
#[derive(Clone)]
struct Ctx {
    me: Me,
    queries: mpsc::Sender<Query>,
    shared: Shared,
    /// What the kernel granted on the TUN (shown in `status`).
    tun_offloads: crate::tun::Offloads,
    /// Asks the GMS task for a fresh reflexive address (`netcheck`).
    observe: mpsc::Sender<oneshot::Sender<Option<SocketAddr>>>,
    /// The TUN's name: the host's addresses on other interfaces are the
    /// local candidates (read when asked: they change when the host moves).
    tun_name: String,
    /// The carrier's local port.
    carrier_port: u16,
    /// The port-mapping client's status (`None`: `port_mapping = false`).
    portmap: Option<Arc<std::sync::Mutex<crate::portmap::PortMapStatus>>>,
    /// The configuration in force and its reloads.
    config: Arc<std::sync::Mutex<ConfigStatus>>,
    /// The carrier (its per-peer counters, for `/metrics`).
    carrier: Arc<crate::carrier::PathCarrier>,
    /// The relay link (its counters, for `/metrics`).
    relay: Option<fpn_relay::RelayClient>,
}

impl Ctx {
    async fn answer(&self, req: Request) -> Response {
        match req {
            Request::Status => match self.status().await {
                Ok(s) => Response {
                    ok: true,
                    status: Some(s),
                    ..Response::default()
                },
                Err(e) => Response::error(e),
            },
            Request::Ping { name, count, ipv6 } => match self.ping(&name, count, ipv6).await {
                Ok(p) => Response {
                    ok: true,
                    ping: Some(p),
                    ..Response::default()
                },
                Err(e) => Response::error(e),
            },
            Request::Netcheck => Response {
                ok: true,
                netcheck: Some(self.netcheck().await),
                ..Response::default()
            },
            Request::Why { name, proto, port } => match self.why(&name, &proto, port).await {
                Ok(w) => Response {
                    ok: true,
                    why: Some(w),
                    ..Response::default()
                },
                Err(e) => Response::error(e),
            },
            Request::Down => Response::error("handled by the daemon loop"),
        }
    }

    async fn status(&self) -> Result<Status> {
        Ok(self.snapshot_status().await?.0)
    }

    /// The `/metrics` page: the `status` snapshot with the per-peer totals
    /// and DPRP stats that come with it, the carrier's and the relay link's
    /// counters (docs/NODE.md "Metrics").
    async fn metrics(&self) -> String {
        use crate::carrier::Carrier;
        let (status, traffic, dprp) = match self.snapshot_status().await {
            Ok(s) => s,
            // Stopping: an empty page, the scraper marks the target down.
            Err(_) => return String::new(),
        };
        crate::metrics::render(&crate::metrics::Scrape {
            status: &status,
            peer_traffic: &traffic,
            dprp: &dprp,
            carrier: &self.carrier.peers(),
            relay: self.relay.as_ref().map(fpn_relay::RelayClient::counters),
        })
    }

    /// `status` with the parts of the core's snapshot only `/metrics` shows.
    async fn snapshot_status(
        &self,
    ) -> Result<(
        Status,
        std::collections::BTreeMap<fpn_proto::ge::GeId, fpn_proto::pit::FlowStats>,
        dprp::Stats,
    )> {
        let (tx, rx) = oneshot::channel();
        self.queries
            .send(Query::Snapshot(tx))
            .await
            .map_err(|_| Error::Control("the engine stopped".into()))?;
        let snap = rx
            .await
            .map_err(|_| Error::Control("the engine stopped".into()))?;
        let view = self.shared.view().clone();
        let status = Status {
            name: self.me.name.clone(),
            ge: self.me.ge.0,
            overlay: self.me.overlay.to_string(),
            overlay6: self.me.overlay6.map(|a| a.to_string()),
            gms: GmsStatus {
                connected: view.connected,
                reflexive: view.reflexive.map(|a| a.to_string()),
                punches_asked: view.punches_asked,
                punches_received: view.punches_received,
            },
            credential: CredentialStatus {
                serial: view.credential_serial,
                not_after: view.credential_not_after,
                expires_in_secs: view.credential_not_after.map(|t| {
                    i64::try_from(t).unwrap_or(i64::MAX)
                        - i64::try_from(fpn_gms_client::now_unix()).unwrap_or(i64::MAX)
                }),
                last_renewal: view.last_renewal,
                renewals: view.renewals,
                renewal_refused: view.renewal_refused.clone(),
            },
            groups: view
                .groups
                .iter()
                .map(|(g, v)| GroupStatus {
                    group: g.0,
                    versions: v.iter().map(|v| v.0).collect(),
                })
                .collect(),
            peers: snap.peers,
            flows: snap.flows,
            counters: snap.counters,
            tun_offloads: self.tun_offloads.to_string(),
            config: self
                .config
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            port_mapping: self.port_mapping_status(),
            hosts: snap.hosts,
            moves: snap.moves,
        };
        Ok((status, snap.peer_traffic, snap.dprp))
    }

    /// The port-mapping client's status (`off` when configured off).
    fn port_mapping_status(&self) -> crate::portmap::PortMapStatus {
        self.portmap
            .as_ref()
            .map_or_else(crate::portmap::PortMapper::off_status, |s| {
                s.lock().unwrap_or_else(|p| p.into_inner()).clone()
            })
    }

    /// `netcheck`: the local candidates, the reflexive address at session
    /// start and now, and what they say. The GMS has one address and port,
    /// so whether the NAT maps the carrier's socket to the same public port
    /// for every destination (endpoint-independent mapping, which punching
    /// needs) cannot be observed from here; the report says so instead of
    /// guessing from the port alone.
    async fn netcheck(&self) -> Netcheck {
        let (tx, rx) = oneshot::channel();
        let now = match self.observe.send(tx).await {
            Ok(()) => rx.await.ok().flatten(),
            Err(_) => None,
        };
        let view = self.shared.view().clone();
        let reported = local_addresses(self.carrier_port, &self.tun_name);
        let start = view.reflexive;
        let seen = now.or(start);
        let behind_nat = seen.map(|r| !reported.iter().any(|l| l.ip() == r.ip()));
        let port_preserved = seen.map(|r| r.port() == self.carrier_port);
        let stable = match (start, now) {
            (Some(a), Some(b)) => Some(a == b),
            _ => None,
        };
        let mapping = match (behind_nat, port_preserved, stable) {
            (None, ..) => "unknown: no reflexive address (no GMS session)".to_owned(),
            (Some(false), ..) => "no NAT: the GMS sees a local address".to_owned(),
            (Some(true), Some(pp), st) => format!(
                "behind a NAT, port {}, mapping {} since session start; endpoint \
                 independence not tested (one GMS address): a port-preserving NAT \
                 is usually endpoint-independent, and punching needs that",
                if pp { "preserved" } else { "changed" },
                match st {
                    Some(true) => "unchanged",
                    Some(false) => "changed",
                    None => "not re-checked",
                }
            ),
            (Some(true), None, _) => "behind a NAT".to_owned(),
        };
        Netcheck {
            gms_connected: view.connected,
            carrier_port: self.carrier_port,
            local: reported.iter().map(ToString::to_string).collect(),
            reflexive: now.map(|a| a.to_string()),
            reflexive_at_session_start: start.map(|a| a.to_string()),
            behind_nat,
            port_preserved,
            stable,
            mapping,
            port_mapping: self.port_mapping_status(),
        }
    }

    /// Resolves `name` (short, FQDN, or an address) to an overlay address,
    /// from the core's peer table.
    async fn resolve(&self, name: &str) -> Result<(String, Ipv4Addr)> {
        if let Ok(ip) = name.parse::<Ipv4Addr>() {
            return Ok((name.to_owned(), ip));
        }
        let zone = self.me.zone.trim_end_matches('.');
        let short = name.trim_end_matches('.');
        let short = short
            .strip_suffix(zone)
            .and_then(|s| s.strip_suffix('.'))
            .unwrap_or(short);
        let fqdn = format!("{short}.{zone}");
        if short == self.me.name {
            return Ok((fqdn, self.me.overlay));
        }
        let (tx, rx) = oneshot::channel();
        self.queries
            .send(Query::Resolve(short.to_owned(), tx))
            .await
            .map_err(|_| Error::Control("the engine stopped".into()))?;
        rx.await
            .ok()
            .flatten()
            .map(|ip| (fqdn.clone(), ip))
            .ok_or_else(|| Error::Control(format!("{fqdn}: no such GE in the directory")))
    }

    /// `why`: the decision rule for a flow from this node to `name`. When
    /// the peer's directory entry is missing the engine asks the GMS for
    /// it; the answer is awaited briefly. Nothing is sent to the peer.
    async fn why(&self, name: &str, proto: &str, port: u16) -> Result<WhyReport> {
        use fpn_proto::flow::protocol;
        let protocol = match proto {
            "tcp" => protocol::TCP,
            "udp" => protocol::UDP,
            "icmp" => protocol::ICMP,
            other => {
                return Err(Error::Control(format!(
                    "protocol {other:?}: expected tcp, udp or icmp"
                )));
            }
        };
        let (target, dst) = self.resolve(name).await?;
        let flow = FlowId {
            src: IpAddr::V4(self.me.overlay),
            dst: IpAddr::V4(dst),
            protocol,
            src_port: 0,
            dst_port: if protocol == protocol::ICMP { 0 } else { port },
        };
        let deadline = tokio::time::Instant::now() + WHY_LOOKUP_WAIT;
        let mut ask = true;
        loop {
            let (tx, rx) = oneshot::channel();
            self.queries
                .send(Query::Explain { flow, ask, tx })
                .await
                .map_err(|_| Error::Control("the engine stopped".into()))?;
            let (mut report, lookup) = rx
                .await
                .map_err(|_| Error::Control("the engine stopped".into()))?;
            if !lookup || tokio::time::Instant::now() >= deadline {
                report.target = target;
                return Ok(report);
            }
            ask = false;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn ping(&self, name: &str, count: u32, ipv6: bool) -> Result<PingReport> {
        if count == 0 || count > MAX_PING_COUNT {
            return Err(Error::Control(format!(
                "count must be between 1 and {MAX_PING_COUNT}"
            )));
        }
        // An IPv6 overlay address stands for its GE's IPv4 one (note 59).
        let net6 = self.me.net6;
        let (name, ipv6) = match name.parse::<std::net::Ipv6Addr>() {
            Ok(v6) => match net6.v4_of(v6) {
                Some(v4) => (v4.to_string(), true),
                None => {
                    return Err(Error::Control(format!(
                        "{v6} is not an overlay address of this network ({net6})"
                    )));
                }
            },
            Err(_) => (name.to_owned(), ipv6),
        };
        let (fqdn, dst) = self.resolve(&name).await?;
        let mut idb = [0u8; 2];
        ring::rand::SystemRandom::new()
            .fill(&mut idb)
            .map_err(|_| Error::Config("no system randomness".into()))?;
        let id = u16::from_be_bytes(idb);
        let (src, to) = if ipv6 {
            let src = self.me.overlay6.ok_or_else(|| {
                Error::Control("this node has no IPv6 overlay address (no IPv6 on the host)".into())
            })?;
            (IpAddr::V6(src), IpAddr::V6(net6.address(dst)))
        } else {
            (IpAddr::V4(self.me.overlay), IpAddr::V4(dst))
        };
        let outcome = tokio::task::spawn_blocking(move || ping::ping(src, to, id, count))
            .await
            .map_err(|e| Error::Control(format!("ping task: {e}")))??;
        let flow = FlowId {
            src,
            dst: to,
            protocol: if ipv6 {
                fpn_proto::flow::protocol::ICMPV6
            } else {
                fpn_proto::flow::protocol::ICMP
            },
            src_port: id,
            dst_port: id,
        };
        let (tx, rx) = oneshot::channel();
        let _ = self.queries.send(Query::FlowInfo(flow, tx)).await;
        let info = rx.await.ok().flatten();
        let (action, carrier) = match (outcome.unreachable_code, info) {
            (Some(13), _) => ("refuse".to_owned(), String::new()),
            (Some(_), _) => ("unreachable".to_owned(), String::new()),
            (None, Some((a, c))) => (a, c),
            (None, None) if dst == self.me.overlay => ("local".to_owned(), String::new()),
            (None, None) => ("unreachable".to_owned(), String::new()),
        };
        let (tx, rx) = oneshot::channel();
        let _ = self.queries.send(Query::PeerPath(dst, tx)).await;
        let path = rx.await.ok().flatten().map(|(_, p)| p).unwrap_or_default();
        Ok(PingReport {
            name: fqdn,
            address: to.to_string(),
            action,
            carrier,
            path,
            rtt_ms: outcome
                .rtts
                .iter()
                .map(|d| (d.as_secs_f64() * 1e6).round() / 1e3)
                .collect(),
            sent: outcome.sent,
        })
    }
}

/// How long `why` waits for the GMS's directory answer about a peer.
const WHY_LOOKUP_WAIT: Duration = Duration::from_secs(3);

/// Where the daemon of a state directory listens.
pub fn control_path(state: &StateDir) -> PathBuf {
    state.control_socket()
}

/// Test-only: when set (to anything), DPRP runs without its flood defences
/// (budgets, capacities, cookies), so the flood lab test
/// (overlay-tests/tests/node_flood.rs) can show that it fails without them.
/// Never set it on a real node.
pub const UNSAFE_NO_FLOOD_LIMITS: &str = "FPN_NODE_UNSAFE_NO_FLOOD_LIMITS";

/// `limits` with every flood defence out of the way.
fn unlimited(limits: dprp::Limits) -> dprp::Limits {
    let huge = dprp::Rate::UNLIMITED;
    dprp::Limits {
        max_negotiations: 1 << 30,
        max_initiated: 1 << 30,
        max_responding: 1 << 30,
        dde_per_source: huge,
        dde_per_ge: huge,
        fast_open_per_ge: huge,
        fop_naks: huge,
        cookie_threshold: usize::MAX,
        ..limits
    }
}

/// The network watcher (issue 12): the host's address, route and link
/// changes reach the driver the moment the kernel applies them. Without it
/// (no rtnetlink here) a move is noticed only when the carrier's packets
/// stop arriving, which says so once.
fn start_move_watch(
    tun: &str,
    port: u16,
    reported: Vec<SocketAddr>,
    gms: mpsc::Sender<Vec<SocketAddr>>,
) -> Option<crate::driver::MoveWatch> {
    let ifindex = std::ffi::CString::new(tun)
        .ok()
        // SAFETY: if_nametoindex reads a NUL-terminated name we own.
        .map_or(0, |c| unsafe { libc::if_nametoindex(c.as_ptr()) });
    let (tx, changes) = tokio::sync::mpsc::unbounded_channel();
    match crate::netwatch::NetWatch::start(ifindex, move |c| {
        let _ = tx.send(c);
    }) {
        Ok(watch) => Some(crate::driver::MoveWatch {
            watch,
            changes,
            tun: tun.to_owned(),
            port,
            reported,
            gms,
        }),
        Err(e) => {
            warn!(error = %e, "network watcher unavailable: a move is noticed only when packets stop");
            None
        }
    }
}

/// The real-address plane's steering when the credential names prefixes
/// (`crate::real_plane`). On a GES the host's source toward peers is its
/// real address (the first IPv4 one its credential names); a gateway's
/// prefixes are the hosts behind it, never its own source. A failure
/// leaves the overlay working and says why: the real addresses are then
/// unprotected.
fn start_real_plane(
    tun: &str,
    prefixes: &[Prefix],
    kind: fpn_proto::ge::GeKind,
) -> Option<crate::real_plane::RealPlane> {
    if prefixes.is_empty() {
        return None;
    }
    let src = prefixes
        .iter()
        .filter(|_| !kind.is_gateway())
        .find_map(|p| match p.addr() {
            IpAddr::V4(a) if p.is_host() => Some(a),
            _ => None,
        });
    let steer = if kind.is_gateway() {
        crate::real_plane::Steer::From(prefixes.to_vec())
    } else {
        crate::real_plane::Steer::Local
    };
    match crate::real_plane::RealPlane::start(tun, src, &steer) {
        Ok(rp) => {
            info!(prefixes = prefixes.len(), "real-address plane on");
            Some(rp)
        }
        Err(e) => {
            warn!(error = %e, "real-address plane unavailable: the credential's real addresses are not steered through the node");
            None
        }
    }
}

/// Environment variable that turns fast open off (`0`, `off`, `false`,
/// `no`) or on (anything else) whatever the configuration says: for
/// comparisons (bench/overlay.sh) without editing configuration files.
pub const FAST_OPEN_ENV: &str = "FPN_NODE_FAST_OPEN";

/// Environment variable that keeps fast-opened flows' first packets out of
/// their FOPs, both ways (`0`, `off`, `false`, `no`: this node neither
/// offers nor takes them, like a node before design note 71): for
/// comparisons.
pub const FAST_FIRST_ENV: &str = "FPN_NODE_FAST_FIRST";

/// Whether a fast-opened flow's first packet rides inside its FOP.
fn want_fast_first() -> bool {
    std::env::var(FAST_FIRST_ENV)
        .map_or(true, |v| !matches!(v.trim(), "0" | "off" | "false" | "no"))
}

/// Whether to fast-open flows: the environment variable when set, else the
/// configuration key.
fn want_fast_open(config: bool) -> bool {
    match std::env::var(FAST_OPEN_ENV) {
        Ok(v) => !matches!(v.trim(), "0" | "off" | "false" | "no"),
        Err(_) => config,
    }
}

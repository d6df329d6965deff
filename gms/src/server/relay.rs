//! The relay inside `fpn-gms serve` (docs/GMS.md "Relay"): started with the
//! server, admitted by the GMS core, cut at once when a GE is revoked or
//! removed, and announced to nodes after `SessionInit`.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use fpn_relay::{Admission, NodeCert, Relay, RelayConfig};
use tokio::sync::Notify;
use tracing::{info, warn};
use zeroize::Zeroizing;

use super::{DirectoryHook, RelayParts, Shared};
use crate::core::DirectoryEvent;
use crate::{Result, now_unix};

/// Admits a relay client the way a GMS session is admitted: its
/// certificate (by fingerprint) must be the active one of an active GE.
struct GmsAdmission(Weak<Shared>);

impl Admission for GmsAdmission {
    fn admit(&self, cert: &NodeCert) -> bool {
        let Some(shared) = self.0.upgrade() else {
            return false;
        };
        let r = shared.lock().core.authorize(&cert.fingerprint, now_unix());
        r.is_ok_and(|ge| ge == cert.ge)
    }
}

/// The directory hook with a bell for the relay: a GE that is revoked or
/// removed rings it, and the relay re-checks its clients at once.
pub(super) struct RelayHook {
    pub(super) inner: Arc<dyn DirectoryHook>,
    pub(super) bell: Arc<Notify>,
}

impl DirectoryHook for RelayHook {
    fn on_change(&self, event: &DirectoryEvent) {
        if matches!(event, DirectoryEvent::Removed { .. }) {
            // Called under the GMS lock: only ring, the re-check runs in its task.
            self.bell.notify_one();
        }
        self.inner.on_change(event);
    }

    fn dns_addrs(&self) -> Vec<SocketAddr> {
        self.inner.dns_addrs()
    }

    fn dns_stats(&self) -> Option<fpn_ddns::DdnsStats> {
        self.inner.dns_stats()
    }

    fn zone_serial(&self) -> Option<u32> {
        self.inner.zone_serial()
    }
}

/// Starts the in-process relay if the configuration enables it and works
/// out what nodes are told. `quic` is the GMS's bound address, `server_key`
/// the GMS's key file (the relay's reset keys derive from it, so they
/// survive restarts).
pub(super) fn start(
    shared: &Arc<Shared>,
    quic: SocketAddr,
    server_key: &Zeroizing<Vec<u8>>,
    bell: Arc<Notify>,
) -> Result<RelayParts> {
    let (settings, gms_addr, ca_der, issued) = {
        let g = shared.lock();
        let cfg = g.core.config().relay.clone();
        let issued = if cfg.enabled {
            Some(g.core.ca().issue_relay_cert(now_unix())?)
        } else {
            None
        };
        (
            cfg,
            g.core.public_addr().ok(),
            g.core.ca().cert_der().to_vec(),
            issued,
        )
    };
    let relay = match issued {
        Some((cert_der, key_der)) => {
            let listen = settings.listen_addr(quic);
            let r = Relay::bind(
                RelayConfig {
                    listen,
                    rate: settings.rate(),
                    ca_der,
                    cert_der,
                    key_der,
                    reset_secret: server_key.clone(),
                },
                Arc::new(GmsAdmission(Arc::downgrade(shared))),
            )
            .map_err(|e| crate::Error::Config(format!("relay: {e}")))?;
            let r = Arc::new(r);
            tokio::spawn(recheck_loop(Arc::downgrade(&r), bell));
            Some(r)
        }
        None => None,
    };
    let port = relay
        .as_ref()
        .and_then(|r| r.local_addr().ok())
        .map(|a| a.port());
    let advertised = if settings.enabled || settings.public_addr.is_some() {
        settings.advertised(gms_addr.as_deref(), port)
    } else {
        None
    };
    match &advertised {
        Some(a) => info!(relay = %a, in_process = relay.is_some(), "relay announced to nodes"),
        None if settings.enabled => {
            warn!("relay runs but nodes cannot be told where: set [relay] public_addr")
        }
        None => info!("no relay"),
    }
    Ok(RelayParts { relay, advertised })
}

/// Re-checks the relay's clients whenever the hook rings.
async fn recheck_loop(relay: Weak<Relay>, bell: Arc<Notify>) {
    loop {
        bell.notified().await;
        let Some(r) = relay.upgrade() else { return };
        // Admission locks the GMS: off the async threads.
        let _ = tokio::task::spawn_blocking(move || r.recheck()).await;
    }
}

/// The relay's part of `fpn-gms status`.
pub(super) fn status(parts: &RelayParts) -> crate::admin::RelayStatus {
    crate::admin::RelayStatus {
        listen: parts.relay.as_ref().and_then(|r| r.local_addr().ok()),
        advertised: parts.advertised.clone(),
        nodes: parts
            .relay
            .as_ref()
            .map(|r| r.nodes().iter().map(|g| g.0).collect())
            .unwrap_or_default(),
        counters: parts.relay.as_ref().map(|r| r.counters()),
    }
}

//! The admin protocol: JSON lines over the unix socket in the data directory.
//!
//! The client writes one [`AdminRequest`] as a JSON object on one line; the
//! server answers with one [`AdminResponse`] line and closes. The socket is
//! 0600 in a 0700 directory: whoever can use it owns the network. Listing
//! views are plain structs so `--json` prints exactly what the server sent.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Longest request or response line accepted.
pub const MAX_LINE: usize = 16 * 1024 * 1024;

/// One admin command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum AdminRequest {
    /// Server status.
    Status,
    /// `group add NUM --name NAME`.
    GroupAdd {
        /// Group number.
        num: u32,
        /// Group name.
        name: String,
    },
    /// `group list`.
    GroupList,
    /// `group rename NUM --name NAME`.
    GroupRename {
        /// Group number.
        num: u32,
        /// New name.
        name: String,
    },
    /// `group remove NUM`.
    GroupRemove {
        /// Group number.
        num: u32,
    },
    /// `ge add NAME [--kind K] [--mode M] [--group N]... [--protect PREFIX]...`.
    GeAdd {
        /// GE name.
        name: String,
        /// `ges`, `gen` or `gea`; none: `gen` when a protected prefix is a
        /// subnet, else `ges`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kind: Option<String>,
        /// `op` or `cl`; none: `cl` for a gateway, `op` for a GES.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<String>,
        /// Group numbers.
        #[serde(default)]
        groups: Vec<u32>,
        /// Prefixes a gateway protects (`192.168.1.0/24`); its credential
        /// names them. Left out of the request when empty, so a newer CLI
        /// still talks to an older server.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        protect: Vec<String>,
    },
    /// `ge list`.
    GeList,
    /// `ge show NAME`.
    GeShow {
        /// GE name.
        name: String,
    },
    /// `ge set NAME ...`.
    GeSet {
        /// GE name.
        name: String,
        /// New kind.
        #[serde(default)]
        kind: Option<String>,
        /// New mode.
        #[serde(default)]
        mode: Option<String>,
        /// Replaces the group set.
        #[serde(default)]
        groups: Option<Vec<u32>>,
        /// Groups to join.
        #[serde(default)]
        add_groups: Vec<u32>,
        /// Groups to leave.
        #[serde(default)]
        remove_groups: Vec<u32>,
        /// Replaces the protected prefixes (empty: none); the credential is
        /// re-issued.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        protect: Option<Vec<String>>,
    },
    /// `ge remove NAME`.
    GeRemove {
        /// GE name.
        name: String,
    },
    /// `ge revoke NAME`.
    GeRevoke {
        /// GE name.
        name: String,
    },
    /// `host add NAME --via GW --lan ADDR... [--group N]...`: a host
    /// behind gateway GE `via` (see [`crate::model::HostRecord`]).
    HostAdd {
        /// Host name (a DNS label, unique among GEs and hosts).
        name: String,
        /// The gateway GE's name.
        via: String,
        /// Its LAN addresses.
        lan: Vec<String>,
        /// Its groups; the gateway's groups when empty.
        #[serde(default)]
        groups: Vec<u32>,
    },
    /// `host remove NAME`.
    HostRemove {
        /// Host name.
        name: String,
    },
    /// `host list`.
    HostList,
    /// `host show NAME`.
    HostShow {
        /// Host name.
        name: String,
    },
    /// `host set NAME [--lan ADDR]... [--group N]...`.
    HostSet {
        /// Host name.
        name: String,
        /// Replaces the LAN addresses.
        #[serde(default)]
        lan: Option<Vec<String>>,
        /// Replaces the groups.
        #[serde(default)]
        groups: Option<Vec<u32>>,
    },
    /// `token create NAME [--ttl D]`.
    TokenCreate {
        /// GE name.
        name: String,
        /// Lifetime in seconds; the config's default when absent.
        #[serde(default)]
        ttl_secs: Option<u64>,
    },
    /// `token list`: tokens not used yet.
    TokenList,
    /// `token cancel ID`: the token can no longer enroll.
    TokenCancel {
        /// Token id, hex (from `token list`).
        id: String,
    },
    /// `rotate [--group N]`.
    Rotate {
        /// One group, or all when absent.
        #[serde(default)]
        group: Option<u32>,
    },
    /// `keys`.
    Keys,
    /// `audit`.
    Audit {
        /// Entries after this sequence number.
        #[serde(default)]
        after: Option<u64>,
        /// At most this many.
        #[serde(default = "default_audit_limit")]
        limit: usize,
    },
}

fn default_audit_limit() -> usize {
    100
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdminResponse {
    /// True when the change was made (and synced to disk) or the listing is valid.
    pub ok: bool,
    /// One line saying what went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The result (a view below).
    #[serde(default)]
    pub data: serde_json::Value,
}

impl AdminResponse {
    /// A success carrying `data`.
    pub fn ok<T: Serialize>(data: &T) -> Self {
        Self {
            ok: true,
            error: None,
            data: serde_json::to_value(data).unwrap_or(serde_json::Value::Null),
        }
    }

    /// A failure.
    pub fn err(e: impl std::fmt::Display) -> Self {
        Self {
            ok: false,
            error: Some(e.to_string()),
            data: serde_json::Value::Null,
        }
    }

    /// The data as a view, or the error.
    pub fn into_result<T: for<'de> Deserialize<'de>>(self) -> Result<T> {
        if !self.ok {
            return Err(Error::Admin(
                self.error.unwrap_or_else(|| "request failed".into()),
            ));
        }
        serde_json::from_value(self.data)
            .map_err(|e| Error::Protocol(format!("unexpected admin answer: {e}")))
    }
}

/// `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    /// The zone.
    pub zone: String,
    /// The QUIC address bound.
    pub listen: Option<SocketAddr>,
    /// Where the in-process DNS answers (empty when it is off).
    #[serde(default)]
    pub dns: Vec<SocketAddr>,
    /// The address that goes into tokens.
    pub public_addr: Option<String>,
    /// SHA-256 of the CA certificate, hex.
    pub ca_fingerprint: String,
    /// The network's IPv6 overlay prefix (a ULA /48 derived from the CA
    /// key; every GE's IPv6 overlay address is in it).
    #[serde(default)]
    pub overlay6: String,
    /// Number of GEs.
    pub ges: usize,
    /// Number of groups.
    pub groups: usize,
    /// GEs with a live session.
    pub online: usize,
    /// The rotation schedule.
    pub rotation_schedule: String,
    /// Next scheduled rotation, unix seconds.
    pub next_rotation: Option<u64>,
    /// Grace period of previous key versions, seconds.
    pub grace_secs: u64,
    /// Store schema version.
    pub schema: u32,
    /// The relay (filled in by the server, not the core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<RelayStatus>,
    /// The DNS zone's SOA serial (filled in by the server; none without
    /// the in-process DNS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone_serial: Option<u32>,
    /// Frames pushed to sessions since the server started, one per
    /// receiving session (filled in by the server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushes: Option<u64>,
}

/// The relay in `fpn-gms status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayStatus {
    /// Where the in-process relay listens (`None`: not in-process).
    pub listen: Option<SocketAddr>,
    /// What nodes are told (`None`: no relay).
    pub advertised: Option<String>,
    /// GE ids connected to the in-process relay now.
    #[serde(default)]
    pub nodes: Vec<u32>,
    /// Its counters.
    pub counters: Option<fpn_relay::Counters>,
}

/// One host behind a gateway in `host list` and `host show`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostView {
    /// Name.
    pub name: String,
    /// Its full DNS name.
    pub fqdn: String,
    /// The gateway GE's name.
    pub via: String,
    /// The gateway GE's id.
    pub via_id: u32,
    /// LAN addresses (the LIP records).
    pub lan: Vec<std::net::IpAddr>,
    /// Groups whose members may reach it.
    pub groups: Vec<u32>,
    /// The gateway's public address as the DNS publishes it (A/AAAA),
    /// when the gateway was seen.
    pub public: Option<std::net::IpAddr>,
    /// Creation time, unix seconds.
    pub created_at: u64,
}

/// One group in `group list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupView {
    /// Number.
    pub num: u32,
    /// Name.
    pub name: String,
    /// Names of the active member GEs.
    pub members: Vec<String>,
    /// Current key version.
    pub key_version: u32,
}

/// One GE in `ge list` / `ge show`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeView {
    /// GE id.
    pub id: u32,
    /// Name.
    pub name: String,
    /// `ges`, `gen`, `gea`.
    pub kind: String,
    /// `op`, `cl`.
    pub mode: String,
    /// Group numbers.
    pub groups: Vec<u32>,
    /// Overlay address.
    pub overlay: Ipv4Addr,
    /// IPv6 overlay address (the network's ULA /48 with `overlay` as its
    /// last 32 bits).
    #[serde(default = "unspecified6")]
    pub overlay6: std::net::Ipv6Addr,
    /// Prefixes a gateway protects (named in its credential).
    #[serde(default)]
    pub protect: Vec<String>,
    /// Names of the hosts behind this GE (a gateway), by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// `<name>.<zone>`.
    pub fqdn: String,
    /// `added`, `enrolled` or `revoked`.
    pub state: String,
    /// True while it has a session.
    pub online: bool,
    /// Address its session comes from.
    pub seen: Option<SocketAddr>,
    /// Addresses it reports.
    pub reported: Vec<SocketAddr>,
    /// The node's software version, from its last session's hello (`None`:
    /// never connected since the GMS started, or a node too old to say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// How many GEs its node follows now (hears the changes of: the peers
    /// it talks to, with the directory on demand). Shown by `ge show`
    /// only (counting scans every follower set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follows: Option<usize>,
    /// Certificate serial, once enrolled.
    pub cert_serial: Option<u64>,
    /// Certificate fingerprint (SHA-256, hex), once enrolled.
    pub cert_fingerprint: Option<String>,
    /// Certificate end of validity, unix seconds.
    pub cert_not_after: Option<u64>,
    /// Credential serial, once enrolled.
    pub credential_serial: Option<u64>,
    /// When the node last renewed its certificate and credential over its
    /// session, unix seconds (`None`: not since enrollment).
    #[serde(default)]
    pub renewed_at: Option<u64>,
}

/// `token create`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenView {
    /// The token text (shown once; the GMS keeps only a hash of its secret).
    pub token: String,
    /// The GE it enrolls.
    pub ge: String,
    /// Expiry, unix seconds.
    pub expires_at: u64,
}

/// One unused token in `token list` (never its secret).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenInfoView {
    /// Token id, hex (the part of the token that is not secret).
    pub id: String,
    /// The GE it enrolls.
    pub ge: String,
    /// Created, unix seconds.
    pub created_at: u64,
    /// Expiry, unix seconds.
    pub expires_at: u64,
    /// True once past its expiry (it can no longer enroll).
    pub expired: bool,
}

/// One key version in `keys` (never the key bytes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyVersionView {
    /// Version.
    pub version: u32,
    /// `current` or `previous`.
    pub state: String,
    /// Seconds since it was created.
    pub age_secs: u64,
    /// Seconds until it is erased (previous versions only).
    pub expires_in_secs: Option<u64>,
}

/// One group in `keys`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeysView {
    /// Group number.
    pub group: u32,
    /// Group name.
    pub name: String,
    /// Valid versions, newest first.
    pub versions: Vec<KeyVersionView>,
}

/// `rotate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RotatedView {
    /// Group number.
    pub group: u32,
    /// Its new current version.
    pub version: u32,
}

/// A change that returns nothing but what was changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DoneView {
    /// What was done, for the operator.
    pub done: String,
    /// Groups rotated as a consequence.
    #[serde(default)]
    pub rotated: Vec<RotatedView>,
}

/// One audit log line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditView {
    /// Sequence number.
    pub seq: u64,
    /// Time, unix seconds.
    pub at: u64,
    /// The action.
    pub action: String,
    /// Who: `cli uid=N`, `web:NAME`, `gms` (the server itself); empty for
    /// entries older than this field.
    #[serde(default)]
    pub who: String,
}

/// Why nothing answers on `socket`, as the operator can fix it: the data
/// directory was never initialised (or `--data` is wrong), this user may
/// not open the socket, or the server is not running.
fn not_running(socket: &Path, source: std::io::Error) -> Error {
    let data = socket.parent().unwrap_or(Path::new(".")).to_owned();
    if source.kind() == std::io::ErrorKind::PermissionDenied {
        return Error::AdminDenied {
            path: socket.to_owned(),
        };
    }
    match crate::config::DataDir::new(&data).check_initialized() {
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::PermissionDenied => {
            Error::AdminDenied {
                path: socket.to_owned(),
            }
        }
        Err(e) => e,
        Ok(()) => Error::NotRunning {
            path: socket.to_owned(),
            data,
            source,
        },
    }
}

/// Sends one request to the server behind `socket` and waits for its answer.
pub fn request(socket: &Path, req: &AdminRequest, timeout: Duration) -> Result<AdminResponse> {
    let stream = UnixStream::connect(socket).map_err(|source| not_running(socket, source))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_vec(req).map_err(|e| Error::Protocol(e.to_string()))?;
    line.push(b'\n');
    (&stream).write_all(&line)?;
    let mut reader = BufReader::new(&stream).take(MAX_LINE as u64);
    let mut answer = String::new();
    reader.read_line(&mut answer).map_err(|e| {
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            Error::Timeout("the GMS did not answer the admin request")
        } else {
            Error::Net(e)
        }
    })?;
    if answer.is_empty() {
        return Err(Error::Protocol(
            "the GMS closed the admin connection without answering".into(),
        ));
    }
    serde_json::from_str(&answer).map_err(|e| Error::Protocol(format!("bad admin answer: {e}")))
}

fn unspecified6() -> std::net::Ipv6Addr {
    std::net::Ipv6Addr::UNSPECIFIED
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_json() {
        let r = AdminRequest::GeAdd {
            name: "nas".into(),
            kind: Some("gea".into()),
            mode: Some("cl".into()),
            groups: vec![2, 3],
            protect: Vec::new(),
        };
        let j = serde_json::to_string(&r).unwrap();
        assert_eq!(
            j,
            r#"{"cmd":"ge_add","name":"nas","kind":"gea","mode":"cl","groups":[2,3]}"#
        );
        assert_eq!(serde_json::from_str::<AdminRequest>(&j).unwrap(), r);
        // Without --protect the request is what an older server expects;
        // with it, the prefixes travel as strings.
        let g = AdminRequest::GeAdd {
            name: "gw".into(),
            kind: Some("gen".into()),
            mode: Some("cl".into()),
            groups: vec![],
            protect: vec!["192.168.1.0/24".into()],
        };
        let j = serde_json::to_string(&g).unwrap();
        assert!(j.ends_with(r#""protect":["192.168.1.0/24"]}"#), "{j}");
        assert_eq!(serde_json::from_str::<AdminRequest>(&j).unwrap(), g);
        assert!(serde_json::from_str::<AdminRequest>(r#"{"cmd":"nope"}"#).is_err());
        assert!(
            serde_json::from_str::<AdminRequest>(r#"{"cmd":"group_remove","num":1,"x":1}"#)
                .is_err()
        );
    }
}

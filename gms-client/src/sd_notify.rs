//! systemd's readiness protocol (`Type=notify`), written out by hand: one
//! datagram of `KEY=VALUE` lines to the unix socket named in
//! `$NOTIFY_SOCKET` (sd_notify(3)). Both daemons use it: `READY=1` once
//! they serve, `RELOADING=1`/`READY=1` around a SIGHUP reload, and
//! `STOPPING=1` when they begin to shut down.
//!
//! Nothing is sent, and nothing fails, when `NOTIFY_SOCKET` is unset (the
//! daemon was not started by systemd). A socket that is set but cannot be
//! reached is reported to the caller, which logs it: readiness is a
//! courtesy to the service manager, never a reason to stop serving.
//!
//! A crate (sd-notify, libsystemd) would do the same; the protocol is one
//! `sendto`, so the workspace keeps no dependency for it.

use std::ffi::OsString;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The environment variable systemd sets for `Type=notify` services.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// The service serves (after start-up, or after a reload).
pub const READY: &str = "READY=1";
/// The service is shutting down.
pub const STOPPING: &str = "STOPPING=1";

/// Sends `state` (e.g. [`READY`]) to `$NOTIFY_SOCKET`. `Ok(false)` when the
/// variable is unset or empty: nothing was sent.
pub fn notify(state: &str) -> std::io::Result<bool> {
    match std::env::var_os(NOTIFY_SOCKET) {
        Some(path) if !path.is_empty() => notify_to(&path, state).map(|()| true),
        _ => Ok(false),
    }
}

/// `RELOADING=1` with the monotonic time systemd wants since v253
/// (`MONOTONIC_USEC`, so it can tell this reload from an earlier one).
pub fn reloading_message() -> String {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into memory we own.
    let usec = if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } == 0 {
        (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
    } else {
        0
    };
    format!("RELOADING=1\nMONOTONIC_USEC={usec}")
}

/// Sends `state` to the socket `path`: a file system path, or `@name` for
/// an abstract socket (which systemd uses in containers).
pub fn notify_to(path: &OsString, state: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(std::path::Path::new(path))?,
    };
    let sock = UnixDatagram::unbound()?;
    let sent = sock.send_to_addr(state.as_bytes(), &addr)?;
    if sent != state.len() {
        return Err(std::io::Error::other("short notify datagram"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_arrives_as_one_datagram_on_a_path_and_an_abstract_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        notify_to(&path.clone().into_os_string(), READY).unwrap();
        let mut buf = [0u8; 256];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("fpn-notify-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        let msg = reloading_message();
        notify_to(&OsString::from(format!("@{name}")), &msg).unwrap();
        let n = rx.recv(&mut buf).unwrap();
        let got = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(got.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{got}");
    }

    #[test]
    fn an_unreachable_socket_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nobody.sock");
        assert!(notify_to(&path.into_os_string(), STOPPING).is_err());
    }
}

//! Per-host resolv.conf: `/etc/netns/NS/resolv.conf`.
//!
//! `ip netns exec NS` (how every lab command starts) bind-mounts the files of
//! `/etc/netns/NS/` over their `/etc/` counterparts in a private mount
//! namespace, so a host's programs resolve names with the host's own
//! resolv.conf (e.g. pointing at a node's DNS stub) without touching the
//! machine's.
//!
//! The file is replaced by a rename, never rewritten in place: a process
//! that is already running keeps the file it started with (its bind mount
//! holds the old inode). That is what a daemon reading resolv.conf at start
//! wants: fpn-node keeps forwarding to the resolver it found, while commands
//! started later use the stub the lab pointed the host at.

use std::io::Write;
use std::path::PathBuf;

use crate::Error;

/// Longest resolv.conf the lab writes (glibc reads far less than this).
const MAX_LEN: usize = 4096;

/// Why `text` cannot be a resolv.conf, or Ok.
pub(crate) fn check(text: &str) -> Result<(), String> {
    if text.len() > MAX_LEN {
        return Err(format!("is {} bytes, at most {MAX_LEN}", text.len()));
    }
    if text.contains('\0') {
        return Err("contains a NUL byte".into());
    }
    Ok(())
}

/// `/etc/netns/NS`.
pub(crate) fn dir(netns: &str) -> PathBuf {
    PathBuf::from("/etc/netns").join(netns)
}

/// `/etc/netns/NS/resolv.conf`.
pub(crate) fn path(netns: &str) -> PathBuf {
    dir(netns).join("resolv.conf")
}

/// Writes the namespace's resolv.conf (atomically, by rename).
pub(crate) fn write(netns: &str, text: &str) -> Result<(), Error> {
    check(text).map_err(|why| {
        Error::io(
            format!("writing resolv.conf of {netns}"),
            std::io::Error::new(std::io::ErrorKind::InvalidInput, why),
        )
    })?;
    let dir = dir(netns);
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let tmp = dir.join(".resolv.conf.tmp");
    let mut text = text.to_string();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path(netns))
    };
    write().map_err(|e| Error::io(format!("writing {}", path(netns).display()), e))
}

/// Removes what [`write`] made; missing files are fine.
pub(crate) fn remove(netns: &str) {
    let dir = dir(netns);
    let _ = std::fs::remove_file(dir.join(".resolv.conf.tmp"));
    let _ = std::fs::remove_file(path(netns));
    // Only if empty: someone else's files there are not ours to delete.
    let _ = std::fs::remove_dir(&dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_text_is_checked() {
        assert!(check("nameserver 100.64.0.2\nsearch home.fpn\n").is_ok());
        assert!(check("").is_ok());
        assert!(check("nameserver 1.2.3.4\0").unwrap_err().contains("NUL"));
        assert!(
            check(&"x".repeat(MAX_LEN + 1))
                .unwrap_err()
                .contains("at most")
        );
        assert_eq!(
            path("fpnlab-x-a"),
            PathBuf::from("/etc/netns/fpnlab-x-a/resolv.conf")
        );
    }
}

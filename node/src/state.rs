//! The node's state directory: identity (from `fpn-node enroll`), key cache,
//! peer cache, lock file and control socket.
//!
//! | file | mode | written by |
//! | --- | --- | --- |
//! | `node.key` | 0600 | enroll (the node's private key) |
//! | `node.crt`, `credential` | 0600 | enroll, then each renewal over the GMS session (atomic replace) |
//! | `ca.crt`, `identity.json` | 0644 | enroll |
//! | `keys` | 0600 | the GMS session (group key cache) |
//! | `peers.json` | 0600 | the daemon (directory cache, for GMS outages) |
//! | `lock` | 0600 | the daemon (flock: one daemon per directory) |
//! | `control.sock` | 0600 | the daemon (status, ping, down) |

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use fpn_gms_client::Identity;

use crate::error::{Error, Result};

/// Paths inside a state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// The state directory at `root` (not created).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The group key cache.
    pub fn key_cache(&self) -> PathBuf {
        self.root.join("keys")
    }

    /// The peer directory cache.
    pub fn peer_cache(&self) -> PathBuf {
        self.root.join("peers.json")
    }

    /// The control socket.
    pub fn control_socket(&self) -> PathBuf {
        self.root.join("control.sock")
    }

    /// The identity's metadata, written last by `enroll`: its presence
    /// says the directory is enrolled.
    pub fn identity_file(&self) -> PathBuf {
        self.root.join("identity.json")
    }

    /// Fails with [`Error::NotEnrolled`] unless `enroll` wrote an identity
    /// here (a cheap check before anything else is touched, so a wrong or
    /// missing `--state` is named as such rather than as a lock file error).
    pub fn check_enrolled(&self) -> Result<()> {
        match std::fs::metadata(self.identity_file()) {
            Ok(_) => Ok(()),
            Err(e) => Err(Error::NotEnrolled {
                path: self.root.clone(),
                reason: if self.root.is_dir() {
                    e.to_string()
                } else {
                    "no such directory".into()
                },
            }),
        }
    }

    /// The lock file.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("lock")
    }

    /// Saves a fresh identity (directory 0700, key 0600).
    pub fn save_identity(&self, id: &Identity) -> Result<()> {
        Ok(id.save(&self.root)?)
    }

    /// Loads the identity written by `enroll`.
    pub fn load_identity(&self) -> Result<Identity> {
        Identity::load(&self.root).map_err(|e| Error::NotEnrolled {
            path: self.root.clone(),
            reason: e.to_string(),
        })
    }

    /// Takes the daemon lock; fails with [`Error::AlreadyRunning`] while
    /// another process holds it. The lock lasts as long as the returned file.
    pub fn lock(&self) -> Result<File> {
        let path = self.lock_file();
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| Error::Io {
                what: format!("opening {}", path.display()),
                source,
            })?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(Error::AlreadyRunning(self.root.clone()));
            }
            return Err(Error::Io {
                what: format!("locking {}", path.display()),
                source: e,
            });
        }
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused_until_the_first_is_gone() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::new(d.path());
        let first = s.lock().unwrap();
        // flock locks belong to the open file description: a second open conflicts.
        assert!(matches!(s.lock(), Err(Error::AlreadyRunning(_))));
        drop(first);
        s.lock().unwrap();
    }

    #[test]
    fn an_empty_directory_is_not_enrolled() {
        let d = tempfile::tempdir().unwrap();
        let e = StateDir::new(d.path()).load_identity().unwrap_err();
        assert!(e.to_string().contains("fpn-node enroll"), "{e}");
        let e = StateDir::new(d.path()).check_enrolled().unwrap_err();
        assert!(e.to_string().contains("fpn-node enroll"), "{e}");
        let e = StateDir::new(d.path().join("nope"))
            .check_enrolled()
            .unwrap_err();
        assert!(e.to_string().contains("no such directory"), "{e}");
    }
}

//! The store-encryption key file (`store.key` in the data directory).
//!
//! 32 random bytes, mode 0600, created once and never overwritten: a store
//! whose secret values are sealed under it cannot be read with any other
//! key, so replacing it would lose every group key. Creation is atomic
//! (a temporary file written and fsynced, then hard-linked to the final
//! name, which fails instead of replacing an existing file, then the
//! directory fsynced), so a crash leaves either no key file or a whole one.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::{Error, Result};

/// Length of the store key in bytes.
pub const STORE_KEY_LEN: usize = 32;

/// Reads the key file at `path`; `Ok(None)` when there is none.
///
/// Refuses a file that others than its owner may read or write
/// ([`Error::StoreKeyMode`]), and one that cannot be read or is not exactly
/// [`STORE_KEY_LEN`] bytes ([`Error::StoreKeyUnreadable`]).
pub fn load(path: &Path) -> Result<Option<Zeroizing<[u8; STORE_KEY_LEN]>>> {
    let unreadable = |reason: String| Error::StoreKeyUnreadable {
        path: path.to_path_buf(),
        reason,
    };
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(unreadable(e.to_string())),
    };
    if !meta.is_file() {
        return Err(unreadable("not a regular file".into()));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::StoreKeyMode {
            path: path.to_path_buf(),
            mode,
        });
    }
    let f = File::open(path).map_err(|e| unreadable(e.to_string()))?;
    // One byte more than a key, so a longer file is seen as such without
    // reading all of it.
    let mut buf = Zeroizing::new(Vec::with_capacity(STORE_KEY_LEN + 1));
    f.take(STORE_KEY_LEN as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| unreadable(e.to_string()))?;
    let key: [u8; STORE_KEY_LEN] = buf.as_slice().try_into().map_err(|_| {
        unreadable(format!(
            "{} bytes{}, expected {STORE_KEY_LEN}",
            buf.len(),
            if buf.len() > STORE_KEY_LEN {
                " or more"
            } else {
                ""
            }
        ))
    })?;
    Ok(Some(Zeroizing::new(key)))
}

/// Creates the key file at `path` with fresh random bytes and returns the
/// key. When a key file appeared meanwhile, it is kept and returned
/// instead: an existing key is never replaced.
pub fn create(path: &Path) -> Result<Zeroizing<[u8; STORE_KEY_LEN]>> {
    let key = Zeroizing::new(crate::random::<STORE_KEY_LEN>()?);
    let tmp = tmp_path(path);
    // A temporary file left by a crash during an earlier creation holds a
    // key that was never used: it may go.
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(Error::io("creating", &tmp))?;
    f.write_all(key.as_ref())
        .and_then(|()| f.sync_all())
        .map_err(Error::io("writing", &tmp))?;
    drop(f);
    // link(2) never replaces an existing name, unlike rename(2).
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return load(path)?.ok_or_else(|| Error::StoreKeyUnreadable {
                path: path.to_path_buf(),
                reason: "it vanished while being created".into(),
            });
        }
        Err(e) => return Err(Error::io("creating", path)(e)),
    }
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(Error::io("syncing", dir))?;
    }
    Ok(key)
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_private_and_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("store.key");
        assert!(load(&p).unwrap().is_none());
        let k = create(&p).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(*load(&p).unwrap().unwrap(), *k);
        // A second creation keeps the first key.
        let again = create(&p).unwrap();
        assert_eq!(*again, *k);
        assert!(!tmp_path(&p).exists(), "temporary file left behind");
    }

    #[test]
    fn open_modes_short_files_and_directories_are_typed_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("store.key");
        create(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            load(&p),
            Err(Error::StoreKeyMode { mode: 0o640, .. })
        ));
        fs::remove_file(&p).unwrap();
        for len in [31, 33, 4096] {
            fs::write(&p, vec![1u8; len]).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
            assert!(
                matches!(load(&p), Err(Error::StoreKeyUnreadable { .. })),
                "{len} bytes"
            );
        }
        fs::remove_file(&p).unwrap();
        fs::create_dir(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).unwrap();
        assert!(matches!(load(&p), Err(Error::StoreKeyUnreadable { .. })));
    }
}

//! Small file helpers: secret files are created 0600 and replaced atomically.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::{Error, Result};

/// Writes `bytes` to `path` with `mode`, replacing it atomically (temp file,
/// fsync, rename, fsync of the directory), so a crash leaves the old or the
/// new content, never a mix, and a returned write survives a power loss.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(Error::io("creating", &tmp))?;
    f.write_all(bytes).map_err(Error::io("writing", &tmp))?;
    f.sync_all().map_err(Error::io("syncing", &tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(Error::io("renaming into", path))?;
    // The rename is durable only once the directory entry is.
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io("syncing", dir))?;
    Ok(())
}

/// Creates `path` with `mode`; fails when it exists (never overwrites a key).
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(Error::io("creating", path))?;
    f.write_all(bytes).map_err(Error::io("writing", path))?;
    f.sync_all().map_err(Error::io("syncing", path))?;
    Ok(())
}

/// Reads a file, naming it in the error.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(Error::io("reading", path))
}

/// Creates a directory (and parents) readable by its owner only.
pub fn create_private_dir(path: &Path) -> Result<()> {
    fs::create_dir_all(path).map_err(Error::io("creating", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
        .map_err(Error::io("setting permissions of", path))
}

/// The permission bits of `path`.
pub fn mode_of(path: &Path) -> Result<u32> {
    Ok(fs::metadata(path)
        .map_err(Error::io("reading metadata of", path))?
        .permissions()
        .mode()
        & 0o777)
}

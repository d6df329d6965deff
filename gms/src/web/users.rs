//! The web admin's users: `DATA/web-users`, one `NAME:PHC` line each, the
//! password hashed with Argon2id (a PHC string: algorithm, parameters, salt,
//! hash). The file is 0600 and replaced atomically, like the other secrets
//! of the data directory. `fpn-gms admin-user set` writes it; the server
//! reads it at each login, so a new or changed user needs no restart.

use std::collections::BTreeMap;
use std::path::Path;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

use crate::config::DataDir;
use crate::{Error, Result, fsutil};

/// Longest user name.
const MAX_NAME: usize = 64;
/// Shortest password `admin-user set` accepts.
pub const MIN_PASSWORD: usize = 12;
/// Longest password (argon2 takes any length; this bounds the work per login).
const MAX_PASSWORD: usize = 1024;

/// Checks a user name: letters, digits, `-`, `_`, `.`, at most 64.
pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(Error::WebUser(format!(
            "a user name has 1 to {MAX_NAME} characters"
        )));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(Error::WebUser(format!(
            "user name {name:?}: only letters, digits, '-', '_' and '.'"
        )));
    }
    Ok(())
}

/// The users and their password hashes (PHC strings).
fn load(path: &Path) -> Result<BTreeMap<String, String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(source) => {
            return Err(Error::Io {
                what: "reading",
                path: path.to_owned(),
                source,
            });
        }
    };
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (name, phc) = line.split_once(':').ok_or_else(|| {
            Error::WebUser(format!(
                "{}: line {} is not NAME:HASH",
                path.display(),
                i + 1
            ))
        })?;
        out.insert(name.to_owned(), phc.to_owned());
    }
    Ok(out)
}

fn save(path: &Path, users: &BTreeMap<String, String>) -> Result<()> {
    let mut text = String::new();
    for (n, h) in users {
        text.push_str(n);
        text.push(':');
        text.push_str(h);
        text.push('\n');
    }
    fsutil::write_atomic(path, text.as_bytes(), 0o600)?;
    Ok(())
}

/// Creates user `name` or sets its password (hashed with Argon2id).
pub fn set(data: &DataDir, name: &str, password: &str) -> Result<()> {
    check_name(name)?;
    if password.chars().count() < MIN_PASSWORD {
        return Err(Error::WebUser(format!(
            "the password must have at least {MIN_PASSWORD} characters"
        )));
    }
    if password.len() > MAX_PASSWORD {
        return Err(Error::WebUser(format!(
            "the password must have at most {MAX_PASSWORD} bytes"
        )));
    }
    let path = data.web_users();
    let mut users = load(&path)?;
    users.insert(name.to_owned(), hash(password)?);
    save(&path, &users)
}

/// Removes user `name`; false when there was none.
pub fn remove(data: &DataDir, name: &str) -> Result<bool> {
    let path = data.web_users();
    let mut users = load(&path)?;
    if users.remove(name).is_none() {
        return Ok(false);
    }
    save(&path, &users)?;
    Ok(true)
}

/// True while user `name` exists (a removed user's sessions end at their
/// next request).
pub fn exists(data: &DataDir, name: &str) -> Result<bool> {
    Ok(load(&data.web_users())?.contains_key(name))
}

/// The user names.
pub fn list(data: &DataDir) -> Result<Vec<String>> {
    Ok(load(&data.web_users())?.into_keys().collect())
}

/// True when `name` exists and `password` is its password. Costs one
/// Argon2 verification whether or not the user exists, so the answer's
/// timing does not tell which names exist.
pub fn verify(data: &DataDir, name: &str, password: &str) -> Result<bool> {
    let users = load(&data.web_users())?;
    if password.len() > MAX_PASSWORD {
        return Ok(false);
    }
    let (phc, known) = match users.get(name) {
        Some(h) => (h.clone(), true),
        None => (dummy_hash()?, false),
    };
    let parsed = PasswordHash::new(&phc)
        .map_err(|e| Error::WebUser(format!("stored hash of {name:?}: {e}")))?;
    let ok = Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok();
    Ok(ok && known)
}

fn hash(password: &str) -> Result<String> {
    let salt = SaltString::encode_b64(&crate::random::<16>()?)
        .map_err(|e| Error::WebUser(format!("salt: {e}")))?;
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| Error::WebUser(format!("hashing: {e}")))?
        .to_string())
}

/// A hash to verify against for unknown users (same parameters as real ones).
fn dummy_hash() -> Result<String> {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(h) = DUMMY.get() {
        return Ok(h.clone());
    }
    let h = hash("not a password of anyone")?;
    Ok(DUMMY.get_or_init(|| h).clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn set_verify_remove() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path());
        assert!(set(&data, "alice", "short").is_err());
        assert!(set(&data, "a:b", "long enough password").is_err());
        set(&data, "alice", "long enough password").unwrap();
        let text = std::fs::read_to_string(data.web_users()).unwrap();
        assert!(text.starts_with("alice:$argon2id$"), "{text}");
        assert!(!text.contains("long enough password"));
        let mode = std::fs::metadata(data.web_users())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(verify(&data, "alice", "long enough password").unwrap());
        assert!(!verify(&data, "alice", "long enough passwore").unwrap());
        assert!(!verify(&data, "bob", "long enough password").unwrap());
        assert_eq!(list(&data).unwrap(), vec!["alice".to_owned()]);
        assert!(remove(&data, "alice").unwrap());
        assert!(!verify(&data, "alice", "long enough password").unwrap());
    }
}

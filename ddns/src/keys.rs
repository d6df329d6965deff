//! TSIG keys: algorithms, per-key permissions, the key ring, and the BIND
//! key-file format that `tsig-keygen` writes and `nsupdate -k` reads.
//!
//! A key's secret never appears in `Debug` output or logs.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use base64::Engine as _;
use hickory_proto::rr::Name;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::Error;
use crate::tsig::name_wire;

/// Default permitted clock difference for signatures we make, seconds.
pub const DEFAULT_FUDGE: u16 = 300;

/// A TSIG MAC algorithm this server accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// HMAC-SHA256 (the default, and what RFC 8945 requires).
    HmacSha256,
    /// HMAC-SHA384.
    HmacSha384,
    /// HMAC-SHA512.
    HmacSha512,
}

impl Algorithm {
    /// The algorithm name as it appears in key files (`hmac-sha256`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HmacSha256 => "hmac-sha256",
            Self::HmacSha384 => "hmac-sha384",
            Self::HmacSha512 => "hmac-sha512",
        }
    }

    /// The algorithm name as a domain name, as in the TSIG record.
    pub fn name(self) -> Name {
        // Constant, valid ASCII names: parsing cannot fail.
        Name::from_ascii(format!("{}.", self.as_str())).unwrap_or_else(|_| Name::root())
    }

    /// The algorithm a TSIG record names, if we support it.
    pub fn from_name(name: &Name) -> Option<Self> {
        let s = name.to_ascii().to_ascii_lowercase();
        Self::from_str(s.trim_end_matches('.')).ok()
    }

    /// Length of the full MAC, bytes.
    pub fn output_len(self) -> usize {
        match self {
            Self::HmacSha256 => 32,
            Self::HmacSha384 => 48,
            Self::HmacSha512 => 64,
        }
    }

    fn ring(self) -> hmac::Algorithm {
        match self {
            Self::HmacSha256 => hmac::HMAC_SHA256,
            Self::HmacSha384 => hmac::HMAC_SHA384,
            Self::HmacSha512 => hmac::HMAC_SHA512,
        }
    }
}

impl FromStr for Algorithm {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "hmac-sha256" => Ok(Self::HmacSha256),
            "hmac-sha384" => Ok(Self::HmacSha384),
            "hmac-sha512" => Ok(Self::HmacSha512),
            other => Err(Error::Config(format!(
                "unsupported TSIG algorithm {other:?} (use hmac-sha256, hmac-sha384 or hmac-sha512)"
            ))),
        }
    }
}

/// What a key may do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyPolicy {
    /// Subtrees the key may update (a name and everything below it). Empty:
    /// no updates.
    pub update: Vec<Name>,
    /// Whether the key may transfer the zone (AXFR/IXFR).
    pub transfer: bool,
}

impl KeyPolicy {
    /// Full rights over the zone `origin`: update anything, transfer.
    pub fn admin(origin: &Name) -> Self {
        Self {
            update: vec![origin.clone()],
            transfer: true,
        }
    }

    /// Whether the key may change records of `name`.
    pub fn may_update(&self, name: &Name) -> bool {
        self.update.iter().any(|subtree| subtree.zone_of(name))
    }
}

/// A TSIG key with its permissions.
#[derive(Clone)]
pub struct TsigKey {
    name: Name,
    name_wire: Vec<u8>,
    algorithm: Algorithm,
    hmac: hmac::Key,
    fudge: u16,
    policy: KeyPolicy,
}

impl std::fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TsigKey")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .field("policy", &self.policy)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl TsigKey {
    /// A key from its name, algorithm and raw secret bytes.
    pub fn new(name: Name, algorithm: Algorithm, secret: Vec<u8>, policy: KeyPolicy) -> Self {
        let secret = Zeroizing::new(secret);
        let mut name = name.to_lowercase();
        name.set_fqdn(true);
        Self {
            name_wire: name_wire(&name),
            name,
            algorithm,
            hmac: hmac::Key::new(algorithm.ring(), &secret),
            fudge: DEFAULT_FUDGE,
            policy,
        }
    }

    /// The key name (lower case, fully qualified).
    pub fn name(&self) -> &Name {
        &self.name
    }

    /// The key name in canonical wire form.
    pub(crate) fn name_wire(&self) -> &[u8] {
        &self.name_wire
    }

    /// The MAC algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The HMAC key.
    pub(crate) fn hmac(&self) -> &hmac::Key {
        &self.hmac
    }

    /// The fudge we put into signatures we make.
    pub fn fudge(&self) -> u16 {
        self.fudge
    }

    /// What the key may do.
    pub fn policy(&self) -> &KeyPolicy {
        &self.policy
    }

    /// Replaces the key's permissions.
    pub fn set_policy(&mut self, policy: KeyPolicy) {
        self.policy = policy;
    }
}

/// The keys the server knows, by name.
#[derive(Clone, Debug, Default)]
pub struct KeyRing {
    keys: HashMap<Vec<u8>, Arc<TsigKey>>,
}

impl KeyRing {
    /// Adds a key, replacing one of the same name.
    pub fn insert(&mut self, key: TsigKey) {
        self.keys.insert(key.name_wire.clone(), Arc::new(key));
    }

    /// The key called `name` (case-insensitive).
    pub fn get(&self, name: &Name) -> Option<&Arc<TsigKey>> {
        self.keys.get(&name_wire(name))
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// All keys, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<TsigKey>> {
        self.keys.values()
    }
}

/// One `key` statement of a BIND key file.
pub struct KeyFileEntry {
    /// The key name.
    pub name: Name,
    /// The algorithm.
    pub algorithm: Algorithm,
    /// The raw secret (decoded from base64); wiped on drop.
    pub secret: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for KeyFileEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyFileEntry")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Reads a BIND key file (`key "name" { algorithm hmac-sha256; secret "..."; };`,
/// one or more keys).
pub fn read_key_file(path: &Path) -> Result<Vec<KeyFileEntry>, Error> {
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| Error::KeyFile {
        path: path.to_owned(),
        reason: e.to_string(),
    })?);
    parse_key_file(&text).map_err(|reason| Error::KeyFile {
        path: path.to_owned(),
        reason,
    })
}

/// Parses the text of a BIND key file.
pub fn parse_key_file(text: &str) -> Result<Vec<KeyFileEntry>, String> {
    let tokens = tokenize(text)?;
    let mut it = tokens.into_iter().peekable();
    let mut keys = Vec::new();
    while let Some(tok) = it.next() {
        if tok != Tok::Word("key".into()) {
            return Err(format!("expected `key`, found {tok}"));
        }
        let name = match it.next() {
            Some(Tok::Word(s) | Tok::Str(s)) => s,
            other => return Err(format!("expected a key name, found {}", show(other))),
        };
        let name = Name::from_ascii(&name)
            .map_err(|e| format!("bad key name {name:?}: {e}"))?
            .to_lowercase();
        expect(&mut it, Tok::Open)?;
        let (mut algorithm, mut secret) = (None, None);
        loop {
            match it.next() {
                Some(Tok::Close) => break,
                Some(Tok::Word(w)) if w == "algorithm" => {
                    let Some(Tok::Word(a) | Tok::Str(a)) = it.next() else {
                        return Err("expected an algorithm name".into());
                    };
                    algorithm = Some(Algorithm::from_str(&a).map_err(|e| e.to_string())?);
                }
                Some(Tok::Word(w)) if w == "secret" => {
                    let Some(Tok::Str(s) | Tok::Word(s)) = it.next() else {
                        return Err("expected a quoted secret".into());
                    };
                    let s = Zeroizing::new(s);
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(s.as_bytes())
                        .map_err(|_| "secret is not valid base64".to_string())?;
                    secret = Some(Zeroizing::new(bytes));
                }
                other => return Err(format!("unexpected {} in key {name}", show(other))),
            }
            expect(&mut it, Tok::Semi)?;
        }
        expect(&mut it, Tok::Semi)?;
        let algorithm = algorithm.ok_or_else(|| format!("key {name} has no algorithm"))?;
        let secret = secret.ok_or_else(|| format!("key {name} has no secret"))?;
        if secret.len() < 16 {
            return Err(format!("key {name}: secret shorter than 16 bytes"));
        }
        keys.push(KeyFileEntry {
            name,
            algorithm,
            secret,
        });
    }
    if keys.is_empty() {
        return Err("no key statement found".into());
    }
    Ok(keys)
}

/// Generates a new random key and formats it as `tsig-keygen` does.
pub fn generate_key_file(name: &str, algorithm: Algorithm) -> Result<String, Error> {
    let name = Name::from_ascii(name).map_err(|_| Error::Name {
        name: name.to_owned(),
        reason: "not a valid key name",
    })?;
    let mut secret = Zeroizing::new(vec![0u8; algorithm.output_len()]);
    SystemRandom::new()
        .fill(&mut secret)
        .map_err(|_| Error::Config("no system randomness".into()))?;
    let b64 = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&*secret));
    let shown = name.to_ascii();
    let shown = shown.trim_end_matches('.');
    Ok(format!(
        "key \"{shown}\" {{\n\talgorithm {};\n\tsecret \"{}\";\n}};\n",
        algorithm.as_str(),
        &*b64
    ))
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Word(String),
    Str(String),
    Open,
    Close,
    Semi,
}

impl std::fmt::Display for Tok {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Word(w) => write!(f, "`{w}`"),
            Self::Str(_) => f.write_str("a string"),
            Self::Open => f.write_str("`{`"),
            Self::Close => f.write_str("`}`"),
            Self::Semi => f.write_str("`;`"),
        }
    }
}

fn show(t: Option<Tok>) -> String {
    t.map_or_else(|| "end of file".into(), |t| t.to_string())
}

fn expect(it: &mut impl Iterator<Item = Tok>, want: Tok) -> Result<(), String> {
    match it.next() {
        Some(t) if t == want => Ok(()),
        other => Err(format!("expected {want}, found {}", show(other))),
    }
}

fn tokenize(text: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '#' => skip_line(&mut chars),
            '/' if chars.peek() == Some(&'/') => skip_line(&mut chars),
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut prev = ' ';
                loop {
                    match chars.next() {
                        Some('/') if prev == '*' => break,
                        Some(c) => prev = c,
                        None => return Err("unterminated comment".into()),
                    }
                }
            }
            '{' => out.push(Tok::Open),
            '}' => out.push(Tok::Close),
            ';' => out.push(Tok::Semi),
            '"' => {
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => s.extend(chars.next()),
                        Some(c) => s.push(c),
                        None => return Err("unterminated string".into()),
                    }
                }
                out.push(Tok::Str(s));
            }
            c => {
                let mut s = String::from(c);
                while let Some(&n) = chars.peek() {
                    if n.is_whitespace() || matches!(n, '{' | '}' | ';' | '"') {
                        break;
                    }
                    s.push(n);
                    chars.next();
                }
                out.push(Tok::Word(s));
            }
        }
    }
    Ok(out)
}

fn skip_line(chars: &mut impl Iterator<Item = char>) {
    for c in chars.by_ref() {
        if c == '\n' {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tsig_keygen_output_and_comments() {
        let text = "# made by tsig-keygen\nkey \"Router1-Key\" {\n\talgorithm hmac-sha256;\n\t\
                    secret \"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTIzNDU2Nzg=\";\n};\n\
                    /* second */ key xfer.key { algorithm HMAC-SHA512; // trailing\n \
                    secret \"c2VjcmV0c2VjcmV0c2VjcmV0\"; };";
        let keys = parse_key_file(text).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].name, Name::from_ascii("router1-key").unwrap());
        assert_eq!(keys[0].algorithm, Algorithm::HmacSha256);
        assert_eq!(&keys[0].secret[..6], b"secret");
        assert_eq!(keys[1].algorithm, Algorithm::HmacSha512);
        assert!(!format!("{:?}", keys[0]).contains("secret\""));
    }

    #[test]
    fn rejects_bad_files() {
        for text in [
            "",
            "key k { algorithm hmac-md5; secret \"c2VjcmV0c2VjcmV0c2VjcmV0\"; };",
            "key k { algorithm hmac-sha256; };",
            "key k { secret \"c2VjcmV0c2VjcmV0c2VjcmV0\"; };",
            "key k { algorithm hmac-sha256; secret \"!!\"; };",
            "key k { algorithm hmac-sha256; secret \"c2hvcnQ=\"; };",
            "options { };",
            "key k { algorithm hmac-sha256; secret \"unterminated",
            "key k { algorithm hmac-sha256 secret \"c2VjcmV0c2VjcmV0c2VjcmV0\"; };",
        ] {
            assert!(parse_key_file(text).is_err(), "{text:?} was accepted");
        }
    }

    #[test]
    fn generated_files_parse_back() {
        let text = generate_key_file("gen.key", Algorithm::HmacSha256).unwrap();
        let keys = parse_key_file(&text).unwrap();
        assert_eq!(keys[0].name, Name::from_ascii("gen.key").unwrap());
        assert_eq!(keys[0].secret.len(), 32);
        let other = generate_key_file("gen.key", Algorithm::HmacSha256).unwrap();
        assert_ne!(text, other, "two generated keys must differ");
    }

    #[test]
    fn policy_scopes_to_subtrees() {
        let p = KeyPolicy {
            update: vec![Name::from_ascii("router1.home.fpn.").unwrap()],
            transfer: false,
        };
        assert!(p.may_update(&Name::from_ascii("router1.home.fpn.").unwrap()));
        assert!(p.may_update(&Name::from_ascii("NAS.Router1.home.fpn.").unwrap()));
        assert!(!p.may_update(&Name::from_ascii("router2.home.fpn.").unwrap()));
        assert!(!p.may_update(&Name::from_ascii("home.fpn.").unwrap()));
    }

    #[test]
    fn algorithm_names_round_trip() {
        for a in [
            Algorithm::HmacSha256,
            Algorithm::HmacSha384,
            Algorithm::HmacSha512,
        ] {
            assert_eq!(Algorithm::from_name(&a.name()), Some(a));
        }
        assert_eq!(
            Algorithm::from_name(&Name::from_ascii("hmac-md5.sig-alg.reg.int.").unwrap()),
            None
        );
    }
}

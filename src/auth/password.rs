//! Password files: the entries Mosquitto reads and writes, and checking a password.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use base64::Engine as _;
use rand_core::CryptoRng;
use sha2::{Digest, Sha512};
use ternmq_core::broker::{AuthDecision, AuthRequest, Authenticator};
use ternmq_core::codec::{MqttStr, ReasonCode};

use super::*;

/// A stored password hash.
#[derive(Clone)]
pub(super) enum PasswordHash {
    /// `$6$`: SHA-512 over password || salt.
    Sha512 { salt: Vec<u8>, hash: [u8; HASH_LEN] },
    /// `$7$`: PBKDF2-HMAC-SHA512.
    Pbkdf2 { iterations: u32, salt: Vec<u8>, hash: [u8; HASH_LEN] },
}

impl PasswordHash {
    /// Parses the part after `user:`.
    fn parse(text: &str) -> Result<Self, String> {
        let Some(rest) = text.strip_prefix('$') else {
            return Err(if text.is_empty() {
                "no password hash after ':'".into()
            } else {
                "the password is not hashed (plain-text passwords are not accepted; write the \
                 file with `ternmq passwd` or `mosquitto_passwd`)"
                    .into()
            });
        };
        let parts: Vec<&str> = rest.split('$').collect();
        match parts.as_slice() {
            ["6", salt, hash] => {
                Ok(Self::Sha512 { salt: decode_salt(salt)?, hash: decode_hash(hash)? })
            }
            ["7", iterations, salt, hash] => {
                let iterations = iterations
                    .parse::<u32>()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("bad iteration count {iterations:?}"))?;
                Ok(Self::Pbkdf2 { iterations, salt: decode_salt(salt)?, hash: decode_hash(hash)? })
            }
            ["6" | "7", ..] => Err(format!("malformed ${}$ password hash", parts[0])),
            [kind, ..] => Err(format!("unknown password hash type ${kind}$ (expected $6$ or $7$)")),
            [] => Err("malformed password hash".into()),
        }
    }

    /// Whether `password` hashes to this hash. The comparison takes the same time wherever
    /// the hashes differ.
    fn verify(&self, password: &[u8]) -> bool {
        match self {
            Self::Sha512 { salt, hash } => ct_eq(&sha512_salted(password, salt), hash),
            Self::Pbkdf2 { iterations, salt, hash } => {
                ct_eq(&pbkdf2_sha512(password, salt, *iterations), hash)
            }
        }
    }
}

pub(super) fn decode_salt(text: &str) -> Result<Vec<u8>, String> {
    match BASE64.decode(text) {
        Ok(salt) if salt.len() == SALT_LEN => Ok(salt),
        Ok(salt) => Err(format!("the salt is {} bytes long; it must be {SALT_LEN}", salt.len())),
        Err(_) => Err("the salt is not valid base64".into()),
    }
}

pub(super) fn decode_hash(text: &str) -> Result<[u8; HASH_LEN], String> {
    match BASE64.decode(text) {
        Ok(hash) => <[u8; HASH_LEN]>::try_from(hash.as_slice()).map_err(|_| {
            format!("the password hash is {} bytes long; it must be {HASH_LEN}", hash.len())
        }),
        Err(_) => Err("the password hash is not valid base64".into()),
    }
}

pub(super) fn sha512_salted(password: &[u8], salt: &[u8]) -> [u8; HASH_LEN] {
    let mut digest = Sha512::new();
    digest.update(password);
    digest.update(salt);
    let mut out = [0; HASH_LEN];
    out.copy_from_slice(digest.finalize().as_slice());
    out
}

pub(super) fn pbkdf2_sha512(password: &[u8], salt: &[u8], iterations: u32) -> [u8; HASH_LEN] {
    pbkdf2::pbkdf2_hmac_array::<Sha512, HASH_LEN>(password, salt, iterations)
}

/// Compares two hashes in constant time.
pub(super) fn ct_eq(a: &[u8; HASH_LEN], b: &[u8; HASH_LEN]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Splits a password-file line into user name and hash text, both trimmed.
pub(super) fn split_entry(line: &str) -> Option<(&str, &str)> {
    line.split_once(':').map(|(user, hash)| (user.trim(), hash.trim()))
}

/// A Mosquitto password file: user names and their password hashes. See the
/// [module documentation](self) for the format.
///
/// As an [`Authenticator`] it accepts a client whose user name is in the file with the right
/// password, and refuses any other client with a user name with 0x86 (Bad User Name or
/// Password). A client without a user name is accepted when
/// [`allow_anonymous`](Self::allow_anonymous) is set and refused with 0x87 (Not authorized)
/// otherwise.
#[derive(Clone, Default)]
pub struct PasswordFile {
    users: BTreeMap<String, PasswordHash>,
    allow_anonymous: bool,
}

impl fmt::Debug for PasswordFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordFile")
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .field("allow_anonymous", &self.allow_anonymous)
            .finish()
    }
}

impl PasswordFile {
    /// Reads and parses the password file at `path`. Anonymous clients are refused until
    /// [`set_allow_anonymous`](Self::set_allow_anonymous) says otherwise.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, FileError> {
        let path = path.as_ref();
        Self::parse(&read_text(path)?, path)
    }

    /// Parses the contents of a password file; `path` only names the file in errors.
    pub fn parse(text: &str, path: impl AsRef<Path>) -> Result<Self, FileError> {
        let path = path.as_ref();
        let mut users = BTreeMap::new();
        let mut lines_of = BTreeMap::new();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            if is_blank_or_comment(line) {
                continue;
            }
            let Some((user, hash)) = split_entry(line) else {
                return Err(FileError::syntax(path, number, "expected `user:password-hash`"));
            };
            if user.is_empty() {
                return Err(FileError::syntax(path, number, "empty user name"));
            }
            let hash = PasswordHash::parse(hash)
                .map_err(|m| FileError::syntax(path, number, format!("user {user:?}: {m}")))?;
            if let Some(first) = lines_of.insert(user.to_owned(), number) {
                return Err(FileError::syntax(
                    path,
                    number,
                    format!("user {user:?} is already defined on line {first}"),
                ));
            }
            users.insert(user.to_owned(), hash);
        }
        Ok(Self { users, allow_anonymous: false })
    }

    /// Whether clients without a user name are accepted.
    pub fn allow_anonymous(&self) -> bool {
        self.allow_anonymous
    }

    /// Sets whether clients without a user name are accepted (Mosquitto's `allow_anonymous`).
    pub fn set_allow_anonymous(&mut self, allow: bool) {
        self.allow_anonymous = allow;
    }

    /// The same file, with [`allow_anonymous`](Self::allow_anonymous) set to `allow`.
    pub fn with_allow_anonymous(mut self, allow: bool) -> Self {
        self.allow_anonymous = allow;
        self
    }

    /// Whether `user` is in the file and `password` is its password.
    pub fn verify(&self, user: &str, password: impl AsRef<[u8]>) -> bool {
        let password = password.as_ref();
        match self.users.get(user) {
            Some(hash) => hash.verify(password),
            None => {
                // Spend the time a real entry would, so that the answer's timing does not tell
                // whether the user exists.
                let decoy = PasswordHash::Pbkdf2 {
                    iterations: DEFAULT_ITERATIONS,
                    salt: vec![0; SALT_LEN],
                    hash: [0; HASH_LEN],
                };
                let _ = std::hint::black_box(decoy.verify(std::hint::black_box(password)));
                false
            }
        }
    }

    /// Whether `user` is in the file.
    pub fn contains_user(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// The user names in the file, in byte order.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(String::as_str)
    }

    /// How many users the file holds.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the file holds no user.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The decision for a CONNECT with these credentials (what
    /// [`authenticate`](Authenticator::authenticate) answers).
    pub fn decide(&self, username: Option<&str>, password: Option<&[u8]>) -> AuthDecision {
        match (username, password) {
            (None, _) if self.allow_anonymous => AuthDecision::Allow,
            (None, _) => AuthDecision::Deny(ReasonCode::NotAuthorized),
            (Some(user), Some(password)) if self.verify(user, password) => AuthDecision::Allow,
            (Some(_), _) => AuthDecision::Deny(ReasonCode::BadUserNameOrPassword),
        }
    }
}

impl Authenticator for PasswordFile {
    fn authenticate(&self, request: &AuthRequest) -> AuthDecision {
        let username = request.username.as_ref().map(MqttStr::as_str);
        self.decide(username, request.password.as_deref())
    }
}

/// Hashes `password` as a `$7$` password-file entry (the part after `user:`): PBKDF2-HMAC-SHA512
/// with [`DEFAULT_ITERATIONS`] and a [`SALT_LEN`]-byte salt drawn from `rng`.
///
/// ```
/// use rand_core::UnwrapErr;
/// use ternmq::auth::{PasswordFile, hash_password};
///
/// let entry = hash_password("secret", &mut UnwrapErr(getrandom::SysRng));
/// assert!(entry.starts_with("$7$101$"));
/// let file = PasswordFile::parse(&format!("alice:{entry}\n"), "example").unwrap();
/// assert!(file.verify("alice", "secret"));
/// ```
pub fn hash_password<R: CryptoRng + ?Sized>(password: impl AsRef<[u8]>, rng: &mut R) -> String {
    let mut salt = [0; SALT_LEN];
    rng.fill_bytes(&mut salt);
    pbkdf2_entry(password.as_ref(), &salt, DEFAULT_ITERATIONS)
}

/// A `$7$` entry for `password` with this salt and iteration count.
pub(super) fn pbkdf2_entry(password: &[u8], salt: &[u8], iterations: u32) -> String {
    let hash = pbkdf2_sha512(password, salt, iterations);
    format!("$7${iterations}${}${}", BASE64.encode(salt), BASE64.encode(hash))
}

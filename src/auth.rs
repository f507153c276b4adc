//! Mosquitto-compatible password files and ACL files.
//!
//! [`PasswordFile`] is an [`Authenticator`] and [`AclFile`] an [`Authorizer`]; both load the
//! files Mosquitto's `password_file` and `acl_file` options name, so a Mosquitto installation
//! can move to ternmq with its files as they are. The `ternmq passwd` command writes password
//! files with [`set_password`], [`create_password_file`] and [`delete_user`].
//!
//! # Password files
//!
//! One user a line, `user:hash`, where the hash is one of the two forms `mosquitto_passwd`
//! writes:
//!
//! - `$7$<iterations>$<salt>$<hash>`: PBKDF2-HMAC-SHA512 over the password with that many
//!   iterations (Mosquitto 2's default, with 101 iterations);
//! - `$6$<salt>$<hash>`: one SHA-512 over the password followed by the salt (Mosquitto 1.x).
//!
//! Salt and hash are standard base64 (padding optional); as in Mosquitto the salt must be 12
//! bytes and the hash 64. Whitespace around the user name and the hash is ignored, and so are
//! blank lines and lines whose first non-blank character is `#`. Unlike Mosquitto, which skips
//! lines it cannot use, every other line is an error that names the file and the line: a line
//! without `:`, an empty user name, a plain-text password, an unknown hash type, bad base64, a
//! user named twice. The password is hashed as the bytes the client sent.
//!
//! [`PasswordFile::verify`] compares the hashes in constant time, and for a user that is not in
//! the file it still computes a PBKDF2 hash, so that the time taken does not tell which users
//! exist.
//!
//! Files are written with [`hash_password`]'s `$7$` entries: 101 iterations, as
//! `mosquitto_passwd` uses (every attempt to connect costs the broker one hash, so the count
//! stays low), and a random 12-byte salt. Editing a file keeps every other line as it was,
//! comments included, and replaces the file atomically: the new contents are written to a
//! temporary file in the same directory, synced, and renamed over the old one. A new file is
//! created readable by its owner only (on Unix, mode 0600); an existing file keeps its
//! permissions.
//!
//! # ACL files
//!
//! ```text
//! # Anonymous clients (no user name) may read the weather.
//! topic read weather/#
//!
//! user alice
//! topic readwrite sensors/#
//! topic deny sensors/secret/#
//!
//! # Every client may write its own status and read its own inbox.
//! pattern write clients/%c/status
//! pattern read inbox/%u/#
//! ```
//!
//! - `topic [read|write|readwrite|deny] <filter>`: before the first `user` line, for anonymous
//!   clients; after a `user <name>` line, for the client that connected with that user name.
//!   A user may have several `user` blocks; their lines add up.
//! - `pattern [read|write|readwrite|deny] <filter>`: for every client, wherever the line is in
//!   the file, with `%c` replaced by the client identifier and `%u` by the user name. A pattern
//!   holding `%u` does not apply to anonymous clients.
//! - Without an access keyword the access is `readwrite`. With one, the filter is the rest of
//!   the line and may hold spaces.
//! - Blank lines and lines whose first non-blank character is `#` are comments. Anything else,
//!   an unknown access keyword, an invalid filter or a `$share/` filter is an error naming the
//!   file and the line.
//!
//! A client gets the `topic` lines of its own user name (or the anonymous ones) and every
//! pattern that applies to it; if nothing grants an action, it is refused. `deny` lines win
//! over grants wherever they are in the file (Mosquitto lets a `topic` grant of the client's
//! own user win over a `pattern deny`; here the deny wins).
//!
//! A client whose client identifier or user name holds `+` or `#` could widen a pattern with
//! them, so when the file has any `pattern` line such a client is refused everything (Mosquitto
//! refuses it what its `topic` lines do not grant).
//!
//! ## Publish
//!
//! [`Action::Publish`] (a PUBLISH or a will) on a topic name is allowed when a `write` or
//! `readwrite` filter matches the name and no `deny` filter does. Matching is MQTT's: `+` is one
//! level, `#` the parent level and everything below, and a filter starting with a wildcard
//! matches no name starting with `$`.
//!
//! ## Subscribe
//!
//! [`Action::Subscribe`] on a filter (for `$share/{group}/{filter}`, the `{filter}`) is allowed
//! when the subscription can receive something: there is a topic name that it matches, that a
//! `read` or `readwrite` filter matches, and that no `deny` filter matches. With
//! `topic readwrite #` and `topic deny secret/#`, a client may subscribe to `#` or `+/x`, but
//! not to `secret/#` or `secret/x`, which could only ever deliver denied topics (the SUBACK
//! says so: MQTT 5 0x87, 3.1.1 0x80). With `topic read sensors/+`, a subscription to `#` is
//! granted and delivers only `sensors/...` topics one level deep.
//!
//! ## Receive
//!
//! Every message is checked again on delivery ([`Action::Receive`], through
//! [`Authorizer::may_receive`]): it is delivered when a `read` or `readwrite` filter matches its
//! topic name and no `deny` filter does, as for a publish. This applies to live messages,
//! retained messages sent on subscribe, wills, and shared subscriptions (a member that may not
//! read a message is passed over for one that may). So the `#` subscriber above receives
//! `open/x` and never `secret/x`. This is Mosquitto's rule, with one difference: Mosquitto
//! grants a subscription that can only match denied topics and then delivers nothing through
//! it, where ternmq refuses it so that the client learns at once.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use rand_core::CryptoRng;
use sha2::{Digest, Sha512};
use ternmq_core::broker::{
    Action, AuthDecision, AuthRequest, Authenticator, Authorizer, ClientInfo,
};
use ternmq_core::codec::{MqttStr, ReasonCode};
use ternmq_core::topic::{self, TopicFilter};

/// PBKDF2 iterations of the `$7$` entries this module writes: `mosquitto_passwd`'s default.
pub const DEFAULT_ITERATIONS: u32 = 101;

/// Length of the salt of a password entry, in bytes (what Mosquitto requires).
pub const SALT_LEN: usize = 12;

/// Length of the hash of a password entry, in bytes: one SHA-512 output.
const HASH_LEN: usize = 64;

/// Base64 as Mosquitto writes it: the standard alphabet, padded; padding is optional on input.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// An error loading or editing a password or ACL file.
#[derive(Debug)]
#[non_exhaustive]
pub enum FileError {
    /// The file could not be read or written.
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// A line of the file is not valid.
    Syntax {
        /// The file.
        path: PathBuf,
        /// The line, counting from 1.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// The user to delete is not in the file.
    UnknownUser {
        /// The file.
        path: PathBuf,
        /// The user name.
        user: String,
    },
    /// A user name that cannot be written to a password file.
    InvalidUser {
        /// The user name.
        user: String,
        /// Why not.
        reason: &'static str,
    },
}

impl FileError {
    fn io(path: &Path, source: io::Error) -> Self {
        Self::Io { path: path.to_path_buf(), source }
    }

    fn syntax(path: &Path, line: usize, message: impl Into<String>) -> Self {
        Self::Syntax { path: path.to_path_buf(), line, message: message.into() }
    }
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Self::Syntax { path, line, message } => {
                write!(f, "{}:{line}: {message}", path.display())
            }
            Self::UnknownUser { path, user } => {
                write!(f, "{}: user {user:?} is not in the file", path.display())
            }
            Self::InvalidUser { user, reason } => write!(f, "user name {user:?}: {reason}"),
        }
    }
}

impl std::error::Error for FileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Reads `path` as UTF-8, naming the line of the first invalid byte.
fn read_text(path: &Path) -> Result<String, FileError> {
    let bytes = fs::read(path).map_err(|e| FileError::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = 1 + valid.iter().filter(|&&b| b == b'\n').count();
        FileError::syntax(path, line, "not valid UTF-8")
    })
}

/// Whether a line is blank or a comment.
fn is_blank_or_comment(line: &str) -> bool {
    let line = line.trim();
    line.is_empty() || line.starts_with('#')
}

// ---------------------------------------------------------------------------------------------
// Password files
// ---------------------------------------------------------------------------------------------

/// A stored password hash.
#[derive(Clone)]
enum PasswordHash {
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

fn decode_salt(text: &str) -> Result<Vec<u8>, String> {
    match BASE64.decode(text) {
        Ok(salt) if salt.len() == SALT_LEN => Ok(salt),
        Ok(salt) => Err(format!("the salt is {} bytes long; it must be {SALT_LEN}", salt.len())),
        Err(_) => Err("the salt is not valid base64".into()),
    }
}

fn decode_hash(text: &str) -> Result<[u8; HASH_LEN], String> {
    match BASE64.decode(text) {
        Ok(hash) => <[u8; HASH_LEN]>::try_from(hash.as_slice()).map_err(|_| {
            format!("the password hash is {} bytes long; it must be {HASH_LEN}", hash.len())
        }),
        Err(_) => Err("the password hash is not valid base64".into()),
    }
}

fn sha512_salted(password: &[u8], salt: &[u8]) -> [u8; HASH_LEN] {
    let mut digest = Sha512::new();
    digest.update(password);
    digest.update(salt);
    let mut out = [0; HASH_LEN];
    out.copy_from_slice(digest.finalize().as_slice());
    out
}

fn pbkdf2_sha512(password: &[u8], salt: &[u8], iterations: u32) -> [u8; HASH_LEN] {
    pbkdf2::pbkdf2_hmac_array::<Sha512, HASH_LEN>(password, salt, iterations)
}

/// Compares two hashes in constant time.
fn ct_eq(a: &[u8; HASH_LEN], b: &[u8; HASH_LEN]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Splits a password-file line into user name and hash text, both trimmed.
fn split_entry(line: &str) -> Option<(&str, &str)> {
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
fn pbkdf2_entry(password: &[u8], salt: &[u8], iterations: u32) -> String {
    let hash = pbkdf2_sha512(password, salt, iterations);
    format!("$7${iterations}${}${}", BASE64.encode(salt), BASE64.encode(hash))
}

/// [`hash_password`] with a salt from the operating system's generator.
fn hash_password_os(password: &[u8], path: &Path) -> Result<String, FileError> {
    let mut salt = [0; SALT_LEN];
    getrandom::fill(&mut salt).map_err(|e| FileError::io(path, io::Error::other(e)))?;
    Ok(pbkdf2_entry(password, &salt, DEFAULT_ITERATIONS))
}

/// Checks that `user` can be written to a password file and read back as the same name.
fn check_user(user: &str) -> Result<(), FileError> {
    let reason = if user.is_empty() {
        "must not be empty"
    } else if user.contains(':') {
        "must not contain ':'"
    } else if user.chars().any(char::is_control) {
        "must not contain control characters"
    } else if user.trim() != user {
        "must not start or end with whitespace"
    } else if user.starts_with('#') {
        "must not start with '#' (the line would be a comment)"
    } else if user.len() > 65_535 {
        "must be at most 65535 bytes long"
    } else {
        return Ok(());
    };
    Err(FileError::InvalidUser { user: user.to_owned(), reason })
}

/// Replaces (`Some`) or removes (`None`) the entries of `user` in password-file `text`, keeping
/// every other line byte for byte. A replaced entry keeps its place (later duplicates are
/// dropped); a new one is appended. Returns the new text and whether `user` was there.
fn edit_entries(text: &str, user: &str, entry: Option<&str>) -> (String, bool) {
    let mut out = String::with_capacity(text.len() + 128);
    let mut found = false;
    for line in text.split_inclusive('\n') {
        let (body, ending) = match line.strip_suffix("\r\n") {
            Some(body) => (body, "\r\n"),
            None => match line.strip_suffix('\n') {
                Some(body) => (body, "\n"),
                None => (line, ""),
            },
        };
        let is_user =
            !is_blank_or_comment(body) && split_entry(body).is_some_and(|(u, _)| u == user);
        if !is_user {
            out.push_str(line);
            continue;
        }
        if let (Some(entry), false) = (entry, found) {
            out.push_str(user);
            out.push(':');
            out.push_str(entry);
            out.push_str(if ending.is_empty() { "\n" } else { ending });
        }
        found = true;
    }
    if let (Some(entry), false) = (entry, found) {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(user);
        out.push(':');
        out.push_str(entry);
        out.push('\n');
    }
    (out, found)
}

/// Sets the password of `user` in the existing password file at `path`: replaces the user's
/// entry, or appends one, keeping the other lines as they are. Fails if the file does not exist
/// (see [`create_password_file`]).
pub fn set_password(
    path: impl AsRef<Path>,
    user: &str,
    password: impl AsRef<[u8]>,
) -> Result<(), FileError> {
    let path = path.as_ref();
    check_user(user)?;
    let text = read_text(path)?;
    let entry = hash_password_os(password.as_ref(), path)?;
    let (text, _) = edit_entries(&text, user, Some(&entry));
    write_atomically(path, text.as_bytes())
}

/// Writes a password file at `path` holding only `user` with `password`, replacing any file
/// that was there (`mosquitto_passwd -c`).
pub fn create_password_file(
    path: impl AsRef<Path>,
    user: &str,
    password: impl AsRef<[u8]>,
) -> Result<(), FileError> {
    let path = path.as_ref();
    check_user(user)?;
    let entry = hash_password_os(password.as_ref(), path)?;
    write_atomically(path, format!("{user}:{entry}\n").as_bytes())
}

/// Removes `user` from the password file at `path`, keeping the other lines as they are.
/// Fails with [`FileError::UnknownUser`] if the user is not in the file.
pub fn delete_user(path: impl AsRef<Path>, user: &str) -> Result<(), FileError> {
    let path = path.as_ref();
    let text = read_text(path)?;
    let (text, found) = edit_entries(&text, user, None);
    if !found {
        return Err(FileError::UnknownUser { path: path.to_path_buf(), user: user.to_owned() });
    }
    write_atomically(path, text.as_bytes())
}

/// Replaces the file at `path` (the file a symbolic link points to, if it is one) with
/// `contents`: writes a temporary file next to it, syncs it and renames it over the target.
fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), FileError> {
    let err = |e| FileError::io(path, e);
    let target = match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => fs::canonicalize(path).map_err(err)?,
        _ => path.to_path_buf(),
    };
    let existing = fs::metadata(&target).ok().map(|m| m.permissions());
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = target
        .file_name()
        .ok_or_else(|| err(io::Error::new(io::ErrorKind::InvalidInput, "not a file name")))?;
    let mut nonce = [0; 4];
    getrandom::fill(&mut nonce).map_err(|e| err(io::Error::other(e)))?;
    let tmp = dir.join(format!(
        ".{}.{}-{:08x}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        u32::from_le_bytes(nonce)
    ));
    let result = write_and_rename(&tmp, &target, contents, existing);
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// The steps of [`write_atomically`] that can fail after the temporary file's name is chosen.
fn write_and_rename(
    tmp: &Path,
    target: &Path,
    contents: &[u8],
    permissions: Option<fs::Permissions>,
) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(tmp)?;
    file.write_all(contents)?;
    if let Some(permissions) = permissions {
        file.set_permissions(permissions)?;
    }
    file.sync_all()?;
    drop(file);
    fs::rename(tmp, target)?;
    // Make the rename itself durable; not every platform can sync a directory.
    #[cfg(unix)]
    if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(d) = fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// ACL files
// ---------------------------------------------------------------------------------------------

/// The access an ACL line gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Access {
    fn parse(word: &str) -> Option<Self> {
        Some(match word {
            "read" => Self::Read,
            "write" => Self::Write,
            "readwrite" => Self::ReadWrite,
            "deny" => Self::Deny,
            _ => return None,
        })
    }

    /// Whether this grants `action`.
    fn grants(self, action: Action) -> bool {
        match action {
            Action::Publish => matches!(self, Self::Write | Self::ReadWrite),
            Action::Subscribe | Action::Receive => matches!(self, Self::Read | Self::ReadWrite),
            _ => false,
        }
    }
}

/// A `topic` line.
#[derive(Clone, Debug)]
struct Rule {
    access: Access,
    filter: String,
}

/// A piece of a `pattern` line's filter.
#[derive(Clone, Debug)]
enum Part {
    Text(String),
    ClientId,
    Username,
}

/// A `pattern` line.
#[derive(Clone, Debug)]
struct Pattern {
    access: Access,
    parts: Vec<Part>,
}

impl Pattern {
    fn new(access: Access, filter: &str) -> Self {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut chars = filter.chars().peekable();
        while let Some(c) = chars.next() {
            let part = match (c, chars.peek()) {
                ('%', Some('c')) => Part::ClientId,
                ('%', Some('u')) => Part::Username,
                _ => {
                    text.push(c);
                    continue;
                }
            };
            chars.next();
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text)));
            }
            parts.push(part);
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Self { access, parts }
    }

    /// The filter for this client, or `None` if the pattern names the user name and the client
    /// has none.
    fn expand(&self, client_id: &str, username: Option<&str>) -> Option<String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::ClientId => out.push_str(client_id),
                Part::Username => out.push_str(username?),
            }
        }
        Some(out)
    }
}

/// A Mosquitto ACL file. See the [module documentation](self) for the format and the exact
/// rules; as an [`Authorizer`] it answers [`allows`](Self::allows).
#[derive(Clone, Debug, Default)]
pub struct AclFile {
    /// `topic` lines before the first `user` line.
    anonymous: Vec<Rule>,
    /// `topic` lines per user name.
    users: BTreeMap<String, Vec<Rule>>,
    /// `pattern` lines, in file order.
    patterns: Vec<Pattern>,
}

impl AclFile {
    /// Reads and parses the ACL file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, FileError> {
        let path = path.as_ref();
        Self::parse(&read_text(path)?, path)
    }

    /// Parses the contents of an ACL file; `path` only names the file in errors.
    pub fn parse(text: &str, path: impl AsRef<Path>) -> Result<Self, FileError> {
        let path = path.as_ref();
        let mut acl = Self::default();
        let mut user: Option<String> = None;
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            if is_blank_or_comment(line) {
                continue;
            }
            let line = line.trim();
            let (keyword, rest) = split_word(line);
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(FileError::syntax(path, number, "`user` needs a user name"));
                    }
                    user = Some(rest.to_owned());
                    acl.users.entry(rest.to_owned()).or_default();
                }
                "topic" | "pattern" => {
                    let (access, filter) = parse_access(rest)
                        .map_err(|m| FileError::syntax(path, number, format!("{keyword}: {m}")))?;
                    if keyword == "pattern" {
                        acl.patterns.push(Pattern::new(access, filter));
                    } else {
                        let rule = Rule { access, filter: filter.to_owned() };
                        match &user {
                            Some(u) => acl.users.entry(u.clone()).or_default().push(rule),
                            None => acl.anonymous.push(rule),
                        }
                    }
                }
                other => {
                    return Err(FileError::syntax(
                        path,
                        number,
                        format!("unknown keyword {other:?} (expected topic, pattern or user)"),
                    ));
                }
            }
        }
        Ok(acl)
    }

    /// Whether the client `client_id`, connected with `username`, may perform `action` on
    /// `topic` (a topic name to publish to, or a filter to subscribe to). See the
    /// [module documentation](self) for the rules.
    pub fn allows(
        &self,
        client_id: &str,
        username: Option<&str>,
        action: Action,
        topic: &str,
    ) -> bool {
        let wild = |s: &str| s.contains(['+', '#']);
        if !self.patterns.is_empty() && (wild(client_id) || username.is_some_and(wild)) {
            return false;
        }
        let rules = match username {
            Some(u) => self.users.get(u).map_or(&[][..], Vec::as_slice),
            None => &self.anonymous,
        };
        let expanded: Vec<(Access, String)> = self
            .patterns
            .iter()
            .filter_map(|p| Some((p.access, p.expand(client_id, username)?)))
            .collect();
        let entries = || {
            rules
                .iter()
                .map(|r| (r.access, r.filter.as_str()))
                .chain(expanded.iter().map(|(a, f)| (*a, f.as_str())))
        };
        match action {
            Action::Publish | Action::Receive => {
                if topic.is_empty() || wild(topic) {
                    return false;
                }
                let mut granted = false;
                for (access, filter) in entries() {
                    if topic::matches(filter, topic) {
                        if access == Access::Deny {
                            return false;
                        }
                        granted |= access.grants(action);
                    }
                }
                granted
            }
            Action::Subscribe => {
                let Ok(filter) = TopicFilter::new(topic) else {
                    return false;
                };
                let denied: Vec<&str> =
                    entries().filter(|(a, _)| *a == Access::Deny).map(|(_, f)| f).collect();
                entries().any(|(access, grant)| {
                    access.grants(action)
                        && topic::intersects_except(filter.filter(), grant, &denied)
                })
            }
            _ => false,
        }
    }
}

impl Authorizer for AclFile {
    fn authorize(&self, client: &ClientInfo<'_>, action: Action, topic: &str) -> bool {
        self.allows(client.client_id, client.username, action, topic)
    }

    fn may_receive(&self, client: &ClientInfo<'_>, topic: &str) -> bool {
        self.allows(client.client_id, client.username, Action::Receive, topic)
    }
}

/// The first word of `s` and the rest, trimmed.
fn split_word(s: &str) -> (&str, &str) {
    match s.split_once([' ', '\t']) {
        Some((word, rest)) => (word, rest.trim()),
        None => (s, ""),
    }
}

/// Parses `[access] filter`.
fn parse_access(rest: &str) -> Result<(Access, &str), String> {
    let (first, filter) = split_word(rest);
    let (access, filter) = if filter.is_empty() {
        (Access::ReadWrite, first)
    } else {
        let access = Access::parse(first).ok_or_else(|| {
            format!("unknown access {first:?} (expected read, write, readwrite or deny)")
        })?;
        (access, filter)
    };
    if filter.is_empty() {
        return Err("missing topic filter".into());
    }
    match TopicFilter::new(filter) {
        Ok(f) if f.is_shared() => Err(format!(
            "{filter:?}: write the filter without $share/{{group}}/ (ACLs of shared \
             subscriptions apply to the filter inside)"
        )),
        Ok(_) => Ok((access, filter)),
        Err(e) => Err(format!("invalid topic filter {filter:?}: {e}")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::process::Command;
    use std::sync::Arc;

    use bytes::{Bytes, BytesMut};
    use ternmq_core::broker::{Broker, BrokerConfig, ConnId, PeerInfo};
    use ternmq_core::codec::{
        Connect, Decoder, Encoder, Packet, PacketId, ProtocolVersion, PubAck, Publish, QoS,
        Subscribe, Subscription, SubscriptionOptions,
    };
    use ternmq_core::time::Instant;
    use ternmq_core::topic::TopicName;

    // Written by mosquitto_passwd 2.0.11: `-c -b FILE alice secret`, `-b FILE bob 'p:w d'`,
    // and `-H sha512 -c -b FILE carol hunter2`.
    const MOSQUITTO_FILE: &str = "\
alice:$7$101$/5GCqZZBD9P9u7fS$QFUTmoG/llctqYodj5PLoFE7r/ftKokAM6Lk53qcez/xx3h/+4R7ZHfTJWZo7CJsM2nnyF/UoBb94Wud+qhicA==
bob:$7$101$NP7tFUSnYTZkhYhx$yNclswYTZLzJIHlBESI2MyHBvZP0eoxkYKbUkuHJVdNry0feSWUvDZfYqFsz3uFRu03ywI8XYgneYVb8e+L5qg==
carol:$6$BlNBncFv5LhRDGdG$jfG++UFOo4Z5BK47C0HylNZ4hdyXg+TNyZS4/Ob13SuxWHfu8mqtjqvZIAPYUA63bASaLiU0km98to7jBYwyAg==
";

    /// A scratch directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let mut nonce = [0; 8];
            getrandom::fill(&mut nonce).unwrap();
            let dir = std::env::temp_dir().join(format!(
                "ternmq-auth-{name}-{}-{:016x}",
                std::process::id(),
                u64::from_le_bytes(nonce)
            ));
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }

        fn entries(&self) -> Vec<String> {
            let mut v: Vec<String> = fs::read_dir(&self.0)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// A "random" generator counting up from a seed: enough to test that the salt is drawn.
    struct Counter(u8);

    impl rand_core::TryRng for Counter {
        type Error = Infallible;

        fn try_next_u32(&mut self) -> Result<u32, Infallible> {
            let mut b = [0; 4];
            self.try_fill_bytes(&mut b)?;
            Ok(u32::from_le_bytes(b))
        }

        fn try_next_u64(&mut self) -> Result<u64, Infallible> {
            let mut b = [0; 8];
            self.try_fill_bytes(&mut b)?;
            Ok(u64::from_le_bytes(b))
        }

        fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
            for b in dst {
                *b = self.0;
                self.0 = self.0.wrapping_add(1);
            }
            Ok(())
        }
    }

    impl rand_core::TryCryptoRng for Counter {}

    fn syntax_error(text: &str) -> (usize, String) {
        match PasswordFile::parse(text, "pw.txt") {
            Err(FileError::Syntax { line, message, path }) => {
                assert_eq!(path, Path::new("pw.txt"));
                (line, message)
            }
            other => panic!("expected a syntax error for {text:?}, got {other:?}"),
        }
    }

    fn interop_required() -> bool {
        std::env::var_os("TERNMQ_REQUIRE_INTEROP").is_some()
    }

    // ---- password files ---------------------------------------------------------------------

    #[test]
    fn verifies_entries_mosquitto_passwd_wrote() {
        let file = PasswordFile::parse(MOSQUITTO_FILE, "mosquitto").unwrap();
        assert_eq!(file.users().collect::<Vec<_>>(), ["alice", "bob", "carol"]);
        assert!(file.verify("alice", "secret"));
        assert!(file.verify("bob", "p:w d"));
        assert!(file.verify("carol", "hunter2"));
        assert!(!file.verify("alice", "Secret"));
        assert!(!file.verify("alice", "secret "));
        assert!(!file.verify("alice", ""));
        assert!(!file.verify("carol", "hunter"));
        assert!(!file.verify("bob", "secret"));
        assert!(!file.verify("Alice", "secret"));
        assert!(!file.verify("dave", "secret"));
        assert_eq!(file.len(), 3);
        assert!(file.contains_user("carol") && !file.contains_user("dave"));
    }

    #[test]
    fn verifies_files_written_by_the_real_mosquitto_passwd() {
        let bin = Path::new("/usr/bin/mosquitto_passwd");
        if !bin.exists() {
            assert!(!interop_required(), "mosquitto_passwd is required (TERNMQ_REQUIRE_INTEROP)");
            eprintln!("skipped: mosquitto_passwd not installed");
            return;
        }
        let dir = TempDir::new("mosquitto-passwd");
        let path = dir.path("passwords");
        let path_str = path.to_str().unwrap().to_owned();
        let status =
            Command::new(bin).args(["-c", "-b", &path_str, "pbkdf", "pw one"]).status().unwrap();
        assert!(status.success());
        let status = Command::new(bin)
            .args(["-H", "sha512", "-b", &path_str, "legacy", "pw:two"])
            .status()
            .unwrap();
        assert!(status.success());
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("pbkdf:$7$101$"), "{text}");
        assert!(text.contains("legacy:$6$"), "{text}");
        let file = PasswordFile::load(&path).unwrap();
        assert!(file.verify("pbkdf", "pw one"));
        assert!(file.verify("legacy", "pw:two"));
        assert!(!file.verify("pbkdf", "pw two"));
        assert!(!file.verify("legacy", "pw one"));
    }

    #[test]
    fn skips_comments_blank_lines_and_whitespace() {
        let entry = pbkdf2_entry(b"pw", &[7; SALT_LEN], 5);
        let text = format!(
            "# users\r\n\r\n   \n  # indented comment\n  dave  :  {entry}  \r\nerin:{entry}"
        );
        let file = PasswordFile::parse(&text, "pw.txt").unwrap();
        assert!(file.verify("dave", "pw"));
        assert!(file.verify("erin", "pw"));
        assert!(PasswordFile::parse("", "empty").unwrap().is_empty());
    }

    #[test]
    fn any_iteration_count_and_unpadded_base64_are_read() {
        let salt = [1; SALT_LEN];
        let entry = pbkdf2_entry(b"pw", &salt, 1000);
        assert!(entry.starts_with("$7$1000$"));
        let unpadded = entry.trim_end_matches('=');
        for e in [&entry[..], unpadded] {
            let file = PasswordFile::parse(&format!("u:{e}"), "pw.txt").unwrap();
            assert!(file.verify("u", "pw"));
            assert!(!file.verify("u", "pw2"));
        }
    }

    #[test]
    fn sha512_entries_hash_password_then_salt() {
        let salt = [9u8; SALT_LEN];
        let hash = sha512_salted(b"pw", &salt);
        let mut digest = Sha512::new();
        digest.update(b"pw");
        digest.update(salt);
        assert_eq!(&hash[..], digest.finalize().as_slice());
        let line = format!("u:$6${}${}", BASE64.encode(salt), BASE64.encode(hash));
        let file = PasswordFile::parse(&line, "pw.txt").unwrap();
        assert!(file.verify("u", "pw"));
        assert!(!file.verify("u", "pW"));
    }

    #[test]
    fn bad_lines_name_the_file_and_line() {
        let good = pbkdf2_entry(b"pw", &[0; SALT_LEN], 1);
        let salt = BASE64.encode([0; SALT_LEN]);
        let hash = BASE64.encode([0; HASH_LEN]);
        let cases = [
            ("no colon here".to_owned(), "expected `user:password-hash`"),
            (format!(":{good}"), "empty user name"),
            ("u:".to_owned(), "no password hash"),
            ("u:plaintext".to_owned(), "not hashed"),
            (format!("u:$5${salt}${hash}"), "unknown password hash type $5$"),
            (format!("u:$7${salt}${hash}"), "malformed $7$"),
            (format!("u:$6$101${salt}${hash}"), "malformed $6$"),
            (format!("u:$7$0${salt}${hash}"), "bad iteration count"),
            (format!("u:$7$x${salt}${hash}"), "bad iteration count"),
            (format!("u:$7$-1${salt}${hash}"), "bad iteration count"),
            (format!("u:$7$101$!!!${hash}"), "salt is not valid base64"),
            (format!("u:$7$101$AAAA${hash}"), "salt is 3 bytes long"),
            (format!("u:$7$101${salt}$AAAA"), "hash is 3 bytes long"),
            (format!("u:$7$101${salt}$%%%"), "hash is not valid base64"),
            (format!("u:$6${salt}${hash}:junk"), "not valid base64"),
            (format!("u:{good}\nu:{good}"), "already defined on line 3"),
        ];
        for (body, expected) in cases {
            let text = format!("# header\nok:{good}\n{body}\n");
            let (line, message) = syntax_error(&text);
            let want = if expected.starts_with("already") { 4 } else { 3 };
            assert_eq!(line, want, "{body:?}: {message}");
            assert!(message.contains(expected), "{body:?}: {message}");
        }
        let err = PasswordFile::parse("x", "dir/pw.txt").unwrap_err();
        assert!(err.to_string().starts_with("dir/pw.txt:1: "), "{err}");
    }

    #[test]
    fn load_reports_missing_files_and_invalid_utf8() {
        let dir = TempDir::new("load");
        let missing = dir.path("missing");
        match PasswordFile::load(&missing) {
            Err(FileError::Io { path, source }) => {
                assert_eq!(path, missing);
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("{other:?}"),
        }
        let bad = dir.path("bad");
        fs::write(&bad, b"# one\n# two\nu\xff:x\n").unwrap();
        match PasswordFile::load(&bad) {
            Err(FileError::Syntax { line: 3, .. }) => {}
            other => panic!("{other:?}"),
        }
        match AclFile::load(&bad) {
            Err(FileError::Syntax { line: 3, .. }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hash_password_draws_the_salt_from_the_generator() {
        let entry = hash_password("secret", &mut Counter(0));
        assert_eq!(entry, pbkdf2_entry(b"secret", &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], 101));
        let parts: Vec<&str> = entry.split('$').collect();
        assert_eq!(parts[..3], ["", "7", "101"]);
        assert_eq!(BASE64.decode(parts[3]).unwrap().len(), SALT_LEN);
        assert_eq!(BASE64.decode(parts[4]).unwrap().len(), HASH_LEN);
        assert!(parts[4].ends_with("=="), "padded as mosquitto_passwd writes");
        let other = hash_password("secret", &mut Counter(1));
        assert_ne!(entry, other);
        let file = PasswordFile::parse(&format!("a:{entry}\nb:{other}\n"), "x").unwrap();
        assert!(file.verify("a", "secret") && file.verify("b", "secret"));
        let os = hash_password("secret", &mut rand_core::UnwrapErr(getrandom::SysRng));
        assert!(PasswordFile::parse(&format!("c:{os}"), "x").unwrap().verify("c", "secret"));
    }

    #[test]
    fn pbkdf2_matches_a_known_answer() {
        // RFC 6070-style vector for PBKDF2-HMAC-SHA512 ("password", "salt", 1 iteration).
        let out = pbkdf2_sha512(b"password", b"salt", 1);
        assert_eq!(
            out[..8],
            [0x86, 0x7f, 0x70, 0xcf, 0x1a, 0xde, 0x02, 0xcf],
            "{:02x?}",
            &out[..8]
        );
    }

    #[test]
    fn constant_time_compare() {
        let a = [5; HASH_LEN];
        let mut b = a;
        assert!(ct_eq(&a, &b));
        b[HASH_LEN - 1] ^= 1;
        assert!(!ct_eq(&a, &b));
        b = a;
        b[0] ^= 0x80;
        assert!(!ct_eq(&a, &b));
    }

    #[test]
    fn decisions_for_connect() {
        let mut file = PasswordFile::parse(MOSQUITTO_FILE, "m").unwrap();
        assert!(!file.allow_anonymous());
        assert_eq!(file.decide(Some("alice"), Some(b"secret")), AuthDecision::Allow);
        let bad = AuthDecision::Deny(ReasonCode::BadUserNameOrPassword);
        assert_eq!(file.decide(Some("alice"), Some(b"nope")), bad);
        assert_eq!(file.decide(Some("alice"), None), bad);
        assert_eq!(file.decide(Some("zoe"), Some(b"secret")), bad);
        assert_eq!(file.decide(None, None), AuthDecision::Deny(ReasonCode::NotAuthorized));
        assert_eq!(file.decide(None, Some(b"x")), AuthDecision::Deny(ReasonCode::NotAuthorized));
        file.set_allow_anonymous(true);
        assert_eq!(file.decide(None, None), AuthDecision::Allow);
        // Credentials given are still checked.
        assert_eq!(file.decide(Some("alice"), Some(b"nope")), bad);
        let file = file.with_allow_anonymous(false);
        assert_eq!(file.decide(None, None), AuthDecision::Deny(ReasonCode::NotAuthorized));
        let debug = format!("{file:?}");
        assert!(debug.contains("alice") && !debug.contains("$7$"), "{debug}");
    }

    #[test]
    fn set_password_keeps_other_lines_and_replaces_in_place() {
        let dir = TempDir::new("set");
        let path = dir.path("pw");
        let original = format!("# users\r\n\r\nalice:{}\r\n# end\r\nbob:$6$keep-as-is", "x");
        fs::write(&path, &original).unwrap();
        set_password(&path, "alice", "new").unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.split("\r\n").collect();
        assert_eq!(lines[0], "# users");
        assert_eq!(lines[1], "");
        assert!(lines[2].starts_with("alice:$7$101$"), "{text:?}");
        assert_eq!(lines[3], "# end");
        assert_eq!(lines[4], "bob:$6$keep-as-is", "the last line is kept, without a newline");
        assert_eq!(lines.len(), 5);
        // A new user is appended after a newline.
        set_password(&path, "carol", "pw").unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("bob:$6$keep-as-is\ncarol:$7$"), "{text:?}");
        assert!(text.ends_with('\n'));
        // Only the entries edited here hold real hashes: check those.
        let kept: String =
            text.lines().filter(|l| !l.starts_with("bob:")).collect::<Vec<_>>().join("\n");
        let file = PasswordFile::parse(&kept, &path).unwrap();
        assert!(file.verify("alice", "new") && file.verify("carol", "pw"));
        assert_eq!(dir.entries(), ["pw"], "no temporary file left behind");
    }

    #[test]
    fn set_password_drops_later_duplicates_and_refuses_missing_files() {
        let dir = TempDir::new("dup");
        let path = dir.path("pw");
        fs::write(&path, "a:1\n b :2\nc:3\nb:4\n").unwrap();
        set_password(&path, "b", "pw").unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0], "a:1");
        assert!(lines[1].starts_with("b:$7$"));
        assert_eq!(lines[2], "c:3");
        match set_password(dir.path("none"), "u", "p") {
            Err(FileError::Io { source, .. }) => assert_eq!(source.kind(), io::ErrorKind::NotFound),
            other => panic!("{other:?}"),
        }
        assert!(!dir.path("none").exists());
    }

    #[test]
    fn create_replaces_the_file_and_delete_removes_the_user() {
        let dir = TempDir::new("create");
        let path = dir.path("pw");
        fs::write(&path, "old:stuff\n").unwrap();
        create_password_file(&path, "alice", "one").unwrap();
        set_password(&path, "bob", "two").unwrap();
        let file = PasswordFile::load(&path).unwrap();
        assert_eq!(file.users().collect::<Vec<_>>(), ["alice", "bob"]);
        assert!(file.verify("alice", "one") && file.verify("bob", "two"));
        delete_user(&path, "alice").unwrap();
        let file = PasswordFile::load(&path).unwrap();
        assert_eq!(file.users().collect::<Vec<_>>(), ["bob"]);
        match delete_user(&path, "alice") {
            Err(e @ FileError::UnknownUser { .. }) => {
                assert!(e.to_string().contains("\"alice\" is not in the file"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(dir.entries(), ["pw"]);
    }

    #[test]
    fn refuses_user_names_that_would_not_read_back() {
        let dir = TempDir::new("names");
        let path = dir.path("pw");
        for bad in ["", "a:b", " a", "a ", "#a", "a\nb", "a\tb"] {
            match create_password_file(&path, bad, "pw") {
                Err(FileError::InvalidUser { user, .. }) => assert_eq!(user, bad),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        assert!(!path.exists());
        create_password_file(&path, "with space", "pw").unwrap();
        create_password_file(&path, "ünïcode", "pw").unwrap();
        assert!(PasswordFile::load(&path).unwrap().verify("ünïcode", "pw"));
    }

    #[cfg(unix)]
    #[test]
    fn new_files_are_private_and_existing_permissions_are_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new("perm");
        let path = dir.path("pw");
        create_password_file(&path, "a", "pw").unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        set_password(&path, "b", "pw").unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
        create_password_file(&path, "c", "pw").unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
    }

    #[cfg(unix)]
    #[test]
    fn a_symbolic_link_is_followed() {
        let dir = TempDir::new("link");
        let real = dir.path("real");
        let link = dir.path("link");
        create_password_file(&real, "a", "pw").unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        set_password(&link, "b", "pw").unwrap();
        assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert!(PasswordFile::load(&real).unwrap().contains_user("b"));
    }

    // ---- ACL files --------------------------------------------------------------------------

    const ACL: &str = "\
# Anonymous clients.
topic read public/#
topic weather

user alice
topic readwrite sensors/#
topic deny sensors/secret/#
topic write logs/alice
topic read with space/+

user bob
topic read sensors/+/temp

# A second block for alice adds to the first.
user alice
topic read extra

pattern write clients/%c/status
pattern read inbox/%u/#
pattern deny clients/%c/status/locked
";

    fn acl() -> AclFile {
        AclFile::parse(ACL, "acl").unwrap()
    }

    fn can(acl: &AclFile, user: Option<&str>, action: Action, topic: &str) -> bool {
        acl.allows("client-1", user, action, topic)
    }

    fn publish(acl: &AclFile, user: Option<&str>, topic: &str) -> bool {
        can(acl, user, Action::Publish, topic)
    }

    fn subscribe(acl: &AclFile, user: Option<&str>, filter: &str) -> bool {
        can(acl, user, Action::Subscribe, filter)
    }

    fn receive(acl: &AclFile, user: Option<&str>, topic: &str) -> bool {
        can(acl, user, Action::Receive, topic)
    }

    #[test]
    fn topic_lines_apply_to_their_user() {
        let acl = acl();
        // Anonymous: `public/#` read-only, `weather` readwrite (no keyword).
        assert!(subscribe(&acl, None, "public/news"));
        assert!(!publish(&acl, None, "public/news"));
        assert!(publish(&acl, None, "weather") && subscribe(&acl, None, "weather"));
        assert!(!publish(&acl, None, "sensors/a"));
        // Alice.
        assert!(publish(&acl, Some("alice"), "sensors/a/temp"));
        assert!(subscribe(&acl, Some("alice"), "sensors/a/temp"));
        assert!(publish(&acl, Some("alice"), "logs/alice"));
        assert!(!subscribe(&acl, Some("alice"), "logs/alice"), "write only");
        assert!(subscribe(&acl, Some("alice"), "extra"), "second user block");
        assert!(subscribe(&acl, Some("alice"), "with space/x"), "filters may hold spaces");
        assert!(!publish(&acl, Some("alice"), "weather"), "anonymous lines are not hers");
        assert!(!subscribe(&acl, Some("alice"), "public/news"));
        // Bob.
        assert!(subscribe(&acl, Some("bob"), "sensors/kitchen/temp"));
        assert!(!publish(&acl, Some("bob"), "sensors/kitchen/temp"));
        assert!(!subscribe(&acl, Some("bob"), "sensors/kitchen/humidity"));
        // A user with no block gets the patterns only.
        assert!(!subscribe(&acl, Some("carol"), "public/news"));
        assert!(subscribe(&acl, Some("carol"), "inbox/carol/1"));
    }

    #[test]
    fn deny_wins_over_grants() {
        let acl = acl();
        assert!(!publish(&acl, Some("alice"), "sensors/secret/x"));
        assert!(!publish(&acl, Some("alice"), "sensors/secret"), "`#` covers the parent");
        assert!(!subscribe(&acl, Some("alice"), "sensors/secret/x"));
        assert!(!subscribe(&acl, Some("alice"), "sensors/secret/#"), "only denied topics");
        // Subscriptions that can also receive allowed topics are granted; what they deliver
        // is checked per message.
        assert!(subscribe(&acl, Some("alice"), "sensors/#"));
        assert!(subscribe(&acl, Some("alice"), "sensors/+/x"));
        assert!(subscribe(&acl, Some("alice"), "sensors/+"));
        assert!(subscribe(&acl, Some("alice"), "sensors/public/#"));
        assert!(receive(&acl, Some("alice"), "sensors/kitchen/x"));
        assert!(!receive(&acl, Some("alice"), "sensors/secret/x"));
        assert!(!receive(&acl, Some("alice"), "sensors/secret"), "`#` covers the parent");
        // A pattern deny wins over the pattern grant, and over a `topic` grant too.
        assert!(publish(&acl, Some("alice"), "clients/client-1/status"));
        assert!(!publish(&acl, Some("alice"), "clients/client-1/status/locked"));
        let acl = AclFile::parse("user u\ntopic #\npattern deny private/%u/#\n", "acl").unwrap();
        assert!(publish(&acl, Some("u"), "private/v/x"));
        assert!(!publish(&acl, Some("u"), "private/u/x"));
        // Order in the file does not matter.
        let acl = AclFile::parse("user u\ntopic deny a/b\ntopic a/#\n", "acl").unwrap();
        assert!(!publish(&acl, Some("u"), "a/b") && publish(&acl, Some("u"), "a/c"));
    }

    /// Mosquitto's rule for the file users already have: a deny line takes topics away from
    /// wide subscriptions on delivery instead of refusing the subscriptions.
    #[test]
    fn a_deny_line_withholds_messages_but_not_wide_subscriptions() {
        let acl = AclFile::parse("topic readwrite #\ntopic deny secret/#\n", "acl").unwrap();
        for ok in ["#", "+/+", "+/x", "open/#", "+/#", "+/x/+/+"] {
            assert!(subscribe(&acl, None, ok), "{ok}");
        }
        // Filters that can only match denied topics are refused (Mosquitto grants them and
        // delivers nothing).
        for no in ["secret/#", "secret/x", "secret", "secret/+/y", "secret/x/+/+", "$SYS/#"] {
            assert!(!subscribe(&acl, None, no), "{no}");
        }
        assert!(receive(&acl, None, "open/x"));
        assert!(!receive(&acl, None, "secret/x"));
        assert!(!receive(&acl, None, "secret"));
        assert!(!receive(&acl, None, "$SYS/x"), "`#` does not reach $SYS");
    }

    #[test]
    fn subscribe_needs_a_read_filter_that_can_match_an_allowed_topic() {
        let acl = AclFile::parse("topic read sensors/#\ntopic write +/temp\n", "acl").unwrap();
        for ok in ["sensors/#", "sensors/+/temp", "sensors", "sensors/a", "#", "+", "+/temp"] {
            assert!(subscribe(&acl, None, ok), "{ok}");
        }
        for no in ["sensorsx/#", "$SYS/#", "other", "a/temp"] {
            assert!(!subscribe(&acl, None, no), "{no}");
        }
        assert!(receive(&acl, None, "sensors/a/b"));
        assert!(!receive(&acl, None, "kitchen/temp"), "write only");
        let acl = AclFile::parse("topic read sensors/+\n", "acl").unwrap();
        assert!(subscribe(&acl, None, "sensors/+/#"), "matches sensors/a");
        assert!(subscribe(&acl, None, "sensors/#"));
        assert!(!subscribe(&acl, None, "sensors"));
        assert!(!subscribe(&acl, None, "sensors/+/+"));
        assert!(receive(&acl, None, "sensors/a") && !receive(&acl, None, "sensors/a/b"));
    }

    #[test]
    fn shared_subscriptions_are_checked_by_their_inner_filter() {
        let acl = AclFile::parse("topic read jobs/#\ntopic deny jobs/secret\n", "acl").unwrap();
        assert!(subscribe(&acl, None, "$share/workers/jobs/+/run"));
        assert!(subscribe(&acl, None, "$share/workers/jobs/+"), "jobs/a is allowed");
        assert!(subscribe(&acl, None, "$share/workers/#"));
        assert!(!subscribe(&acl, None, "$share/workers/jobs/secret"));
        assert!(!subscribe(&acl, None, "$share/jobs/x"), "the share name is not a level");
        assert!(!subscribe(&acl, None, "$share/g"), "invalid filter");
        assert!(!subscribe(&acl, None, "a/#/b"), "invalid filter");
    }

    #[test]
    fn system_topics_need_a_filter_starting_with_dollar() {
        let acl = AclFile::parse("topic #\ntopic read $SYS/broker/#\n", "acl").unwrap();
        assert!(publish(&acl, None, "a/b"));
        assert!(!publish(&acl, None, "$SYS/broker/x"), "read only");
        assert!(!publish(&acl, None, "$other"));
        assert!(subscribe(&acl, None, "$SYS/broker/+"));
        assert!(subscribe(&acl, None, "$SYS/#"), "can match $SYS/broker/x");
        assert!(!receive(&acl, None, "$SYS/other"));
        assert!(subscribe(&acl, None, "#"));
        let acl = AclFile::parse("topic #\ntopic deny $SYS/#\n", "acl").unwrap();
        assert!(subscribe(&acl, None, "#"), "`#` does not reach $SYS");
        assert!(subscribe(&acl, None, "+/x"));
        assert!(!subscribe(&acl, None, "$SYS/x"));
        let acl = AclFile::parse("topic read +/#\n", "acl").unwrap();
        assert!(subscribe(&acl, None, "a/b"));
        assert!(!subscribe(&acl, None, "$SYS/b"));
        assert!(!receive(&acl, None, "$SYS/b"));
    }

    #[test]
    fn patterns_substitute_client_id_and_user_name() {
        let acl = acl();
        assert!(acl.allows("c7", None, Action::Publish, "clients/c7/status"));
        assert!(!acl.allows("c7", None, Action::Publish, "clients/c8/status"));
        assert!(!acl.allows("c7", None, Action::Subscribe, "clients/c7/status"), "write only");
        assert!(acl.allows("c7", Some("dave"), Action::Subscribe, "inbox/dave/#"));
        assert!(acl.allows("c7", Some("dave"), Action::Subscribe, "inbox/+/#"), "reaches dave's");
        assert!(acl.allows("c7", Some("dave"), Action::Receive, "inbox/dave/1"));
        assert!(!acl.allows("c7", Some("dave"), Action::Receive, "inbox/erin/1"));
        assert!(!acl.allows("c7", Some("dave"), Action::Subscribe, "inbox/erin/1"));
        // %u never applies to anonymous clients, even when a literal "%u" level would match.
        assert!(!acl.allows("c7", None, Action::Subscribe, "inbox/%u/x"));
        // Several substitutions, and a '%' that is not one.
        let acl = AclFile::parse("pattern a/%u-%c/%x/%%c\n", "acl").unwrap();
        assert!(acl.allows("id", Some("me"), Action::Publish, "a/me-id/%x/%id"));
        // A user name with a '/' widens only itself.
        assert!(acl.allows("id", Some("m/e"), Action::Publish, "a/m/e-id/%x/%id"));
    }

    #[test]
    fn wildcards_in_names_are_refused_when_patterns_exist() {
        let acl = acl();
        assert!(!acl.allows("c+", None, Action::Subscribe, "public/x"));
        assert!(!acl.allows("c#", None, Action::Publish, "weather"));
        assert!(!acl.allows("c", Some("ali+ce"), Action::Publish, "inbox/x"));
        let plain = AclFile::parse("topic read public/#\n", "acl").unwrap();
        assert!(plain.allows("c+", None, Action::Subscribe, "public/x"), "no patterns: harmless");
    }

    #[test]
    fn an_empty_file_refuses_everything() {
        let acl = AclFile::parse("# nothing\n\n", "acl").unwrap();
        assert!(!acl.allows("c", None, Action::Publish, "a"));
        assert!(!acl.allows("c", Some("u"), Action::Subscribe, "a"));
    }

    #[test]
    fn publishing_to_a_filter_is_refused() {
        let acl = AclFile::parse("topic #\n", "acl").unwrap();
        assert!(!publish(&acl, None, "a/+"));
        assert!(!publish(&acl, None, "#"));
        assert!(!publish(&acl, None, ""));
    }

    #[test]
    fn bad_acl_lines_name_the_file_and_line() {
        let cases = [
            ("topic", "missing topic filter"),
            ("topic read", ""), // A topic named "read", as Mosquitto reads it: valid.
            ("topic readonly a/b", "unknown access \"readonly\""),
            ("topic read a/#/b", "invalid topic filter"),
            ("topic read a+", "invalid topic filter"),
            ("pattern write %c/#x", "invalid topic filter"),
            ("topic read $share/g/a", "without $share"),
            ("user", "needs a user name"),
            ("users alice", "unknown keyword \"users\""),
            ("readwrite a", "unknown keyword"),
        ];
        for (line, expected) in cases {
            let text = format!("# acl\ntopic ok\n{line}\n");
            match AclFile::parse(&text, "acl.conf") {
                Ok(acl) => {
                    assert!(expected.is_empty(), "{line:?} was accepted");
                    assert!(publish(&acl, None, "read") && subscribe(&acl, None, "read"));
                }
                Err(e @ FileError::Syntax { line: 3, .. }) => {
                    assert!(!expected.is_empty(), "{line:?}: {e}");
                    let text = e.to_string();
                    assert!(text.starts_with("acl.conf:3: "), "{text}");
                    assert!(text.contains(expected), "{line:?}: {text}");
                }
                Err(e) => panic!("{line:?}: {e:?}"),
            }
        }
        // Tabs separate words too, and the user name is the rest of the line.
        let acl = AclFile::parse("user  some one \n\ttopic\tread\tx/y \n", "acl").unwrap();
        assert!(acl.allows("c", Some("some one"), Action::Subscribe, "x/y"));
    }

    // ---- through the broker -----------------------------------------------------------------

    struct Conn {
        id: ConnId,
        decoder: Decoder,
        input: BytesMut,
    }

    fn send(broker: &mut Broker, conn: &Conn, packet: Packet) {
        let mut buf = BytesMut::new();
        Encoder::new(ProtocolVersion::V5).encode(&packet, &mut buf).unwrap();
        broker.handle_bytes(Instant::from_secs(1), conn.id, &mut buf);
    }

    fn recv(broker: &mut Broker, conn: &mut Conn) -> Vec<Packet> {
        while let Some(b) = broker.poll_transmit(conn.id, usize::MAX) {
            conn.input.extend_from_slice(&b);
        }
        while broker.poll_event().is_some() {}
        let mut out = Vec::new();
        while let Some(p) = conn.decoder.decode(&mut conn.input).unwrap() {
            out.push(p);
        }
        out
    }

    fn connect(
        broker: &mut Broker,
        client_id: &str,
        credentials: Option<(&str, &'static [u8])>,
    ) -> (Conn, ReasonCode) {
        let id = broker.accept(Instant::from_secs(1), PeerInfo::default()).unwrap();
        let mut conn = Conn {
            id,
            decoder: Decoder::new(Some(ProtocolVersion::V5), u32::MAX),
            input: BytesMut::new(),
        };
        let mut c = Connect::new(ProtocolVersion::V5, MqttStr::new(client_id).unwrap());
        if let Some((user, password)) = credentials {
            c.username = Some(MqttStr::new(user).unwrap());
            c.password = Some(Bytes::from_static(password));
        }
        send(broker, &conn, Packet::Connect(Box::new(c)));
        match recv(broker, &mut conn).first() {
            Some(Packet::ConnAck(ack)) => {
                let code = ack.reason_code;
                (conn, code)
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    #[test]
    fn the_broker_uses_both_files() {
        let mut passwords = PasswordFile::parse(MOSQUITTO_FILE, "pw").unwrap();
        passwords.set_allow_anonymous(false);
        let acl = AclFile::parse(ACL, "acl").unwrap();
        let mut config = BrokerConfig::default();
        config.authenticator = Some(Arc::new(passwords));
        config.authorizer = Some(Arc::new(acl));
        let mut broker = Broker::new(config, Instant::from_secs(1)).unwrap();

        let (_, code) = connect(&mut broker, "c1", Some(("alice", b"wrong")));
        assert_eq!(code, ReasonCode::BadUserNameOrPassword);
        let (_, code) = connect(&mut broker, "c2", None);
        assert_eq!(code, ReasonCode::NotAuthorized);
        let (mut alice, code) = connect(&mut broker, "c3", Some(("alice", b"secret")));
        assert_eq!(code, ReasonCode::Success);

        let filters = ["sensors/kitchen/+", "sensors/#", "$share/g/sensors/kitchen/#", "public/#"];
        let subscribe = Subscribe {
            packet_id: PacketId::new(1).unwrap(),
            subscriptions: filters
                .iter()
                .map(|f| Subscription {
                    filter: TopicFilter::new(f).unwrap(),
                    options: SubscriptionOptions::qos(QoS::AtLeastOnce),
                })
                .collect(),
            properties: Default::default(),
        };
        send(&mut broker, &alice, Packet::Subscribe(subscribe));
        match recv(&mut broker, &mut alice).first() {
            Some(Packet::SubAck(ack)) => assert_eq!(
                ack.reason_codes,
                [
                    ReasonCode::GrantedQoS1,
                    ReasonCode::GrantedQoS1,
                    ReasonCode::GrantedQoS1,
                    ReasonCode::NotAuthorized
                ]
            ),
            other => panic!("expected SUBACK, got {other:?}"),
        }
        let publish = |topic: &str, id: u16| {
            let mut p = Publish::new(TopicName::new(topic).unwrap(), Bytes::from_static(b"x"));
            p.qos = QoS::AtLeastOnce;
            p.packet_id = PacketId::new(id);
            Packet::Publish(p)
        };
        send(&mut broker, &alice, publish("logs/alice", 2));
        send(&mut broker, &alice, publish("weather", 3));
        let acks: Vec<(u16, ReasonCode)> = recv(&mut broker, &mut alice)
            .into_iter()
            .filter_map(|p| match p {
                Packet::PubAck(PubAck { packet_id, reason_code, .. }) => {
                    Some((packet_id.get(), reason_code))
                }
                _ => None,
            })
            .collect();
        assert_eq!(acks.len(), 2, "{acks:?}");
        assert_ne!(acks[0].1, ReasonCode::NotAuthorized, "{acks:?}");
        assert_eq!(acks[1], (3, ReasonCode::NotAuthorized));

        // `sensors/#` was granted over a deny line: what it delivers is checked per message.
        // Bob may write nowhere, so the broker publishes as a client with a wide grant.
        let mut config = BrokerConfig::default();
        let acl = AclFile::parse("topic readwrite #\ntopic deny secret/#\n", "acl").unwrap();
        config.authorizer = Some(Arc::new(acl));
        let mut broker = Broker::new(config, Instant::from_secs(1)).unwrap();
        let (mut sub, _) = connect(&mut broker, "sub", None);
        let subscribe = Subscribe {
            packet_id: PacketId::new(1).unwrap(),
            subscriptions: vec![Subscription {
                filter: TopicFilter::new("#").unwrap(),
                options: SubscriptionOptions::qos(QoS::AtLeastOnce),
            }],
            properties: Default::default(),
        };
        send(&mut broker, &sub, Packet::Subscribe(subscribe));
        recv(&mut broker, &mut sub);
        let (mut publisher, _) = connect(&mut broker, "pub", None);
        send(&mut broker, &publisher, publish("open/x", 1));
        send(&mut broker, &publisher, publish("secret/x", 2));
        let acks = recv(&mut broker, &mut publisher);
        let denied = acks
            .iter()
            .any(|p| matches!(p, Packet::PubAck(a) if a.reason_code == ReasonCode::NotAuthorized));
        assert!(denied, "publishing to secret/x is denied too: {acks:?}");
        let topics: Vec<String> = recv(&mut broker, &mut sub)
            .into_iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => Some(p.topic.as_str().to_owned()),
                _ => None,
            })
            .collect();
        assert_eq!(topics, ["open/x"]);
    }
}

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

mod acl;
mod edit;
mod password;
#[cfg(test)]
mod tests;

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

pub use acl::AclFile;
pub use edit::{create_password_file, delete_user, set_password};
pub use password::{PasswordFile, hash_password};

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

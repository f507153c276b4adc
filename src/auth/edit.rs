//! Editing password files in place, as `ternmq passwd` does: atomically, keeping other lines.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::password::*;
use super::*;

/// [`hash_password`] with a salt from the operating system's generator.
pub(super) fn hash_password_os(password: &[u8], path: &Path) -> Result<String, FileError> {
    let mut salt = [0; SALT_LEN];
    getrandom::fill(&mut salt).map_err(|e| FileError::io(path, io::Error::other(e)))?;
    Ok(pbkdf2_entry(password, &salt, DEFAULT_ITERATIONS))
}

/// Checks that `user` can be written to a password file and read back as the same name.
pub(super) fn check_user(user: &str) -> Result<(), FileError> {
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
pub(super) fn edit_entries(text: &str, user: &str, entry: Option<&str>) -> (String, bool) {
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
pub(super) fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), FileError> {
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
pub(super) fn write_and_rename(
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

//! `ternmq passwd`: manages password files in Mosquitto's format, with the flags of
//! `mosquitto_passwd`.

use std::io::{BufRead, IsTerminal};
use std::path::Path;

use ternmq::auth::{self, FileError};

const USAGE: &str = "\
usage: ternmq passwd [-c | -D] FILE USER
       ternmq passwd [-c] -b FILE USER PASSWORD

Adds a user to a password file in Mosquitto's format, changes its password, or deletes it.
The broker's password_file option and Mosquitto read the file. Passwords are stored as
PBKDF2-HMAC-SHA512 hashes ($7$, mosquitto_passwd's default), never as plain text; the other
lines of the file are kept as they are.

Without -b the password is asked for twice on the terminal; when standard input is not a
terminal, one line is read from it instead.

options:
  -b                 batch mode: take the password from the command line (other users of the
                     machine may see it in the process list)
  -c                 create the file, replacing any file that is there
  -D                 delete USER from the file
  -H sha512-pbkdf2   the hash to write: the only one offered (Mosquitto 1.x's sha512 is read
                     by the broker but not written)
  -h, --help         print this help";

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    Help,
    Set { file: String, user: String, password: Option<String>, create: bool },
    Delete { file: String, user: String },
}

fn parse(args: &[String]) -> Result<Command, String> {
    let (mut batch, mut create, mut delete) = (false, false, false);
    let mut positional = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        // As with mosquitto_passwd, options come first: after FILE everything is positional,
        // so a password may start with '-'.
        if !positional.is_empty() {
            positional.push(arg.clone());
            continue;
        }
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-b" => batch = true,
            "-c" => create = true,
            "-D" => delete = true,
            "-H" => match it.next().map(String::as_str) {
                Some("sha512-pbkdf2") => {}
                Some("sha512") => {
                    return Err(
                        "ternmq passwd: -H sha512 is not offered: it is one unsalted-round \
                                SHA-512; use the default, sha512-pbkdf2"
                            .into(),
                    );
                }
                Some(other) => {
                    return Err(format!(
                        "ternmq passwd: -H: unknown hash {other:?}; use sha512-pbkdf2"
                    ));
                }
                None => return Err("ternmq passwd: -H needs a value: sha512-pbkdf2".into()),
            },
            "-U" => {
                return Err("ternmq passwd: -U (hashing a plain-text file) is not offered; add \
                            the users again with ternmq passwd"
                    .into());
            }
            "--" => {
                positional.extend(it.by_ref().cloned());
            }
            flag if flag.starts_with('-') && flag.len() > 1 => {
                return Err(format!("ternmq passwd: unknown option {flag:?}\n\n{USAGE}"));
            }
            _ => positional.push(arg.clone()),
        }
    }
    if create && delete {
        return Err("ternmq passwd: -c and -D cannot be used together".into());
    }
    if delete && batch {
        return Err("ternmq passwd: -D takes no password; use -D FILE USER".into());
    }
    let expected = if batch { 3 } else { 2 };
    if positional.len() != expected {
        let what = if batch { "FILE USER PASSWORD" } else { "FILE USER" };
        return Err(format!("ternmq passwd: expected {what}\n\n{USAGE}"));
    }
    let mut positional = positional.into_iter();
    let (Some(file), Some(user)) = (positional.next(), positional.next()) else {
        return Err(USAGE.into());
    };
    if delete {
        return Ok(Command::Delete { file, user });
    }
    Ok(Command::Set { file, user, password: positional.next(), create })
}

/// Runs `ternmq passwd` with the arguments after `passwd`.
pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let describe = |e: FileError| match e {
        FileError::Io { ref path, ref source } if source.kind() == std::io::ErrorKind::NotFound => {
            format!("ternmq passwd: {} does not exist (use -c to create it)", path.display())
        }
        e => format!("ternmq passwd: {e}"),
    };
    match parse(args)? {
        Command::Help => {
            say!("{USAGE}");
            Ok(())
        }
        Command::Delete { file, user } => auth::delete_user(&file, &user).map_err(describe),
        Command::Set { file, user, password, create } => {
            // Check before asking for a password, as mosquitto_passwd does.
            if !create && !Path::new(&file).exists() {
                return Err(format!("ternmq passwd: {file} does not exist (use -c to create it)"));
            }
            let password = match password {
                Some(p) => p,
                None => read_password()?,
            };
            if create {
                auth::create_password_file(&file, &user, &password).map_err(describe)
            } else {
                auth::set_password(&file, &user, &password).map_err(describe)
            }
        }
    }
}

/// The new password: asked for twice on the terminal, or one line of standard input.
fn read_password() -> Result<String, String> {
    let password = if std::io::stdin().is_terminal() {
        let ask = |prompt| {
            rpassword::prompt_password(prompt)
                .map_err(|e| format!("ternmq passwd: cannot read the password: {e}"))
        };
        let first = ask("Password: ")?;
        let again = ask("Reenter password: ")?;
        if first != again {
            return Err("ternmq passwd: the passwords do not match".into());
        }
        first
    } else {
        let mut line = String::new();
        let n = std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("ternmq passwd: cannot read the password: {e}"))?;
        if n == 0 {
            return Err("ternmq passwd: no password on standard input".into());
        }
        let trimmed = line.strip_suffix('\n').unwrap_or(&line);
        trimmed.strip_suffix('\r').unwrap_or(trimmed).to_owned()
    };
    if password.is_empty() {
        return Err("ternmq passwd: empty password".into());
    }
    Ok(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn parses_the_mosquitto_passwd_forms() {
        assert_eq!(parse(&args(&["--help"])), Ok(Command::Help));
        assert_eq!(
            parse(&args(&["-c", "f", "u"])),
            Ok(Command::Set { file: "f".into(), user: "u".into(), password: None, create: true })
        );
        assert_eq!(
            parse(&args(&["-b", "f", "u", "p"])),
            Ok(Command::Set {
                file: "f".into(),
                user: "u".into(),
                password: Some("p".into()),
                create: false
            })
        );
        assert_eq!(
            parse(&args(&["-H", "sha512-pbkdf2", "-c", "-b", "f", "u", "p"])),
            Ok(Command::Set {
                file: "f".into(),
                user: "u".into(),
                password: Some("p".into()),
                create: true
            })
        );
        assert_eq!(
            parse(&args(&["-D", "f", "u"])),
            Ok(Command::Delete { file: "f".into(), user: "u".into() })
        );
        // A password starting with '-' after the file.
        assert_eq!(
            parse(&args(&["-b", "f", "u", "-secret"])),
            Ok(Command::Set {
                file: "f".into(),
                user: "u".into(),
                password: Some("-secret".into()),
                create: false
            })
        );
    }

    #[test]
    fn refuses_bad_command_lines() {
        for bad in [
            &["-c", "-D", "f", "u"][..],
            &["-D", "-b", "f", "u", "p"],
            &["f"],
            &["f", "u", "p"],
            &["-b", "f", "u"],
            &["-H", "sha512", "f", "u"],
            &["-H"],
            &["-U", "f"],
            &["-x", "f", "u"],
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad:?}");
        }
    }
}

//! Password files shared with Mosquitto, both ways: files `mosquitto_passwd` writes are read by
//! `ternmq::auth::PasswordFile`, and a file `ternmq passwd` writes is used by a real Mosquitto
//! broker on a free 127.0.0.1 port.
//!
//! Without Mosquitto's programs the tests print that they were skipped, unless
//! `TERNMQ_REQUIRE_INTEROP` is set (as `scripts/test.sh` does), where a missing peer is a
//! failure.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use ternmq::auth::PasswordFile;

const MOSQUITTO_PASSWD: &str = "/usr/bin/mosquitto_passwd";

fn required() -> bool {
    std::env::var_os("TERNMQ_REQUIRE_INTEROP").is_some()
}

/// Whether `program` can be run; prints that the test is skipped when it cannot (and fails
/// when the peers are required).
fn have(program: &str) -> bool {
    let found = Command::new(program)
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(!required(), "{program} is required (TERNMQ_REQUIRE_INTEROP is set) but missing");
        eprintln!("skipped: {program} not installed (scripts/test.sh installs it)");
    }
    found
}

/// A scratch directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "ternmq-passwd-{name}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn ternmq_passwd(args: &[&str], stdin: Option<&str>) -> Output {
    let mut all = vec!["passwd"];
    all.extend_from_slice(args);
    run(env!("CARGO_BIN_EXE_ternmq"), &all, stdin)
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn password_files_written_by_mosquitto_passwd_are_verified() {
    if !have(MOSQUITTO_PASSWD) {
        return;
    }
    let dir = TempDir::new("read");
    let file = dir.path("passwords");
    let f = file.to_str().unwrap();
    // The default ($7$, PBKDF2-HMAC-SHA512) and Mosquitto 1.x's ($6$, salted SHA-512).
    ok(&run(MOSQUITTO_PASSWD, &["-c", "-b", f, "alice", "s3cret pw"], None), "-c -b");
    ok(&run(MOSQUITTO_PASSWD, &["-H", "sha512", "-b", f, "bob", "hunter2"], None), "-H sha512");
    ok(&run(MOSQUITTO_PASSWD, &["-b", f, "carol", "x:y$z"], None), "-b");
    let written = text(&file);
    assert!(written.contains("alice:$7$"), "{written}");
    assert!(written.contains("bob:$6$"), "{written}");

    let passwords = PasswordFile::load(&file).unwrap();
    assert!(passwords.verify("alice", "s3cret pw"));
    assert!(passwords.verify("bob", "hunter2"));
    assert!(passwords.verify("carol", "x:y$z"));
    assert!(!passwords.verify("alice", "s3cret"));
    assert!(!passwords.verify("bob", "hunter3"));
    assert!(!passwords.verify("dave", "hunter2"));

    // A separate file with -H sha512 from the start.
    let legacy = dir.path("legacy");
    let l = legacy.to_str().unwrap();
    ok(&run(MOSQUITTO_PASSWD, &["-H", "sha512", "-c", "-b", l, "erin", "pw"], None), "-H -c");
    assert!(PasswordFile::load(&legacy).unwrap().verify("erin", "pw"));

    // ternmq passwd edits the file mosquitto_passwd wrote and leaves the other entries be.
    ok(&ternmq_passwd(&["-b", f, "dave", "new one"], None), "ternmq passwd -b");
    let after = text(&file);
    for line in written.lines() {
        assert!(after.contains(line), "{line} was changed:\n{after}");
    }
    let passwords = PasswordFile::load(&file).unwrap();
    assert!(passwords.verify("dave", "new one") && passwords.verify("bob", "hunter2"));
}

#[test]
fn mosquitto_accepts_a_file_written_by_ternmq_passwd() {
    if !have("mosquitto_pub") {
        return;
    }
    let dir = TempDir::new("broker");
    let file = dir.path("passwords");
    let f = file.to_str().unwrap();
    ok(&ternmq_passwd(&["-c", "-b", f, "alice", "right pw"], None), "-c -b");
    // Standard input that is not a terminal: one line.
    ok(&ternmq_passwd(&[f, "bob"], Some("bob's pw\n")), "password from stdin");
    ok(&ternmq_passwd(&["-b", f, "carol", "gone"], None), "-b");
    ok(&ternmq_passwd(&["-D", f, "carol"], None), "-D");
    let written = text(&file);
    assert!(!written.contains("right pw") && !written.contains("bob's pw"), "{written}");
    assert!(written.lines().all(|l| l.contains(":$7$101$")), "{written}");
    assert_eq!(written.lines().count(), 2, "{written}");

    // The file is created readable by its owner only; Mosquitto, started as root, reads it
    // after switching to its own user, so let that user read it.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let config = format!("allow_anonymous false\npassword_file {f}\n");
    let Some(broker) = support::Broker::start_with(&config) else {
        return;
    };
    let port = broker.port.to_string();
    let publish = |user: Option<(&str, &str)>| {
        let mut args = vec!["-h", "127.0.0.1", "-p", &port, "-t", "ternmq/passwd", "-m", "hi"];
        if let Some((u, p)) = user {
            args.extend_from_slice(&["-u", u, "-P", p]);
        }
        run("mosquitto_pub", &args, None)
    };
    ok(&publish(Some(("alice", "right pw"))), "alice with the right password");
    ok(&publish(Some(("bob", "bob's pw"))), "bob with the right password");
    for (user, why) in [
        (Some(("alice", "wrong")), "a wrong password"),
        (Some(("alice", "right p")), "a prefix of the password"),
        (Some(("carol", "gone")), "a deleted user"),
        (None, "no user name"),
    ] {
        let out = publish(user);
        assert!(!out.status.success(), "Mosquitto accepted {why}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("not authorised"), "{why}: {err}");
    }
}

#[test]
fn ternmq_passwd_refuses_what_mosquitto_passwd_refuses() {
    let dir = TempDir::new("cli");
    let file = dir.path("passwords");
    let f = file.to_str().unwrap();
    // No file without -c.
    let out = ternmq_passwd(&["-b", f, "alice", "pw"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("use -c"));
    assert!(!file.exists());
    // A ':' in the user name would not read back.
    let out = ternmq_passwd(&["-c", "-b", f, "a:b", "pw"], None);
    assert!(!out.status.success());
    assert!(!file.exists());
    // An empty password on standard input, and no password at all.
    assert!(!ternmq_passwd(&["-c", f, "alice"], Some("\n")).status.success());
    assert!(!ternmq_passwd(&["-c", f, "alice"], Some("")).status.success());
    assert!(!file.exists());
    ok(&ternmq_passwd(&["-c", f, "alice"], Some("pw\r\n")), "-c with stdin");
    assert!(PasswordFile::load(&file).unwrap().verify("alice", "pw"));
    // Deleting a user who is not there fails and leaves the file alone.
    let before = text(&file);
    let out = ternmq_passwd(&["-D", f, "nobody"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nobody"));
    assert_eq!(text(&file), before);
    // Help goes to stdout and succeeds.
    let out = ternmq_passwd(&["--help"], None);
    ok(&out, "--help");
    assert!(String::from_utf8_lossy(&out.stdout).contains("usage: ternmq passwd"));
}

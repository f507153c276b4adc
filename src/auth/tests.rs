//! Tests of the password and ACL files, alone and through the broker.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use super::acl::*;
use super::edit::*;
use super::password::*;
use super::*;
use base64::Engine as _;
use sha2::{Digest, Sha512};
use std::convert::Infallible;
use std::process::Command;
use std::sync::Arc;
use ternmq_core::broker::{Action, AuthDecision};
use ternmq_core::codec::{MqttStr, ReasonCode};
use ternmq_core::topic::TopicFilter;

use bytes::{Bytes, BytesMut};
use ternmq_core::broker::{Broker, BrokerConfig, ConnId, PeerInfo};
use ternmq_core::codec::{
    Connect, Decoder, Encoder, Packet, PacketId, ProtocolVersion, PubAck, Publish, QoS, Subscribe,
    Subscription, SubscriptionOptions,
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
    let text =
        format!("# users\r\n\r\n   \n  # indented comment\n  dave  :  {entry}  \r\nerin:{entry}");
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
    assert_eq!(out[..8], [0x86, 0x7f, 0x70, 0xcf, 0x1a, 0xde, 0x02, 0xcf], "{:02x?}", &out[..8]);
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

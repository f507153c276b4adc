//! Test support: a private Mosquitto broker on a free loopback port.
//!
//! Without a `mosquitto` binary, [`Broker::start`] returns `None` (the test prints that it was
//! skipped) unless `TERNMQ_REQUIRE_INTEROP` is set, as `scripts/test.sh` does; then a missing
//! peer fails the test.

#![allow(dead_code, clippy::unwrap_used)]

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration as StdDuration, Instant as StdInstant};

fn mosquitto_binary() -> Option<PathBuf> {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto", "/usr/local/sbin/mosquitto"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// A private Mosquitto, killed on drop.
pub(crate) struct Broker {
    child: Child,
    /// The loopback port it listens on.
    pub(crate) port: u16,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Broker {
    /// Starts a broker on a free port.
    pub(crate) fn start() -> Option<Broker> {
        Self::start_with("allow_anonymous true\n")
    }

    /// Starts a broker on a free port with `config` appended to its listener line.
    pub(crate) fn start_with(config: &str) -> Option<Broker> {
        let Some(bin) = mosquitto_binary() else {
            assert!(
                std::env::var_os("TERNMQ_REQUIRE_INTEROP").is_none(),
                "mosquitto is required (TERNMQ_REQUIRE_INTEROP is set) but not installed"
            );
            eprintln!("skipped: mosquitto not installed (scripts/test.sh installs it)");
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Self::start_on(&bin, port, config)
    }

    fn start_on(bin: &std::path::Path, port: u16, config: &str) -> Option<Broker> {
        let dir = std::env::temp_dir().join(format!("ternmq-mosq-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(&conf, format!("listener {port} 127.0.0.1\npersistence false\n{config}"))
            .unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let broker = Broker { child, port, _dir: TempDir(dir) };
        let deadline = StdInstant::now() + StdDuration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(StdInstant::now() < deadline, "mosquitto did not start on port {port}");
            std::thread::sleep(StdDuration::from_millis(20));
        }
        Some(broker)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Broker {
    /// Kills the broker (as a crash would) and starts a new one on the same port.
    pub(crate) fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let bin = mosquitto_binary().unwrap();
        let mut fresh = Broker::start_on(&bin, self.port, "allow_anonymous true\n").unwrap();
        std::mem::swap(self, &mut fresh);
    }
}

/// The path of example `name`, built if `cargo test` did not build it (as with `--test X`).
pub(crate) fn example_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let examples = exe.parent().unwrap().parent().unwrap().join("examples");
    let bin = examples.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "--example", name]);
        if examples.parent().is_some_and(|p| p.ends_with("release")) {
            build.arg("--release");
        }
        assert!(build.status().unwrap().success(), "could not build the {name} example");
    }
    bin
}

//! A broker with custom authentication that needs I/O: the synchronous hook in the core answers
//! `Defer`, and an `AsyncAuthenticator` decides on a task (here a pretend database lookup that
//! takes 20 ms). Users: `alice`/`wonderland` and `bob`/`builder`; anyone else is refused with
//! 0x86 (3.1.1: 4, bad user name or password).
//!
//! ```sh
//! cargo run --example custom_auth -- [--port 1883] [--seconds N]
//! mosquitto_pub -p 1883 -u alice -P wonderland -t hello -m world
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ternmq::broker::{AuthDecision, AuthRequest, Authenticator};
use ternmq::codec::ReasonCode;
use ternmq::tokio::server::AuthFuture;
use ternmq::tokio::{AsyncAuthenticator, Server, ServerConfig};

/// Every decision goes to the async side.
struct AskTheDatabase;

impl Authenticator for AskTheDatabase {
    fn authenticate(&self, _: &AuthRequest) -> AuthDecision {
        AuthDecision::Defer
    }
}

/// A pretend user database behind an async call.
struct Database {
    users: BTreeMap<&'static str, &'static [u8]>,
}

impl AsyncAuthenticator for Database {
    fn authenticate(&self, request: AuthRequest) -> AuthFuture {
        let known = request
            .username
            .as_ref()
            .and_then(|u| self.users.get(u.as_str()))
            .is_some_and(|pw| request.password.as_deref() == Some(*pw));
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(20)).await; // the round trip
            if known {
                AuthDecision::Allow
            } else {
                AuthDecision::Deny(ReasonCode::BadUserNameOrPassword)
            }
        })
    }
}

const USAGE: &str = "\
usage: custom_auth [--port PORT] [--seconds N]

An MQTT broker on 127.0.0.1 (default port 1883) whose users (alice/wonderland,
bob/builder) are checked by an asynchronous authenticator, until Ctrl-C or for N seconds.";

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // In words (`connection refused by ...`), not the error's Debug form.
            eprintln!("custom_auth: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().skip(1).any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return Ok(());
    }
    let mut port = 1883u16;
    let mut seconds = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => port = args.next().ok_or("--port needs a value")?.parse()?,
            "--seconds" => seconds = Some(args.next().ok_or("--seconds needs a value")?.parse()?),
            other => return Err(format!("unknown option {other:?}").into()),
        }
    }
    let mut config = ServerConfig::new(([127, 0, 0, 1], port).into());
    config.broker.authenticator = Some(Arc::new(AskTheDatabase));
    let users = BTreeMap::from([("alice", &b"wonderland"[..]), ("bob", &b"builder"[..])]);
    config.async_authenticator = Some(Arc::new(Database { users }));

    let server = Server::bind(config).await?;
    println!("MQTT broker with custom auth listening on port {}", server.local_addrs()[0].port());
    let stop = server.shutdown_handle();
    tokio::spawn(async move {
        match seconds {
            Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        stop.shutdown();
    });
    server.run().await?;
    Ok(())
}

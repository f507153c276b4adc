//! The blocking client: connect, subscribe, publish, receive, disconnect.
//!
//! ```sh
//! cargo run --example sync_client -- --host 127.0.0.1 --port 1883
//! ```
//!
//! Connects, subscribes to `topic/#`, publishes `data` to `topic` at QoS 1, prints what comes
//! back, and disconnects.

use std::time::Duration;

use ternmq::blocking::{ConnectOptions, SyncClient};
use ternmq::codec::QoS;

const USAGE: &str = "\
usage: sync_client [--host HOST] [--port PORT]

Connects to an MQTT broker (default 127.0.0.1:1883), subscribes to topic/#, publishes
`data` to `topic` at QoS 1, prints what comes back, and disconnects.";

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // In words (`connection refused by ...`), not the error's Debug form.
            eprintln!("sync_client: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().skip(1).any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return Ok(());
    }
    let (host, port) = host_and_port()?;

    // Blocking connect.
    let client = SyncClient::connect(ConnectOptions::new(host, port))?;

    // Blocking subscribe.
    client.subscribe("topic/#", QoS::AtLeastOnce)?;

    // Set callback.
    client.on_message(|msg| {
        println!("Received: {}", String::from_utf8_lossy(&msg.payload));
    });

    // Blocking publish: returns once the broker acknowledged it.
    client.publish("topic", "data", QoS::AtLeastOnce)?;

    // Wait for the message to come back (the callback prints it too).
    let msg = client.recv_timeout(Duration::from_secs(10)).ok_or("no message within 10 s")?;
    println!("{} {}", msg.topic, String::from_utf8_lossy(&msg.payload));

    client.disconnect()?;
    Ok(())
}

/// `--host H --port P`, defaulting to 127.0.0.1:1883.
fn host_and_port() -> Result<(String, u16), String> {
    let (mut host, mut port) = ("127.0.0.1".to_string(), 1883u16);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--host" => host = args.next().ok_or("--host needs a value")?,
            "--port" => {
                let v = args.next().ok_or("--port needs a value")?;
                port = v.parse().map_err(|_| format!("--port: {v:?} is not a port number"))?;
            }
            other => return Err(format!("unknown argument {other:?}; use --host H --port P")),
        }
    }
    Ok((host, port))
}

//! The async client on smol: the `sync_client` example's steps, awaited.
//!
//! ```sh
//! cargo run --example smol_client -- --host 127.0.0.1 --port 1883
//! ```
//!
//! Connects, subscribes to `topic/#`, publishes `data` to `topic` at QoS 1, prints what comes
//! back, and disconnects. The client's driver task runs on smol's global executor; this program
//! only blocks on its own future.

use std::time::Duration;

use ternmq::codec::QoS;
use ternmq::smol::{Client, ConnectOptions};

const USAGE: &str = "\
usage: smol_client [--host HOST] [--port PORT]

The smol client: connects to an MQTT broker (default 127.0.0.1:1883), subscribes to
sensor/#, publishes 22.5 to sensor/temp at QoS 2, prints what comes back, and disconnects.";

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // In words (`connection refused by ...`), not the error's Debug form.
            eprintln!("smol_client: {e}");
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
    smol::block_on(async {
        let client = Client::connect(ConnectOptions::new(host, port)).await?;

        // Completes with the SUBACK.
        client.subscribe("topic/#", QoS::AtLeastOnce).await?;

        // Runs on the driver task for every message; it must not block.
        client.on_message(|msg| {
            println!("Received: {}", String::from_utf8_lossy(&msg.payload));
        });

        // Completes once the broker acknowledged it (PUBACK).
        client.publish("topic", "data", QoS::AtLeastOnce).await?;

        // Wait for the message to come back (the callback prints it too).
        let timeout = async {
            smol::Timer::after(Duration::from_secs(10)).await;
            None
        };
        let msg = smol::future::or(client.next_message(), timeout)
            .await
            .ok_or("no message within 10 s")?;
        println!("{} {}", msg.topic, String::from_utf8_lossy(&msg.payload));

        // Completes once the DISCONNECT is written.
        client.disconnect().await?;
        Ok(())
    })
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

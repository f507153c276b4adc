//! A broker embedded in a program: an MQTT broker started from code with `ternmq broker`'s
//! default options (persistence on), until Ctrl-C.
//!
//! ```sh
//! cargo run --example embedded_broker -- [--port 1883] [--data-dir ./mqtt_data] [--seconds N]
//! ```

use std::path::PathBuf;
use std::time::Duration;

use ternmq::codec::QoS;
use ternmq::tokio::{Durability, Server, ServerConfig, StoreConfig};

const USAGE: &str = "\
usage: embedded_broker [--port PORT] [--data-dir DIR] [--seconds N]

An MQTT broker started from code on 127.0.0.1 (default port 1883), with persistence in DIR
(default ./mqtt_data), until Ctrl-C or for N seconds.";

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // In words (`connection refused by ...`), not the error's Debug form.
            eprintln!("embedded_broker: {e}");
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
    let mut data_dir = PathBuf::from("./mqtt_data");
    let mut seconds = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => port = args.next().ok_or("--port needs a value")?.parse()?,
            "--data-dir" => data_dir = args.next().ok_or("--data-dir needs a value")?.into(),
            "--seconds" => seconds = Some(args.next().ok_or("--seconds needs a value")?.parse()?),
            other => return Err(format!("unknown option {other:?}").into()),
        }
    }

    let mut config = ServerConfig::new(([127, 0, 0, 1], port).into());
    config.broker.max_connections = 10_000;
    config.broker.max_packet_size = 256 * 1024;
    config.broker.session_expiry_interval = 3600; // seconds
    config.broker.max_qos = QoS::ExactlyOnce;
    config.broker.retain_available = true;
    config.broker.wildcard_subscription_available = true;
    config.broker.shared_subscription_available = true;
    // enable_persistence / persistence_path
    config.store = Some(StoreConfig { dir: data_dir, durability: Durability::Sync });

    let server = Server::bind(config).await?;
    println!("MQTT broker listening on port {}", server.local_addrs()[0].port());
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
    println!("stopped");
    Ok(())
}

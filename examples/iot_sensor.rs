//! An IoT sensor: publishes `{"temp":..}` readings at QoS 1 with a persistent session,
//! keeps a retained online status, and leaves a will that marks it offline if it vanishes. It
//! survives broker restarts through the client's automatic reconnect.
//!
//! ```sh
//! cargo run --example iot_sensor -- --host 127.0.0.1 --port 1883 [--count N] [--interval-ms MS]
//! ```

use std::time::Duration;

use ternmq::codec::{MqttStr, Publish, QoS, Will, WillProperties};
use ternmq::tokio::{Client, ConnectOptions};
use ternmq::topic::TopicName;

const STATUS: &str = "sensors/temp/001/status";

const USAGE: &str = "\
usage: iot_sensor [--host HOST] [--port PORT] [--count N] [--interval-ms MS]

A temperature sensor: publishes {\"temp\":..} readings to sensors/temp/001 at QoS 1 (every
10 s by default), keeps a retained online status and leaves a will that marks it offline.";

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // In words (`connection refused by ...`), not the error's Debug form.
            eprintln!("iot_sensor: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().skip(1).any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return Ok(());
    }
    let args = Args::parse()?;
    let mut options = ConnectOptions::new(args.host, args.port);
    options.connect.client_id = MqttStr::from_static("temp_sensor_001");
    options.connect.clean_start = false; // resume the session
    options.connect.properties.session_expiry_interval = Some(3600);
    options.connect.will = Some(Will {
        topic: TopicName::from_static(STATUS),
        payload: "offline".into(),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: WillProperties::default(),
    });
    let client = Client::connect(options).await?;
    let status = |text: &'static str| {
        let mut p = Publish::new(TopicName::from_static(STATUS), text);
        p.qos = QoS::AtLeastOnce;
        p.retain = true;
        p
    };
    client.publish_with(status("online")).await?;

    let mut n = 0u64;
    loop {
        let temp = read_temperature(n);
        let payload = format!("{{\"temp\":{temp:.1}}}");
        match client.publish("sensors/temp/001", payload, QoS::AtLeastOnce).await {
            Ok(_) => println!("reading {n}: {temp:.1}"),
            // While the broker is away the reading waits in the client's queue; a full queue
            // or a timeout is reported and the sensor goes on.
            Err(e) => eprintln!("reading {n} not confirmed: {e}"),
        }
        n += 1;
        if args.count.is_some_and(|c| n >= c) {
            break;
        }
        tokio::time::sleep(args.interval).await;
    }
    client.publish_with(status("offline")).await?;
    client.disconnect().await?;
    Ok(())
}

/// A stand-in for the hardware: a slow sine around 21.5 degrees.
fn read_temperature(n: u64) -> f64 {
    21.5 + (n as f64 / 10.0).sin()
}

struct Args {
    host: String,
    port: u16,
    count: Option<u64>,
    interval: Duration,
}

impl Args {
    fn parse() -> Result<Args, String> {
        let mut a = Args {
            host: "127.0.0.1".into(),
            port: 1883,
            count: None,
            interval: Duration::from_secs(10),
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let bad = |_| format!("{flag}: {value:?} is not a number");
            match flag.as_str() {
                "--host" => a.host = value,
                "--port" => a.port = value.parse().map_err(bad)?,
                "--count" => a.count = Some(value.parse().map_err(bad)?),
                "--interval-ms" => a.interval = Duration::from_millis(value.parse().map_err(bad)?),
                _ => return Err(format!("unknown argument {flag:?}")),
            }
        }
        Ok(a)
    }
}

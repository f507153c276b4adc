//! Command and control over MQTT, in two roles.
//!
//! - `--role controller`: subscribes to `devices/+/command`, acts on each command, publishes the
//!   device status from inside its async message handler, and answers MQTT 5 requests on their
//!   Response Topic with the request's Correlation Data.
//! - `--role device`: sends one command as an MQTT 5 request (Response Topic + Correlation Data)
//!   and prints the controller's response.
//!
//! ```sh
//! cargo run --example command_control -- --role controller --port 1883 &
//! cargo run --example command_control -- --role device --port 1883 --action turn_on
//! ```

use std::time::Duration;

use bytes::Bytes;
use ternmq::codec::{MqttStr, Publish, QoS};
use ternmq::tokio::{Client, ConnectOptions};
use ternmq::topic::TopicName;

const USAGE: &str = "\
usage: command_control [--role controller|device] [--host HOST] [--port PORT]
                       [--action ACTION]

controller (default): answers commands on devices/+/command and MQTT 5 requests.
device: sends one command (--action, default turn_on) as a request and prints the answer.";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // In words (`connection refused by ...`), not the error's Debug form.
            eprintln!("command_control: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().skip(1).any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return Ok(());
    }
    let (mut host, mut port, mut role, mut action) =
        ("127.0.0.1".to_string(), 1883u16, "controller".to_string(), "turn_on".to_string());
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--host" => host = value,
            "--port" => port = value.parse().map_err(|_| format!("--port: {value:?}"))?,
            "--role" => role = value,
            "--action" => action = value,
            _ => return Err(format!("unknown argument {flag:?}").into()),
        }
    }
    match role.as_str() {
        "controller" => controller(host, port).await,
        "device" => device(host, port, &action).await,
        other => Err(format!("--role: {other:?} is neither controller nor device").into()),
    }
}

async fn controller(host: String, port: u16) -> Result<(), Box<dyn std::error::Error>> {
    let mut options = ConnectOptions::new(host, port);
    options.connect.client_id = MqttStr::from_static("controller");
    let client = Client::connect(options).await?;
    client.subscribe("devices/+/command", QoS::AtLeastOnce).await?;
    let c = client.clone();
    client.on_message_async(move |msg| {
        let client = c.clone();
        async move {
            let command = String::from_utf8_lossy(&msg.payload).into_owned();
            // Parse the command: {"action":"turn_on"} or {"action":"turn_off"}.
            let status = if command.contains("\"turn_on\"") {
                "on"
            } else if command.contains("\"turn_off\"") {
                "off"
            } else {
                "unknown command"
            };
            let device = msg.topic.levels().nth(1).unwrap_or("?").to_string();
            let report = format!("{{\"device\":\"{device}\",\"status\":\"{status}\"}}");
            println!("{device}: {command} -> {status}");
            if let Err(e) = client.publish("devices/status", report.clone(), QoS::AtLeastOnce).await
            {
                eprintln!("status not published: {e}");
            }
            // MQTT 5 request/response: answer on the Response Topic with the Correlation Data.
            if let Some(reply_to) = msg.properties.response_topic.clone() {
                let mut reply = Publish::new(reply_to, report);
                reply.qos = QoS::AtLeastOnce;
                reply.properties.correlation_data = msg.properties.correlation_data.clone();
                if let Err(e) = client.publish_with(reply).await {
                    eprintln!("response not published: {e}");
                }
            }
        }
    });
    println!("controller ready");
    // Keep running for a day.
    tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
    Ok(())
}

async fn device(host: String, port: u16, action: &str) -> Result<(), Box<dyn std::error::Error>> {
    let mut options = ConnectOptions::new(host, port);
    options.connect.client_id = MqttStr::from_static("lamp");
    let client = Client::connect(options).await?;
    let reply_topic = TopicName::from_static("devices/lamp/reply");
    client.subscribe(reply_topic.as_str(), QoS::AtLeastOnce).await?;
    let mut request = Publish::new(
        TopicName::from_static("devices/lamp/command"),
        format!("{{\"action\":\"{action}\"}}"),
    );
    request.qos = QoS::AtLeastOnce;
    request.properties.response_topic = Some(reply_topic);
    request.properties.correlation_data = Some(Bytes::from_static(b"request-1"));
    client.publish_with(request).await?;
    let reply = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match client.next_message().await {
                Some(m) if m.properties.correlation_data.as_deref() == Some(b"request-1") => {
                    return Some(m);
                }
                Some(_) => continue,
                None => return None,
            }
        }
    })
    .await
    .map_err(|_| "no response within 10 s")?
    .ok_or("disconnected")?;
    println!("response: {}", String::from_utf8_lossy(&reply.payload));
    client.disconnect().await?;
    Ok(())
}

//! The `ternmq` command-line program.
//!
//! - `ternmq pub` and `ternmq sub`: publish and subscribe, typed as with mosquitto_pub/_sub.
//! - `ternmq decode`: decodes MQTT packets given in hex and prints them, with the same strict
//!   decoder the broker and client use.
//!
//! - `ternmq broker`: the MQTT broker.
//!
//! - `ternmq bench`: a load generator for any MQTT broker.
//!
//! - `ternmq passwd`: manages Mosquitto-compatible password files, as mosquitto_passwd does.

use std::process::ExitCode;

/// `println!` that cannot panic: when standard output is a closed pipe (`ternmq broker | head
/// -1`) or a full disk, the line is lost and the program carries on; the broker's shutdown must
/// never depend on its output.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `eprintln!` that cannot panic, as [`say!`] for standard error.
macro_rules! complain {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod bench;
mod bridge;
mod broker;
mod format;
mod limits;
mod operate;
mod passwd;
mod props;
mod pubsub;
mod signals;
mod store;
mod tls_flags;

use bytes::BytesMut;
use ternmq::codec::{Decoder, MAX_PACKET_SIZE, ProtocolVersion};

const USAGE: &str = "\
usage: ternmq <command> [options]

commands:
  pub -t TOPIC -m MSG [options]          publish (see `ternmq pub --help`)
  sub -t FILTER [options]                subscribe and print messages (see `ternmq sub --help`)
  decode [-V 311|5] [--server] HEX...   decode MQTT packets written in hex and print them
                                        (-V: version of the stream, default 5; --server: the
                                        stream starts with CONNECT, which fixes the version)
  broker [options]                       run the MQTT broker (see `ternmq broker --help`)
  bench [options]                        measure a broker (see `ternmq bench --help`)
  store check|repair|reset [--data-dir]  look after the broker's persistent store
  passwd [-c | -D] FILE USER             add a user to a password file, change its password or
                                         delete it (see `ternmq passwd --help`)

options:
  -h, --help       print this help
  --version        print the version";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None | Some("-h" | "--help" | "help") => {
            say!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some("--version") => {
            say!("ternmq {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("decode") => match decode(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                complain!("ternmq decode: {e}");
                ExitCode::FAILURE
            }
        },
        Some("pub") => match pubsub::publish(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                // Empty with --quiet.
                if !e.is_empty() {
                    complain!("{e}");
                }
                ExitCode::FAILURE
            }
        },
        Some("sub") => match pubsub::subscribe(&args[1..]) {
            Ok(status) => ExitCode::from(status),
            Err(e) => {
                if !e.is_empty() {
                    complain!("{e}");
                }
                ExitCode::FAILURE
            }
        },
        Some("broker") => match broker::run(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                complain!("{e}");
                ExitCode::FAILURE
            }
        },
        Some("store") => match store::run(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                complain!("{e}");
                ExitCode::FAILURE
            }
        },
        Some("bench") => match bench::run(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                complain!("{e}");
                ExitCode::FAILURE
            }
        },
        Some("passwd") => match passwd::run(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                complain!("{e}");
                ExitCode::FAILURE
            }
        },
        Some(other) => {
            complain!("ternmq: unknown command {other:?}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

const DECODE_USAGE: &str = "\
usage: ternmq decode [-V 311|5] [--server] HEX...

Decodes MQTT packets written in hex (spaces and colons ignored) with the decoder the broker and
clients use, and prints each packet with its offset.

  -V 311|5    the protocol version of the stream (default 5)
  --server    decode as a server: the stream starts with CONNECT, which fixes the version
  --help      print this help";

/// The Tokio runtime the broker and the load generator run on: one worker thread per CPU this
/// process may use, or, on one CPU, everything on the calling thread, since a second thread
/// there only adds a context switch to every hand-over between the broker core and the
/// connections.
fn tokio_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let mut builder = if cpus > 1 {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder.enable_all().build()
}

fn decode(args: &[String]) -> Result<(), String> {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        say!("{DECODE_USAGE}");
        return Ok(());
    }
    let mut version = Some(ProtocolVersion::V5);
    let mut hex = String::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-V" => {
                version = Some(match it.next().map(String::as_str) {
                    Some("311" | "mqttv311") => ProtocolVersion::V3_1_1,
                    Some("5" | "mqttv5") => ProtocolVersion::V5,
                    Some(v) => {
                        return Err(format!("-V: unknown protocol version {v:?}; use 311 or 5"));
                    }
                    None => return Err("-V needs a value: 311 or 5".into()),
                })
            }
            "--server" => version = None,
            _ => hex.push_str(a),
        }
    }
    let bytes = parse_hex(&hex)?;
    if bytes.is_empty() {
        return Err("no bytes given; pass the packets as hex, e.g. `ternmq decode c000`".into());
    }
    let mut decoder = Decoder::new(version, MAX_PACKET_SIZE);
    let mut buf = BytesMut::from(&bytes[..]);
    let mut offset = 0;
    loop {
        let before = buf.len();
        match decoder.decode(&mut buf) {
            Ok(Some(packet)) => {
                say!("@{offset}: {packet:#?}");
                offset += before - buf.len();
            }
            Ok(None) if buf.is_empty() => return Ok(()),
            Ok(None) => {
                return Err(format!(
                    "@{offset}: incomplete packet ({} bytes left over)",
                    buf.len()
                ));
            }
            Err(e) => {
                return Err(format!("@{offset}: {e} (reason code {})", e.reason_code()));
            }
        }
    }
}

fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace() && *b != b':').collect();
    if !digits.len().is_multiple_of(2) {
        return Err("odd number of hex digits".into());
    }
    digits
        .chunks(2)
        .map(|pair| {
            let text = std::str::from_utf8(pair).map_err(|_| "non-ASCII input".to_string())?;
            u8::from_str_radix(text, 16).map_err(|_| format!("{text:?} is not a hex byte"))
        })
        .collect()
}

//! `ternmq store`: look after the broker's persistent store.

use std::path::PathBuf;

use ternmq::store::{FILE_NAME, Store, wall_clock};

const USAGE: &str = "\
usage: ternmq store check|repair|reset [--data-dir DIR] [--yes]

  check    open the store read-only, read everything in it, and print what it holds
  repair   check the file's integrity and let redb repair what it can
  reset    move the store aside (to ternmq.redb.bak-MILLISECONDS) so that the broker starts empty;
           needs --yes. Nothing is deleted.

  --data-dir DIR   the broker's data directory (default ./mqtt_data)";

/// Runs `ternmq store`.
pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let mut command = None;
    let mut dir = PathBuf::from("./mqtt_data");
    let mut yes = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--help" | "-h" => {
                say!("{USAGE}");
                return Ok(());
            }
            "--data-dir" => {
                dir = it.next().ok_or("ternmq store: --data-dir needs a value")?.into();
            }
            "--yes" => yes = true,
            c @ ("check" | "repair" | "reset") if command.is_none() => {
                command = Some(c.to_string())
            }
            other => return Err(format!("ternmq store: unexpected {other:?}\n\n{USAGE}")),
        }
    }
    let file = dir.join(FILE_NAME);
    match command.as_deref() {
        Some("check") => {
            // Read-only: a mistyped --data-dir must not create an empty store and call it
            // readable, and a running broker's store is not touched.
            let store =
                Store::open_read_only(&dir).map_err(|e| format!("ternmq store check: {e}"))?;
            let snapshot = store.load(wall_clock()).map_err(|e| e.to_string())?;
            let [sessions, subs, deliveries, qos2, retained] =
                store.counts().map_err(|e| e.to_string())?;
            say!("{}: readable", file.display());
            say!(
                "  {sessions} sessions ({} not expired), {subs} subscriptions, {deliveries} \
                 queued or in-flight messages, {qos2} QoS 2 ids awaiting PUBREL, {retained} \
                 retained messages",
                snapshot.sessions.len()
            );
            Ok(())
        }
        Some("repair") => {
            if !file.exists() {
                return Err(format!("ternmq store repair: no store at {}", file.display()));
            }
            let mut store = Store::open(&dir).map_err(|e| e.to_string())?;
            let clean = store.check_integrity().map_err(|e| e.to_string())?;
            store.load(wall_clock()).map_err(|e| e.to_string())?;
            say!(
                "{}: {}",
                file.display(),
                if clean { "intact" } else { "repaired; run `ternmq store check` to see it" }
            );
            Ok(())
        }
        Some("reset") => {
            if !yes {
                return Err(format!(
                    "ternmq store reset: this sets aside every session and retained message in \
                     {}; run again with --yes to do it",
                    file.display()
                ));
            }
            if !file.exists() {
                say!("{}: no store here; nothing to do", file.display());
                return Ok(());
            }
            let aside = dir.join(format!("{FILE_NAME}.bak-{}", wall_clock()));
            std::fs::rename(&file, &aside)
                .map_err(|e| format!("ternmq store reset: cannot move {}: {e}", file.display()))?;
            say!("moved {} to {}; the broker will start empty", file.display(), aside.display());
            Ok(())
        }
        _ => Err(format!("ternmq store: say what to do\n\n{USAGE}")),
    }
}

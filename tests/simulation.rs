//! Deterministic simulation: the real client and broker state machines on a virtual clock and
//! a faulty network, over many seeds, with MQTT's delivery promises checked (see
//! `ternmq::sim::scenario` for the workload and the promises).
//!
//! `TERNMQ_SIM_SEEDS=N` sets how many seeds run (default 2,000; seeds `0..N`, or from
//! `TERNMQ_SIM_FIRST`). A failing seed prints its report and the command that replays it:
//! `TERNMQ_SIM_SEED=S cargo test --release --test simulation replay_one_seed -- --nocapture`
//! (`TERNMQ_SIM_TRACE=N` keeps the last N packets in its trace instead of 400).

#![cfg(feature = "sim")]
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ternmq::sim::scenario::{Outcome, ScenarioConfig, run};

/// How often a run of many seeds reports its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Runs `count` seeds from `first` on every core; returns the failing outcomes, by seed.
fn run_seeds(
    first: u64,
    count: u64,
    config: impl Fn(u64) -> ScenarioConfig + Sync,
) -> Vec<Outcome> {
    let next = AtomicU64::new(first);
    let done = AtomicU64::new(0);
    let failures = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let start = Instant::now();
    let last_report = Mutex::new(start);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= first + count {
                        break;
                    }
                    let outcome = run(&config(seed));
                    if !outcome.is_clean() {
                        failures.lock().unwrap().push(outcome);
                    }
                    let done = done.fetch_add(1, Ordering::Relaxed) + 1;
                    // Progress every 10 s, so that a long run does not look hung; written to the
                    // stream itself so that the test harness does not capture it.
                    let mut last = last_report.lock().unwrap();
                    if last.elapsed() >= PROGRESS_EVERY && done < count {
                        *last = Instant::now();
                        let failing = failures.lock().unwrap().len();
                        let _ = writeln!(
                            std::io::stderr(),
                            "simulation: {done} of {count} seeds done, {failing} failing, {} s",
                            start.elapsed().as_secs()
                        );
                    }
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap();
    failures.sort_by_key(|o| o.seed);
    failures
}

/// Many seeds of the scenario, each checking end to end what chapter 4 promises under faults:
/// every matching session gets an owned message, QoS 2 once, acknowledgements and releases in
/// order, per-publisher order on non-shared subscriptions, and no PUBLISH beyond the
/// receiver's quota.
/// 3.1.1: [MQTT-4.3.3-2] [MQTT-4.5.0-1] [MQTT-4.6.0-2] [MQTT-4.6.0-3] [MQTT-4.6.0-4]
/// [MQTT-4.6.0-6].
/// 5.0: [MQTT-4.3.3-10] [MQTT-4.5.0-1] [MQTT-4.6.0-2] [MQTT-4.6.0-3] [MQTT-4.6.0-4]
/// [MQTT-4.6.0-5] [MQTT-4.6.0-6] [MQTT-4.9.0-2].
#[test]
fn simulated_seeds_keep_every_promise() {
    let count = env_u64("TERNMQ_SIM_SEEDS", 2_000);
    let first = env_u64("TERNMQ_SIM_FIRST", 0);
    let failures = run_seeds(first, count, ScenarioConfig::new);
    for f in failures.iter().take(3) {
        eprintln!("{}", f.report());
    }
    let violations: usize = failures.iter().map(|f| f.violations.len()).sum();
    let seeds: Vec<u64> = failures.iter().map(|f| f.seed).collect();
    // Written to the stream itself so that the test harness does not capture it.
    let _ = writeln!(std::io::stderr(), "simulated {count} seeds, {violations} violations");
    assert!(failures.is_empty(), "failing seeds: {seeds:?}");
}

/// Replays the seed in `TERNMQ_SIM_SEED` with its whole report; does nothing without it.
#[test]
fn replay_one_seed() {
    let Some(seed) = std::env::var("TERNMQ_SIM_SEED").ok().and_then(|v| v.parse().ok()) else {
        return;
    };
    let mut config = ScenarioConfig::new(seed);
    config.trace_lines = env_u64("TERNMQ_SIM_TRACE", 400) as usize;
    let outcome = run(&config);
    println!("{}", outcome.report());
    println!(
        "seed {seed}: {} published, {} received, {} broker restarts",
        outcome.published, outcome.received, outcome.restarts
    );
    assert!(outcome.is_clean());
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let a = run(&ScenarioConfig::new(4242));
    let b = run(&ScenarioConfig::new(4242));
    assert_eq!(a.trace, b.trace);
    assert_eq!((a.published, a.received, a.restarts), (b.published, b.received, b.restarts));
    assert!(a.published > 100, "the workload published only {}", a.published);
    assert!(a.received > 100, "the subscribers received only {}", a.received);
    let c = run(&ScenarioConfig::new(4243));
    assert_ne!(a.trace, c.trace, "another seed must give another run");
}

/// The harness must be able to fail: with a bug planted in the broker (a resent QoS 2
/// PUBLISH delivered again), some seed within a bounded number finds a duplicate delivery.
#[cfg(feature = "planted-bugs")]
#[test]
fn a_planted_bug_is_found() {
    use ternmq::broker::PlantedBug;
    let found = Arc::new(Mutex::new(None));
    for chunk in 0..10u64 {
        let failures = run_seeds(chunk * 50, 50, |seed| {
            let mut c = ScenarioConfig::new(seed);
            c.broker.planted_bug = PlantedBug::RedeliverResentQos2;
            c
        });
        if let Some(f) = failures
            .into_iter()
            .find(|f| f.violations.iter().any(|v| v.contains("(delivered at QoS 2)")))
        {
            *found.lock().unwrap() = Some(f);
            break;
        }
    }
    let found = found.lock().unwrap().take();
    let f = found.expect("the planted bug went unnoticed in 500 seeds");
    println!("found in seed {}:\n{}", f.seed, f.report());
}

/// The session invariant must be able to fail: with a bug planted in the broker (a takeover
/// keeps a session with expiry 0 for the new connection, [MQTT-3.1.2-6], 5.0 section
/// 3.1.2.11.2), some seed within a bounded number sees a subscription outlive its session.
#[cfg(feature = "planted-bugs")]
#[test]
fn a_planted_takeover_bug_is_found() {
    use ternmq::broker::PlantedBug;
    let mut found = None;
    for chunk in 0..10u64 {
        let failures = run_seeds(chunk * 50, 50, |seed| {
            let mut c = ScenarioConfig::new(seed);
            c.broker.planted_bug = PlantedBug::TakeoverRevivesSession;
            c
        });
        if let Some(f) = failures.into_iter().find(|f| {
            f.violations.iter().any(|v| {
                v.contains("outlived its session")
                    || v.contains("its previous session had expiry 0")
            })
        }) {
            found = Some(f);
            break;
        }
    }
    let f = found.expect("the planted takeover bug went unnoticed in 500 seeds");
    println!("found in seed {}:\n{}", f.seed, f.report());
}

/// Seeds that found bugs while the harness was built; each broke a promise before its fix:
/// 18 (a 3.1.1 publisher disconnected for a Receive Maximum it was never told), 4641 and 7870
/// (duplicate QoS 2 deliveries after a broker restart: PUBREL sent before the store had the
/// PUBREC; a publish's operations committed in part), 7870 also (withheld PUBRECs counted
/// twice against Receive Maximum), 19879 (an expired session resumed after a clock jump), and
/// 170, 2624, 3269, 8451 (scenario bugs: the model's, not the broker's). The workload has
/// grown since, so these seeds no longer replay those runs; each broker bug is also pinned by
/// a test in `core/tests`.
#[test]
fn seeds_that_found_bugs_stay_fixed() {
    for seed in [18, 170, 2624, 3269, 4641, 7870, 8451, 19879] {
        let outcome = run(&ScenarioConfig::new(seed));
        assert!(outcome.is_clean(), "{}", outcome.report());
    }
}

/// Two brokers joined by a bridge whose link is reset at random and whose dials fail at
/// random, with QoS 1 and 2 load both ways (see `ternmq::sim::bridge`): every acknowledged
/// message reaches the other side, QoS 2 exactly once, and nothing comes back (no loop).
/// `TERNMQ_SIM_BRIDGE_SEEDS=N` sets how many seeds run (default 400).
#[test]
fn bridged_brokers_keep_every_promise() {
    let count = env_u64("TERNMQ_SIM_BRIDGE_SEEDS", 400);
    let mut failing = Vec::new();
    let (mut acknowledged, mut resets, mut crashes) = (0, 0, 0);
    for seed in 0..count {
        let outcome = ternmq::sim::bridge::run(seed, 150);
        acknowledged += outcome.acknowledged;
        resets += outcome.resets;
        crashes += outcome.crashes;
        assert!(outcome.acknowledged > 0, "seed {seed}: nothing was acknowledged");
        if !outcome.violations.is_empty() {
            eprintln!("seed {seed}: {:#?}", &outcome.violations[..outcome.violations.len().min(5)]);
            failing.push(seed);
        }
    }
    let _ = writeln!(
        std::io::stderr(),
        "bridge: {count} seeds, {acknowledged} acknowledged messages, {resets} link resets, {crashes} crashes"
    );
    assert!(failing.is_empty(), "failing seeds: {failing:?}");
}

/// Three cluster nodes over a simulated backplane (see `ternmq::sim::cluster`), the
/// publishers' node crashing at random and a client roaming between nodes: every acknowledged
/// message reaches the subscriber on another node, QoS 2 exactly once, each shared-group
/// message reaches one member across the nodes, a roaming client's older connections are
/// taken over, and a subscriber whose node died gets every message on the node that took its
/// session from the dead node's mirrored log; with another node cut off from the backplane now
/// and then. `TERNMQ_SIM_CLUSTER_SEEDS=N` sets how many seeds run (default 300).
#[test]
fn clustered_brokers_keep_every_promise() {
    let count = env_u64("TERNMQ_SIM_CLUSTER_SEEDS", 300);
    let mut failing = Vec::new();
    let (mut acknowledged, mut shared, mut crashes, mut takeovers, mut moves) = (0, 0, 0, 0, 0);
    let (mut adoptions, mut castaway, mut partitions) = (0, 0, 0);
    for seed in 0..count {
        let outcome = ternmq::sim::cluster::run(seed, 150);
        acknowledged += outcome.acknowledged;
        shared += outcome.shared;
        crashes += outcome.crashes;
        takeovers += outcome.takeovers;
        moves += outcome.moves;
        adoptions += outcome.adoptions;
        castaway += outcome.castaway;
        partitions += outcome.partitions;
        assert!(outcome.acknowledged > 0, "seed {seed}: nothing was acknowledged");
        if !outcome.violations.is_empty() {
            eprintln!("seed {seed}: {:#?}", &outcome.violations[..outcome.violations.len().min(5)]);
            failing.push(seed);
        }
    }
    eprintln!(
        "{count} cluster seeds: {acknowledged} acknowledged, {shared} to the shared group, \
         {crashes} crashes, {takeovers} takeovers, {moves} sessions moved, {adoptions} \
         sessions taken from a dead node's log ({castaway} messages to it), {partitions} \
         partitions"
    );
    assert!(
        crashes > 0 && takeovers > 0 && shared > 0 && moves > 0 && adoptions > 0 && partitions > 0,
        "the faults, the group and the moves were exercised"
    );
    assert!(failing.is_empty(), "failing seeds: {failing:?}");
}

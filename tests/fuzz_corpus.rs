//! Replays the fuzzing corpus checked in under `fuzz/corpus/decode` through the same oracle the
//! fuzz target uses, so every CI run exercises it without a fuzzer.

#![allow(clippy::unwrap_used)]

#[path = "../fuzz/src/decode_check.rs"]
mod decode_check;

#[test]
fn fuzz_corpus_holds_the_decode_oracle() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/decode");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        decode_check::check(&data);
        // Every split point and every mode too.
        for mode in [0u8, 1, 2, 0x80, 0x81, 0x82] {
            for split in 0..=data.len().min(255) {
                let mut d = data.clone();
                if d.len() >= 2 {
                    d[0] = mode;
                    d[1] = split as u8;
                }
                decode_check::check(&d);
            }
        }
        n += 1;
    }
    assert!(n >= 6, "corpus has only {n} inputs");
}

#[test]
fn corpus_seeds_decode_to_packets() {
    // The seeds are meant to be valid streams: make sure they stay meaningful as the codec
    // changes (a seed that no longer decodes would only exercise the error paths).
    use bytes::BytesMut;
    use ternmq_core::codec::{Decoder, MAX_PACKET_SIZE, ProtocolVersion};
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/decode");
    for name in
        ["connect_v311", "connect_v5_publish", "subscribe_v5", "acks_v311", "connack_auth_v5"]
    {
        let data = std::fs::read(format!("{dir}/{name}")).unwrap();
        let version = match data[0] % 3 {
            0 => None,
            1 => Some(ProtocolVersion::V3_1_1),
            _ => Some(ProtocolVersion::V5),
        };
        let mut d = Decoder::new(version, MAX_PACKET_SIZE);
        let mut buf = BytesMut::from(&data[2..]);
        let mut count = 0;
        while let Some(_p) = d.decode(&mut buf).unwrap_or_else(|e| panic!("{name}: {e}")) {
            count += 1;
        }
        assert!(count > 0 && buf.is_empty(), "{name}: {count} packets, {} bytes left", buf.len());
    }
}

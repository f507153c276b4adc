//! The decoder's fuzzing oracle, shared by the `decode` fuzz target and the test that replays
//! the checked-in corpus (`tests/fuzz_corpus.rs`).
//!
//! Input layout: byte 0 picks the decoder's version (none yet, 3.1.1 or 5) and its maximum
//! packet size; byte 1 picks where the rest is split into two reads; the rest is the stream.
//! The oracle: no panic; every packet that decodes encodes again, and the encoding decodes to
//! the same packet.

use bytes::BytesMut;
use ternmq_core::codec::{Decoder, MAX_PACKET_SIZE, Packet, ProtocolVersion};

/// Runs the oracle on one input; panics (for the fuzzer to report) when it does not hold.
#[allow(unreachable_pub)]
pub fn check(data: &[u8]) {
    let [mode, split, stream @ ..] = data else { return };
    let version = match mode % 3 {
        0 => None,
        1 => Some(ProtocolVersion::V3_1_1),
        _ => Some(ProtocolVersion::V5),
    };
    let max = if mode & 0x80 != 0 { 64 } else { MAX_PACKET_SIZE };
    let split = usize::from(*split).min(stream.len());
    let mut decoder = Decoder::new(version, max);
    let mut buf = BytesMut::from(&stream[..split]);
    let mut decoded = Vec::new();
    if drain(&mut decoder, &mut buf, &mut decoded) {
        buf.extend_from_slice(&stream[split..]);
        drain(&mut decoder, &mut buf, &mut decoded);
    }
    let Some(v) = decoder.version() else { return };
    for p in decoded {
        let mut out = BytesMut::new();
        p.encode(v, &mut out).unwrap_or_else(|e| panic!("decoded {p:?} but cannot encode: {e}"));
        let mut again = Decoder::new(Some(v), MAX_PACKET_SIZE);
        let q = again.decode(&mut out).expect("re-encoded packet decodes");
        assert_eq!(q.as_ref(), Some(&p), "re-encoded packet decodes differently");
        assert!(out.is_empty(), "re-encoding left bytes over");
    }
}

/// Decodes until more bytes are needed (true) or an error (false).
fn drain(decoder: &mut Decoder, buf: &mut BytesMut, out: &mut Vec<Packet>) -> bool {
    loop {
        match decoder.decode(buf) {
            Ok(Some(p)) => out.push(p),
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
}

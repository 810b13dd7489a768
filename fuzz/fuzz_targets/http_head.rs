//! Fuzzes the HTTP/1.1 head parsers and the chunked decoder with arbitrary bytes: no panics, no
//! out-of-range offsets, and the chunked decoder reads the same bytes whether the input arrives
//! whole or split at any point (it is fed by whatever each socket read returns).
#![no_main]

use std::mem::MaybeUninit;

use libfuzzer_sys::fuzz_target;

#[path = "../../src/error.rs"]
#[allow(dead_code)]
mod error;

#[path = "../../src/http/authority.rs"]
#[allow(dead_code)]
mod authority;
#[path = "../../src/http/chunked.rs"]
#[allow(dead_code)]
mod chunked;
#[path = "../../src/http/head.rs"]
#[allow(dead_code)]
mod head;

use chunked::ChunkedDecoder;
use head::{parse_request, parse_response};

fn decode(input: &[u8], split: usize) -> (Result<usize, chunked::ChunkError>, Vec<u8>, bool) {
    let mut d = ChunkedDecoder::new(1024);
    let mut out = Vec::new();
    let mut consumed = 0;
    for part in [&input[..split], &input[split..]] {
        if d.is_done() {
            break;
        }
        match d.feed(part, |s| out.extend_from_slice(s)) {
            Ok(n) => consumed += n,
            Err(e) => return (Err(e), out, false),
        }
    }
    (Ok(consumed), out, d.is_done())
}

fuzz_target!(|data: &[u8]| {
    let mut scratch = [const { MaybeUninit::uninit() }; 64];
    if let Ok(Some(h)) = parse_request(data, &mut scratch, 8192, 4096) {
        assert!(h.len <= data.len());
        for r in [Some(h.target.clone()), h.host.clone(), h.session_id.clone(), h.content_type.clone()].into_iter().flatten() {
            assert!(r.end <= h.len, "field outside the head");
        }
        let _ = h.path(data);
    }
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; 64];
    if let Ok(Some(h)) = parse_response(data, &mut headers, 8192, false) {
        assert!(h.len <= data.len());
        for r in &h.relay {
            assert!(r.name().end <= h.len && r.value().end <= h.len);
        }
    }
    let whole = decode(data, data.len());
    let split = decode(data, data.len() / 2);
    match (&whole, &split) {
        ((Ok(a), da, done_a), (Ok(b), db, done_b)) => {
            assert_eq!((a, done_a), (b, done_b), "consumed/done differ when split");
            assert_eq!(da, db, "decoded bytes differ when split");
        }
        ((Err(_), ..), (Err(_), ..)) => {}
        _ => panic!("whole and split disagree on validity: {whole:?} vs {split:?}"),
    }
});

//! Decision this informs: the audit record's JSON-RPC error code of a relayed reply is read by
//! `jsonrpc::probe::ReplyProbe`, fed the reply piece by piece as the relay writes it, instead of
//! holding the reply and scanning it whole. Is the probe cheap enough to run on every recorded
//! call (audit on), next to a ~12 µs request?
//!
//! Baselines beside the candidate, per reply: `scan_whole` (`jsonrpc::scan` on the whole body:
//! what reading the reply with the scanner would cost, before any buffering), `memmem_error` (a
//! search for `"error"`: the floor of any reader that looks at every byte, and wrong on results
//! that contain the text). Replies: a 150 B error and result, a 30 KB result (`result` first,
//! as servers write it: the probe stops there), a 30 KB batch of results (read to the end), a
//! 150 B error as one SSE event behind a progress notification.
//!
//!
//! `reply_probe_gzip`: the same probe over gzip replies (`Content-Encoding: gzip`), beside
//! `inflate_whole` (flate2's reader decoding the whole body into a Vec: what a reader that holds
//! the reply would pay), and a gzip bomb (64 MiB of whitespace) the probe stops at 1 MiB: the
//! most CPU one compressed reply can cost at the default `audit.max_decoded`.
//!
//! Run: `nice cargo bench --bench reply_probe`; `cargo test --benches` runs each once as a test.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::io::{Read, Write};

use tollgate::jsonrpc::probe::{Coding, ReplyProbe};
use tollgate::jsonrpc::{scan, ScanLimits};

const ERROR: &str = r#"{"jsonrpc":"2.0","id":42,"error":{"code":-32602,"message":"Invalid arguments for get_weather: `city` is required","data":{"field":"city"}}}"#;
const RESULT: &str = r#"{"jsonrpc":"2.0","id":42,"result":{"content":[{"type":"text","text":"Paris: 21 C, light rain, wind 12 km/h"}],"isError":false}}"#;

fn large_result(size: usize) -> String {
    let mut text = String::new();
    while text.len() < size {
        text.push_str(
            "Lorem ipsum dolor sit amet, \\\"consectetur\\\" adipiscing elit. {\\\"error\\\":1} ",
        );
    }
    format!(
        r#"{{"jsonrpc":"2.0","id":42,"result":{{"content":[{{"type":"text","text":"{text}"}}]}}}}"#
    )
}

fn batch(size: usize) -> String {
    let mut out = String::from("[");
    let mut i = 0;
    while out.len() < size {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&RESULT.replace("42", &i.to_string()));
        i += 1;
    }
    out.push(']');
    out
}

fn sse_error() -> String {
    format!(
        "event: message\ndata: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{{\"progressToken\":1,\"progress\":1}}}}\n\nevent: message\ndata: {ERROR}\n\n"
    )
}

fn probe(sse: bool, body: &[u8]) -> Option<i64> {
    let mut p = ReplyProbe::new(sse);
    p.feed(body);
    p.error_for(Some(b"42"), true)
}

fn bench(c: &mut Criterion) {
    let limits = ScanLimits {
        max_depth: 120,
        max_batch_len: 10_000,
    };
    let cases = [
        ("error_150B", ERROR.to_string(), false),
        ("result_150B", RESULT.to_string(), false),
        ("result_30KB", large_result(30_000), false),
        ("batch_30KB", batch(30_000), false),
        ("sse_error", sse_error(), true),
    ];
    let mut g = c.benchmark_group("reply_probe");
    for (name, body, sse) in &cases {
        let body = body.as_bytes();
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::new("probe", name), body, |b, body| {
            b.iter(|| probe(*sse, black_box(body)))
        });
        if !sse {
            g.bench_with_input(BenchmarkId::new("scan_whole", name), body, |b, body| {
                b.iter(|| scan(black_box(body), &limits).is_ok())
            });
        }
        g.bench_with_input(BenchmarkId::new("memmem_error", name), body, |b, body| {
            b.iter(|| memchr::memmem::find(black_box(body), b"\"error\"").is_some())
        });
    }
    g.finish();
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(body).unwrap();
    e.finish().unwrap()
}

fn bomb() -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(br#"{"jsonrpc":"2.0","id":42,"#).unwrap();
    let spaces = vec![b' '; 1 << 20];
    for _ in 0..64 {
        e.write_all(&spaces).unwrap();
    }
    e.write_all(br#""error":{"code":-32000}}"#).unwrap();
    e.finish().unwrap()
}

fn bench_gzip(c: &mut Criterion) {
    let cases = [
        ("error_150B", gzip(ERROR.as_bytes()), false),
        ("result_30KB", gzip(large_result(30_000).as_bytes()), false),
        ("batch_30KB", gzip(batch(30_000).as_bytes()), false),
        ("sse_error", gzip(sse_error().as_bytes()), true),
        ("bomb_64MiB", bomb(), false),
    ];
    let mut g = c.benchmark_group("reply_probe_gzip");
    for (name, body, sse) in &cases {
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::new("probe", name), body, |b, body| {
            b.iter(|| {
                let mut p = ReplyProbe::coded(*sse, Coding::Gzip, 1 << 20);
                // As the relay feeds it: a piece per read.
                for piece in black_box(body).chunks(16 * 1024) {
                    p.feed(piece);
                }
                p.error_for(Some(b"42"), true)
            })
        });
        if *name != "bomb_64MiB" {
            g.bench_with_input(BenchmarkId::new("inflate_whole", name), body, |b, body| {
                b.iter(|| {
                    let mut out = Vec::new();
                    flate2::read::GzDecoder::new(black_box(&body[..]))
                        .read_to_end(&mut out)
                        .unwrap();
                    out.len()
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench, bench_gzip);
criterion_main!(benches);

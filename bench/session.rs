//! Decision informed: sealed, stateless session ids (AEAD token carrying the claims; any worker
//! of any instance can open it) versus a shared session table (`Mutex<HashMap>` lookup that every
//! worker thread contends on and that does not span instances).
//! Candidate: `SessionSealer::seal` / `open` (AES-256-GCM). Baseline: lock + lookup + clone of the
//! claims in a 10k-entry `Mutex<HashMap<String, SessionClaims>>`, and lock + insert for the
//! "new session" side. The table numbers are single-threaded, i.e. a lower bound: with one worker
//! per core the mutex is also contended.
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Mutex;

use criterion::{criterion_group, criterion_main, Criterion};
use tollgate::mcp::session::{SessionClaims, SessionSealer, UpstreamSession};
use tollgate::mcp::ProtocolVersion;

const NOW: u64 = 1_800_000_000;

/// A typical session: one upstream with a UUID-sized session id, a 32-byte principal hash.
fn typical_claims() -> SessionClaims {
    SessionClaims {
        id: SessionSealer::new_id(),
        server: 0,
        protocol_version: ProtocolVersion::V2025_06_18,
        issued_at: NOW,
        expires_at: NOW + 86_400,
        upstreams: vec![UpstreamSession {
            upstream: 0,
            session_id: Some("6f1c2a7e-3b9d-4c55-8e21-0d6a9f4b7c13".into()),
            protocol_version: ProtocolVersion::V2025_06_18,
            replica: 0,
        }],
        principal: Some(vec![0x5A; 32]),
    }
}

fn sealed(c: &mut Criterion) {
    let sealer = SessionSealer::new(&[0x42; 32]);
    let claims = typical_claims();
    let token = sealer.seal(&claims);
    c.bench_function("session/seal", |b| {
        b.iter(|| sealer.seal(black_box(&claims)))
    });
    c.bench_function("session/open", |b| {
        b.iter(|| sealer.open(black_box(token.as_bytes()), NOW))
    });
    // After a rotation, tokens of the previous key cost one failed trial decryption more.
    let rotated = SessionSealer::new(&[0x43; 32]).with_previous(&[[0x42; 32]]);
    c.bench_function("session/open_previous_key", |b| {
        b.iter(|| rotated.open(black_box(token.as_bytes()), NOW))
    });
    c.bench_function("session/open_forged", |b| {
        let forged = SessionSealer::new(&[0x44; 32]).seal(&claims);
        b.iter(|| sealer.open(black_box(forged.as_bytes()), NOW))
    });
}

fn table(c: &mut Criterion) {
    let sealer = SessionSealer::new(&[0x42; 32]);
    let mut map = HashMap::with_capacity(10_000);
    let mut keys = Vec::with_capacity(10_000);
    for _ in 0..10_000 {
        let claims = typical_claims();
        let key = sealer.seal(&claims);
        keys.push(key.clone());
        map.insert(key, claims);
    }
    let table = Mutex::new(map);
    let mut i = 0usize;
    c.bench_function("table_baseline/lookup_10k", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            let guard = table.lock().unwrap_or_else(|e| e.into_inner());
            let found: Option<SessionClaims> = guard.get(black_box(keys[i].as_str())).cloned();
            found
        })
    });
    let claims = typical_claims();
    c.bench_function("table_baseline/insert_remove_10k", |b| {
        b.iter(|| {
            let mut guard = table.lock().unwrap_or_else(|e| e.into_inner());
            guard.insert(String::from("bench-new-session"), black_box(claims.clone()));
            guard.remove("bench-new-session")
        })
    });
}

criterion_group!(benches, sealed, table);
criterion_main!(benches);

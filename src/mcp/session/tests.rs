//! Session sealing: round trips, tampering, rotation, expiry, hostile input.
use super::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use proptest::prelude::*;

const KEY: [u8; 32] = [7; 32];
const OTHER: [u8; 32] = [9; 32];
const NOW: u64 = 1_800_000_000;

fn claims() -> SessionClaims {
    SessionClaims {
        id: [0xAB; 16],
        server: 3,
        protocol_version: ProtocolVersion::V2025_06_18,
        issued_at: NOW,
        expires_at: NOW + 86_400,
        upstreams: vec![
            UpstreamSession {
                upstream: 0,
                session_id: Some("abc-123_XYZ".into()),
                protocol_version: ProtocolVersion::V2025_03_26,
                replica: 0,
            },
            UpstreamSession {
                upstream: u64::MAX,
                session_id: None,
                protocol_version: ProtocolVersion::V2025_11_25,
                replica: super::replica_id("http://10.0.0.2:3000/mcp"),
            },
        ],
        principal: Some(vec![1, 2, 3, 0xFF]),
    }
}

#[test]
fn round_trips_every_field() {
    let s = SessionSealer::new(&KEY);
    let c = claims();
    let t = s.seal(&c);
    assert!(t.starts_with("tg2."));
    assert!(t.bytes().all(|b| (0x21..=0x7E).contains(&b)), "{t}");
    assert_eq!(s.open(t.as_bytes(), NOW), Ok(c.clone()));

    // Each field on its own, at its extremes.
    let mut variants = Vec::new();
    for v in ProtocolVersion::ALL {
        variants.push(SessionClaims {
            protocol_version: v,
            ..c.clone()
        });
    }
    variants.push(SessionClaims {
        server: u64::MAX,
        ..c.clone()
    });
    variants.push(SessionClaims {
        id: SessionSealer::new_id(),
        ..c.clone()
    });
    variants.push(SessionClaims {
        principal: None,
        ..c.clone()
    });
    variants.push(SessionClaims {
        principal: Some(vec![]),
        ..c.clone()
    });
    variants.push(SessionClaims {
        principal: Some(vec![0xFF; 64]),
        ..c.clone()
    });
    variants.push(SessionClaims {
        upstreams: vec![],
        ..c.clone()
    });
    variants.push(SessionClaims {
        issued_at: 0,
        expires_at: u64::MAX,
        ..c.clone()
    });
    variants.push(SessionClaims {
        upstreams: vec![UpstreamSession {
            upstream: 1,
            session_id: Some("~".repeat(255)),
            protocol_version: ProtocolVersion::V2024_11_05,
            replica: u64::MAX,
        }],
        ..c.clone()
    });
    for v in variants {
        let t = s.seal(&v);
        assert_eq!(s.open(t.as_bytes(), NOW).as_ref(), Ok(&v));
    }
}

#[test]
fn tokens_differ_each_time() {
    let s = SessionSealer::new(&KEY);
    assert_ne!(s.seal(&claims()), s.seal(&claims()));
    assert_ne!(SessionSealer::new_id(), SessionSealer::new_id());
}

#[test]
fn any_altered_byte_is_refused() {
    let s = SessionSealer::new(&KEY);
    let t = s.seal(&claims()).into_bytes();
    for i in 0..t.len() {
        for repl in [b'A', b'_', b'-', b'z', b'0', b'.', b' ', 0x00, 0xFF] {
            if t[i] == repl {
                continue;
            }
            let mut bad = t.clone();
            bad[i] = repl;
            let r = s.open(&bad, NOW);
            assert!(
                matches!(r, Err(SessionError::Tampered | SessionError::Malformed)),
                "byte {i} -> {repl}: {r:?}"
            );
        }
    }
}

#[test]
fn wrong_key_is_tampered() {
    let t = SessionSealer::new(&KEY).seal(&claims());
    let r = SessionSealer::new(&OTHER).open(t.as_bytes(), NOW);
    assert_eq!(r, Err(SessionError::Tampered));
}

#[test]
fn rotation_opens_old_tokens_and_seals_with_the_new_key() {
    let old = SessionSealer::new(&KEY);
    let old_token = old.seal(&claims());
    let rotated = SessionSealer::new(&OTHER).with_previous(&[KEY]);
    assert_eq!(rotated.open(old_token.as_bytes(), NOW), Ok(claims()));
    let new_token = rotated.seal(&claims());
    // Sealed with the new key: instances that only know the old key refuse it.
    assert_eq!(
        old.open(new_token.as_bytes(), NOW),
        Err(SessionError::Tampered)
    );
    assert_eq!(
        SessionSealer::new(&OTHER).open(new_token.as_bytes(), NOW),
        Ok(claims())
    );
    // Once the old key is dropped, its tokens are gone.
    assert_eq!(
        SessionSealer::new(&OTHER).open(old_token.as_bytes(), NOW),
        Err(SessionError::Tampered)
    );
}

#[test]
fn expiry_is_checked_after_authentication() {
    let s = SessionSealer::new(&KEY);
    let c = claims();
    let t = s.seal(&c);
    assert!(s.open(t.as_bytes(), c.expires_at - 1).is_ok());
    assert_eq!(
        s.open(t.as_bytes(), c.expires_at),
        Err(SessionError::Expired)
    );
    assert_eq!(s.open(t.as_bytes(), u64::MAX), Err(SessionError::Expired));
    // An expired token under an unknown key is Tampered, not Expired: nothing is believed
    // before authentication.
    let other = SessionSealer::new(&OTHER);
    assert_eq!(
        other.open(t.as_bytes(), u64::MAX),
        Err(SessionError::Tampered)
    );
}

#[test]
fn garbage_truncated_and_huge_inputs_are_refused() {
    let s = SessionSealer::new(&KEY);
    let t = s.seal(&claims());
    for cut in 0..t.len() {
        let r = s.open(&t.as_bytes()[..cut], NOW);
        assert!(
            matches!(r, Err(SessionError::Malformed | SessionError::Tampered)),
            "{cut}"
        );
    }
    for junk in [
        &b""[..],
        b"tg2.",
        b"tg2",
        b"tg2.AAAA",
        b"TG1.AAAA",
        b"tg2.====",
        b"tg2.AAAA=",
        b"tg2.!unsealable",
        "tg2.é".as_bytes(),
        &[0xFF; 100],
    ] {
        assert_eq!(s.open(junk, NOW), Err(SessionError::Malformed), "{junk:?}");
    }
    let mut huge = b"tg2.".to_vec();
    huge.resize(MAX_TOKEN_LEN + 1, b'A');
    assert_eq!(s.open(&huge, NOW), Err(SessionError::Malformed));
    // Long enough to decode but all zeros: fails authentication.
    let mut zeros = b"tg2.".to_vec();
    zeros.extend(URL_SAFE_NO_PAD.encode([0u8; 200]).bytes());
    assert_eq!(s.open(&zeros, NOW), Err(SessionError::Tampered));
}

#[test]
fn authentic_but_unreadable_payload_is_malformed() {
    // Seal a hand-made payload with trailing junk under the real key.
    let s = SessionSealer::new(&KEY);
    for payload in [
        {
            let mut p = Vec::new();
            encode(&claims(), &mut p);
            p.push(0);
            p
        },
        {
            let mut p = Vec::new();
            encode(&claims(), &mut p);
            p[24] = 0; // protocol version 0 does not exist
            p
        },
        vec![0u8; FIXED_LEN],
    ] {
        let token = s.env.seal(&payload).expect("seal");
        assert_eq!(s.open(token.as_bytes(), NOW), Err(SessionError::Malformed));
    }
}

#[test]
fn invalid_claims_are_refused_by_try_seal_and_never_open() {
    let s = SessionSealer::new(&KEY);
    let bad_sid = |sid: &str| SessionClaims {
        upstreams: vec![UpstreamSession {
            upstream: 0,
            session_id: Some(sid.into()),
            protocol_version: ProtocolVersion::V2025_06_18,
            replica: 0,
        }],
        ..claims()
    };
    let cases = [
        (bad_sid(""), ClaimsError::UpstreamSessionId),
        (bad_sid("has space"), ClaimsError::UpstreamSessionId),
        (bad_sid("new\nline"), ClaimsError::UpstreamSessionId),
        (bad_sid("é"), ClaimsError::UpstreamSessionId),
        (bad_sid(&"a".repeat(256)), ClaimsError::UpstreamSessionId),
        (
            SessionClaims {
                principal: Some(vec![0; 65]),
                ..claims()
            },
            ClaimsError::Principal,
        ),
        (
            SessionClaims {
                expires_at: NOW - 1,
                ..claims()
            },
            ClaimsError::Lifetime,
        ),
        (
            SessionClaims {
                upstreams: vec![claims().upstreams[1].clone(); 65],
                ..claims()
            },
            ClaimsError::TooManyUpstreams,
        ),
        (
            SessionClaims {
                upstreams: vec![bad_sid(&"a".repeat(255)).upstreams[0].clone(); 16],
                ..claims()
            },
            ClaimsError::TooLarge,
        ),
    ];
    for (c, want) in cases {
        assert_eq!(s.try_seal(&c), Err(want));
        let t = s.seal(&c);
        assert_eq!(s.open(t.as_bytes(), NOW), Err(SessionError::Malformed));
    }
}

#[test]
fn largest_sealable_token_fits_the_bound() {
    let s = SessionSealer::new(&KEY);
    let mut c = SessionClaims {
        principal: Some(vec![0; 64]),
        ..claims()
    };
    let long = UpstreamSession {
        upstream: 0,
        session_id: Some("x".repeat(255)),
        protocol_version: ProtocolVersion::V2025_06_18,
        replica: 0,
    };
    c.upstreams = vec![long.clone(); 5];
    let t = s.try_seal(&c).expect("five 255-byte upstream ids fit");
    assert!(t.len() <= MAX_TOKEN_LEN);
    assert_eq!(s.open(t.as_bytes(), NOW), Ok(c));
}

#[test]
fn sealer_is_shareable() {
    fn assert_send_sync_clone<T: Send + Sync + Clone>() {}
    assert_send_sync_clone::<SessionSealer>();
    let dbg = format!("{:?}", SessionSealer::new(&KEY));
    assert!(!dbg.contains("07"), "{dbg}");
}

fn arb_version() -> impl Strategy<Value = ProtocolVersion> {
    proptest::sample::select(ProtocolVersion::ALL.to_vec())
}

fn arb_upstream() -> impl Strategy<Value = UpstreamSession> {
    (
        any::<u64>(),
        proptest::option::of("[!-~]{1,40}"),
        arb_version(),
        any::<u64>(),
    )
        .prop_map(
            |(upstream, session_id, protocol_version, replica)| UpstreamSession {
                upstream,
                session_id,
                protocol_version,
                replica,
            },
        )
}

fn arb_claims() -> impl Strategy<Value = SessionClaims> {
    (
        any::<[u8; 16]>(),
        any::<u64>(),
        arb_version(),
        any::<u64>(),
        any::<u64>(),
        proptest::collection::vec(arb_upstream(), 0..8),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..=64)),
    )
        .prop_map(
            |(id, server, protocol_version, a, b, upstreams, principal)| SessionClaims {
                id,
                server,
                protocol_version,
                issued_at: a.min(b),
                expires_at: a.max(b),
                upstreams,
                principal,
            },
        )
}

proptest! {
    #[test]
    fn random_claims_round_trip(c in arb_claims()) {
        let s = SessionSealer::new(&KEY);
        let t = s.try_seal(&c).expect("valid claims seal");
        prop_assert!(t.len() <= MAX_TOKEN_LEN);
        let r = s.open(t.as_bytes(), c.issued_at);
        if c.issued_at == c.expires_at {
            prop_assert_eq!(r, Err(SessionError::Expired));
        } else {
            prop_assert_eq!(r, Ok(c));
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
        let s = SessionSealer::new(&KEY);
        prop_assert!(s.open(&bytes, NOW).is_err());
        let mut prefixed = b"tg2.".to_vec();
        prefixed.extend_from_slice(&bytes);
        prop_assert!(s.open(&prefixed, NOW).is_err());
    }

    #[test]
    fn random_base64_bodies_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1600)) {
        let s = SessionSealer::new(&KEY);
        let token = format!("tg2.{}", URL_SAFE_NO_PAD.encode(&bytes));
        prop_assert!(s.open(token.as_bytes(), NOW).is_err());
    }
}

#[test]
fn first_format_tokens_are_unknown_sessions() {
    // A tg1 token (u16 positions) sealed with the same key: refused before authentication.
    let s = SessionSealer::new(&KEY);
    let t = s.seal(&claims()).replacen("tg2.", "tg1.", 1);
    assert_eq!(s.open(t.as_bytes(), NOW), Err(SessionError::Malformed));
}

#[test]
fn stable_ids_depend_on_the_name_alone() {
    assert_eq!(upstream_id("notes"), upstream_id("notes"));
    assert_ne!(upstream_id("notes"), upstream_id("weather"));
    // Domains are separate: a server at a path never shares an id with an upstream so named.
    assert_ne!(server_id("/mcp"), upstream_id("/mcp"));
}

#[test]
fn a_federated_session_fits() {
    // Twelve upstream sessions with UUID-sized ids and a principal binding.
    let s = SessionSealer::new(&KEY);
    let c = SessionClaims {
        upstreams: (0..12)
            .map(|i| UpstreamSession {
                upstream: upstream_id(&format!("upstream-{i}")),
                session_id: Some(format!("{i:08}-1b4e-4c5f-9a2d-6f1e2d3c4b5a")),
                protocol_version: ProtocolVersion::V2025_06_18,
                replica: super::replica_id(&format!("http://10.0.0.{i}:3000/mcp")),
            })
            .collect(),
        principal: Some(vec![0x5A; 32]),
        ..claims()
    };
    let t = s.try_seal(&c).expect("fits");
    assert!(t.len() < 1200, "{}", t.len());
    assert_eq!(s.open(t.as_bytes(), NOW), Ok(c));
}

#[test]
fn a_replica_id_costs_its_eight_bytes_only_when_recorded() {
    let s = SessionSealer::new(&KEY);
    let mut c = claims();
    c.upstreams.truncate(1);
    let without = s.seal(&c);
    c.upstreams[0].replica = super::replica_id("http://10.0.0.1:3000/mcp");
    let with = s.seal(&c);
    assert_eq!(
        s.open(with.as_bytes(), NOW).map(|o| o.upstreams[0].replica),
        Ok(c.upstreams[0].replica)
    );
    assert_eq!(
        s.open(without.as_bytes(), NOW)
            .map(|o| o.upstreams[0].replica),
        Ok(0)
    );
    // base64 of 8 more payload bytes: 10 or 11 characters.
    assert!(
        (10..=11).contains(&(with.len() - without.len())),
        "{without} {with}"
    );
    // Ids are never 0 (0 means none recorded), and differ by URL.
    assert_ne!(
        super::replica_id("http://a:1/mcp"),
        super::replica_id("http://a:2/mcp")
    );
}

//! Cursors: round trips, tampering, foreign and expired cursors, hostile input, `advance`.
use super::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use proptest::prelude::*;

const KEY: [u8; 32] = [7; 32];
const OTHER: [u8; 32] = [9; 32];
const NOW: u64 = 1_800_000_000;
const SESSION: [u8; 16] = [0xAB; 16];

fn cursor() -> Cursor {
    Cursor {
        list: ListKind::Tools,
        server: 42,
        position: Position {
            upstream: 0xDEAD_BEEF,
            upstream_cursor: Some("eyJwYWdlIjoyfQ==".into()),
            offset: 17,
        },
        issued_at: NOW,
        session: Some(SESSION),
    }
}

fn expect_of(c: &Cursor) -> Expect {
    Expect {
        list: c.list,
        server: c.server,
        session: c.session,
    }
}

fn is_cursor_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
}

#[test]
fn round_trips_every_field() {
    let s = CursorSealer::new(&KEY);
    let mut variants = vec![cursor()];
    for list in ListKind::ALL {
        variants.push(Cursor { list, ..cursor() });
    }
    variants.push(Cursor {
        session: None,
        server: u64::MAX,
        ..cursor()
    });
    for (uc, offset) in [
        (None, 0),
        (Some(String::new()), u32::MAX),
        (Some("é\u{0}\"\\ \n{}".into()), 1),
        (Some("x".repeat(MAX_UPSTREAM_CURSOR_LEN)), 3),
    ] {
        variants.push(Cursor {
            position: Position {
                upstream: u64::MAX,
                upstream_cursor: uc,
                offset,
            },
            ..cursor()
        });
    }
    for c in variants {
        let t = s.seal(&c).expect("sealable");
        assert!(t.starts_with("tc1."), "{t}");
        assert!(t.len() <= MAX_CURSOR_LEN, "{}", t.len());
        assert!(t.bytes().all(is_cursor_char), "{t}");
        assert_eq!(s.open(t.as_bytes(), NOW, &expect_of(&c)), Ok(c));
    }
}

#[test]
fn cursors_differ_each_time_and_hide_the_upstream_cursor() {
    let s = CursorSealer::new(&KEY);
    let c = cursor();
    let (a, b) = (s.seal(&c).expect("ok"), s.seal(&c).expect("ok"));
    assert_ne!(a, b);
    // Neither the upstream cursor nor its base64 shows through.
    let raw = URL_SAFE_NO_PAD.decode(&a[4..]).expect("base64");
    let needle = b"eyJwYWdl";
    assert!(!raw.windows(needle.len()).any(|w| w == needle));
    assert!(!a.contains("eyJwYWdl"));
}

#[test]
fn any_altered_byte_is_refused() {
    let s = CursorSealer::new(&KEY);
    let c = cursor();
    let t = s.seal(&c).expect("ok").into_bytes();
    let e = expect_of(&c);
    for i in 0..t.len() {
        for flip in [0x01u8, 0x20, 0x80] {
            let mut bad = t.clone();
            bad[i] ^= flip;
            let r = s.open(&bad, NOW, &e);
            assert!(
                matches!(r, Err(CursorError::Malformed | CursorError::Tampered)),
                "byte {i} ^ {flip:#x}: {r:?}"
            );
        }
    }
    // Truncated at every length, and extended.
    for n in 0..t.len() {
        assert!(s.open(&t[..n], NOW, &e).is_err(), "prefix of {n}");
    }
    let mut longer = t.clone();
    longer.extend_from_slice(b"AA");
    assert!(s.open(&longer, NOW, &e).is_err());
}

#[test]
fn other_keys_and_session_tokens_are_refused() {
    let c = cursor();
    let t = CursorSealer::new(&OTHER).seal(&c).expect("ok");
    assert_eq!(
        CursorSealer::new(&KEY).open(t.as_bytes(), NOW, &expect_of(&c)),
        Err(CursorError::Tampered)
    );
    // A session token is not a cursor, even relabelled: the keys differ (HKDF) and so do the AADs.
    use crate::mcp::session::{SessionClaims, SessionSealer};
    let token = SessionSealer::new(&KEY).seal(&SessionClaims {
        id: SESSION,
        server: 42,
        protocol_version: crate::mcp::ProtocolVersion::V2025_06_18,
        issued_at: NOW,
        expires_at: NOW + 10,
        upstreams: vec![],
        principal: None,
    });
    let relabelled = format!("tc1.{}", &token[4..]);
    let s = CursorSealer::new(&KEY);
    assert_eq!(
        s.open(token.as_bytes(), NOW, &expect_of(&c)),
        Err(CursorError::Malformed)
    );
    assert!(matches!(
        s.open(relabelled.as_bytes(), NOW, &expect_of(&c)),
        Err(CursorError::Tampered | CursorError::Malformed)
    ));
}

#[test]
fn rotation_opens_cursors_of_the_previous_key() {
    let c = cursor();
    let old = CursorSealer::new(&OTHER).seal(&c).expect("ok");
    let s = CursorSealer::new(&KEY).with_previous(&[OTHER]);
    assert_eq!(s.open(old.as_bytes(), NOW, &expect_of(&c)), Ok(c.clone()));
    let new = s.seal(&c).expect("ok");
    assert_eq!(
        CursorSealer::new(&KEY).open(new.as_bytes(), NOW, &expect_of(&c)),
        Ok(c)
    );
}

#[test]
fn foreign_cursors_are_refused() {
    let s = CursorSealer::new(&KEY);
    let c = cursor();
    let t = s.seal(&c).expect("ok");
    let e = expect_of(&c);
    let open = |e: Expect| s.open(t.as_bytes(), NOW, &e);
    assert_eq!(
        open(Expect {
            list: ListKind::Prompts,
            ..e
        }),
        Err(CursorError::WrongList)
    );
    assert_eq!(
        open(Expect { server: 43, ..e }),
        Err(CursorError::WrongServer)
    );
    assert_eq!(
        open(Expect {
            session: Some([0xAC; 16]),
            ..e
        }),
        Err(CursorError::WrongSession)
    );
    assert_eq!(
        open(Expect { session: None, ..e }),
        Err(CursorError::WrongSession)
    );
    // Issued outside a session, presented in one.
    let stateless = Cursor {
        session: None,
        ..cursor()
    };
    let t2 = s.seal(&stateless).expect("ok");
    assert_eq!(
        s.open(t2.as_bytes(), NOW, &e),
        Err(CursorError::WrongSession)
    );
    for err in [
        CursorError::Malformed,
        CursorError::Tampered,
        CursorError::Expired,
        CursorError::WrongList,
        CursorError::WrongServer,
        CursorError::WrongSession,
    ] {
        assert!(!err.to_string().is_empty() && !err.as_str().is_empty());
    }
    assert_eq!(CursorError::JSONRPC_CODE, -32602);
}

#[test]
fn expiry_and_clock_skew() {
    let s = CursorSealer::new(&KEY).with_max_age(600);
    let c = cursor();
    let t = s.seal(&c).expect("ok");
    let e = expect_of(&c);
    assert!(s.open(t.as_bytes(), NOW + 599, &e).is_ok());
    assert_eq!(
        s.open(t.as_bytes(), NOW + 600, &e),
        Err(CursorError::Expired)
    );
    assert!(s.open(t.as_bytes(), NOW - CLOCK_SKEW_SECS, &e).is_ok());
    assert_eq!(
        s.open(t.as_bytes(), NOW - CLOCK_SKEW_SECS - 1, &e),
        Err(CursorError::Expired)
    );
    // Extremes do not overflow.
    let late = Cursor {
        issued_at: u64::MAX - 1000,
        ..cursor()
    };
    let t = s.seal(&late).expect("ok");
    assert!(s.open(t.as_bytes(), u64::MAX - 500, &e).is_ok());
    assert_eq!(
        s.open(t.as_bytes(), u64::MAX, &e),
        Err(CursorError::Expired)
    );
    assert_eq!(s.open(t.as_bytes(), 0, &e), Err(CursorError::Expired));
    let last = Cursor {
        issued_at: u64::MAX,
        ..cursor()
    };
    let t = s.seal(&last).expect("ok");
    assert_eq!(
        s.open(t.as_bytes(), u64::MAX, &e),
        Err(CursorError::Expired)
    );
    let d = CursorSealer::new(&KEY);
    let t = d.seal(&cursor()).expect("ok");
    assert!(d
        .open(t.as_bytes(), NOW + DEFAULT_MAX_AGE_SECS - 1, &e)
        .is_ok());
    assert_eq!(
        d.open(t.as_bytes(), NOW + DEFAULT_MAX_AGE_SECS, &e),
        Err(CursorError::Expired)
    );
}

#[test]
fn oversized_upstream_cursors_are_not_sealed() {
    let s = CursorSealer::new(&KEY);
    let c = Cursor {
        position: Position {
            upstream: 1,
            upstream_cursor: Some("x".repeat(MAX_UPSTREAM_CURSOR_LEN + 1)),
            offset: 0,
        },
        ..cursor()
    };
    assert_eq!(s.seal(&c), Err(SealError::UpstreamCursorTooLong));
    assert_eq!(MAX_CURSOR_LEN, 2840);
}

#[test]
fn garbage_is_malformed() {
    let s = CursorSealer::new(&KEY);
    let e = expect_of(&cursor());
    for bad in [
        &b""[..],
        b"tc1.",
        b"tc1",
        b"tc2.AAAA",
        b"TC1.AAAA",
        b"tc1.====",
        b"tc1.AAAA=",
        b"tc1.!!!!",
        b"tc1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA+/",
        b" tc1.AAAA",
        "tc1.ÅÅÅÅ".as_bytes(),
    ] {
        assert_eq!(s.open(bad, NOW, &e), Err(CursorError::Malformed), "{bad:?}");
    }
    let huge = format!("tc1.{}", "A".repeat(MAX_CURSOR_LEN));
    assert_eq!(
        s.open(huge.as_bytes(), NOW, &e),
        Err(CursorError::Malformed)
    );
    // Long enough, well encoded, not ours.
    let fake = format!("tc1.{}", URL_SAFE_NO_PAD.encode([0u8; 200]));
    assert_eq!(s.open(fake.as_bytes(), NOW, &e), Err(CursorError::Tampered));
}

/// Seals an arbitrary payload with the sealer's key, as only someone holding it could.
fn seal_raw(payload: &[u8]) -> String {
    Envelope::new(PREFIX, derive_key(&KEY))
        .seal(payload)
        .expect("seal")
}

#[test]
fn authentic_but_unreadable_payloads_are_malformed() {
    let s = CursorSealer::new(&KEY);
    let c = cursor();
    let e = expect_of(&c);
    let mut good = Vec::new();
    encode(
        &c,
        c.position.upstream_cursor.as_deref().map(str::as_bytes),
        &mut good,
    );
    assert_eq!(s.open(seal_raw(&good).as_bytes(), NOW, &e), Ok(c.clone()));
    let mut cases: Vec<Vec<u8>> = Vec::new();
    let mut extra = good.clone();
    extra.push(0);
    cases.push(extra);
    cases.push(good[..good.len() - 1].to_vec());
    let mut kind = good.clone();
    kind[0] = 0;
    cases.push(kind);
    let mut kind = good.clone();
    kind[0] = 6; // one past the last kind (5, tasks)
    cases.push(kind);
    // Session flag 2.
    let mut flag = good.clone();
    flag[FIXED_LEN - 2] = 2;
    cases.push(flag);
    // Cursor length over the cap, and invalid UTF-8.
    let mut p = Vec::new();
    encode(
        &Cursor {
            session: None,
            ..c.clone()
        },
        None,
        &mut p,
    );
    let mut over = p.clone();
    *over.last_mut().expect("flag") = 1;
    over.extend_from_slice(&((MAX_UPSTREAM_CURSOR_LEN + 1) as u16).to_be_bytes());
    over.extend(std::iter::repeat_n(b'x', MAX_UPSTREAM_CURSOR_LEN + 1));
    cases.push(over);
    let mut utf = p.clone();
    *utf.last_mut().expect("flag") = 1;
    utf.extend_from_slice(&2u16.to_be_bytes());
    utf.extend_from_slice(&[0xC3, 0x28]);
    cases.push(utf);
    cases.push(Vec::new());
    for (i, payload) in cases.iter().enumerate() {
        let e = Expect { session: None, ..e };
        let r = s.open(seal_raw(payload).as_bytes(), NOW, &e);
        assert_eq!(r, Err(CursorError::Malformed), "case {i}");
    }
}

#[test]
fn sealer_is_shareable_and_keeps_its_key_secret() {
    fn assert_send_sync_clone<T: Send + Sync + Clone>() {}
    assert_send_sync_clone::<CursorSealer>();
    let debug = format!("{:?}", CursorSealer::new(&KEY));
    assert!(!debug.contains("7, 7"), "{debug}");
}

/// Walks a whole aggregated listing with `advance`, page by page, as the request path will.
fn walk(upstreams: &[(u64, Vec<Vec<u32>>)], page_size: usize) -> (Vec<u32>, usize) {
    let order: Vec<u64> = upstreams.iter().map(|(id, _)| *id).collect();
    let page = |at: &Position| -> (Vec<u32>, Option<String>) {
        let pages = &upstreams
            .iter()
            .find(|(id, _)| *id == at.upstream)
            .expect("known")
            .1;
        let i: usize = at
            .upstream_cursor
            .as_deref()
            .map_or(0, |c| c.parse().expect("ours"));
        let items = pages.get(i).cloned().unwrap_or_default();
        let next = (i + 1 < pages.len()).then(|| (i + 1).to_string());
        (items, next)
    };
    let s = CursorSealer::new(&KEY);
    let e = Expect {
        list: ListKind::Tools,
        server: 1,
        session: None,
    };
    let mut out = Vec::new();
    let mut client_pages = 0;
    let mut cursor: Option<String> = None;
    loop {
        client_pages += 1;
        assert!(client_pages < 10_000, "no progress");
        let mut at = match &cursor {
            None => match Position::start(&order) {
                Some(p) => p,
                None => return (out, client_pages),
            },
            Some(t) => s.open(t.as_bytes(), NOW, &e).expect("ours").position,
        };
        let mut room = page_size;
        let next = loop {
            let (items, next_cursor) = page(&at);
            let (take, step) =
                advance(&order, &at, items.len(), next_cursor.as_deref(), room).expect("known");
            room -= take.len();
            out.extend_from_slice(&items[take]);
            match step {
                Step::Fetch(p) => at = p,
                Step::Full(p) => break Some(p),
                Step::End => break None,
            }
        };
        match next {
            None => return (out, client_pages),
            Some(position) => {
                let c = Cursor {
                    list: ListKind::Tools,
                    server: 1,
                    position,
                    issued_at: NOW,
                    session: None,
                };
                cursor = Some(s.seal(&c).expect("sealable"));
            }
        }
    }
}

#[test]
fn advance_lists_everything_once_in_order() {
    let ups = vec![
        (10, vec![vec![1, 2, 3], vec![4, 5]]),
        (20, vec![]),
        (30, vec![vec![], vec![6]]),
        (40, vec![vec![7, 8, 9, 10]]),
    ];
    for size in [1, 2, 3, 4, 7, 100] {
        let (items, _) = walk(&ups, size);
        assert_eq!(items, (1..=10).collect::<Vec<_>>(), "page size {size}");
    }
    assert_eq!(walk(&[], 5), (vec![], 1));
}

#[test]
fn advance_edge_cases() {
    let order = [1, 2];
    let at = Position {
        upstream: 1,
        upstream_cursor: Some("c".into()),
        offset: 5,
    };
    // The page shrank below the offset: move on.
    assert_eq!(
        advance(&order, &at, 3, None, 10),
        Some((
            3..3,
            Step::Fetch(Position {
                upstream: 2,
                upstream_cursor: None,
                offset: 0
            })
        ))
    );
    // Room runs out inside the page: resume in it.
    assert_eq!(
        advance(&order, &at, 9, Some("d"), 2),
        Some((
            5..7,
            Step::Full(Position {
                offset: 7,
                ..at.clone()
            })
        ))
    );
    // Room runs out exactly at the page's end: the next page is the cursor.
    assert_eq!(
        advance(&order, &at, 7, Some("d"), 2),
        Some((
            5..7,
            Step::Full(Position {
                upstream: 1,
                upstream_cursor: Some("d".into()),
                offset: 0
            })
        ))
    );
    let last = Position {
        upstream: 2,
        upstream_cursor: None,
        offset: 0,
    };
    assert_eq!(advance(&order, &last, 2, None, 2), Some((0..2, Step::End)));
    // An upstream that left the server: the cursor means nothing now.
    assert_eq!(
        advance(
            &order,
            &Position {
                upstream: 3,
                ..last.clone()
            },
            2,
            None,
            2
        ),
        None
    );
    // Offsets beyond u32 in hostile cursors cannot overflow.
    let far = Position {
        offset: u32::MAX,
        ..last
    };
    assert_eq!(
        advance(&order, &far, 3, None, usize::MAX),
        Some((3..3, Step::End))
    );
    let first = Position { offset: 0, ..far };
    assert_eq!(
        advance(&order, &first, usize::MAX, None, usize::MAX),
        Some((0..usize::MAX, Step::End))
    );
}

fn arb_cursor() -> impl Strategy<Value = Cursor> {
    (
        proptest::sample::select(ListKind::ALL.to_vec()),
        any::<u64>(),
        any::<u64>(),
        proptest::option::of(".{0,300}"),
        any::<u32>(),
        NOW - 100..NOW,
        proptest::option::of(any::<[u8; 16]>()),
    )
        .prop_map(
            |(list, server, upstream, upstream_cursor, offset, issued_at, session)| Cursor {
                list,
                server,
                position: Position {
                    upstream,
                    upstream_cursor,
                    offset,
                },
                issued_at,
                session,
            },
        )
}

proptest! {
    #[test]
    fn random_cursors_round_trip(c in arb_cursor()) {
        let s = CursorSealer::new(&KEY);
        let t = s.seal(&c).expect("sealable");
        prop_assert!(t.len() <= MAX_CURSOR_LEN);
        prop_assert!(t.bytes().all(is_cursor_char));
        prop_assert_eq!(s.open(t.as_bytes(), NOW, &expect_of(&c)), Ok(c));
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
        let s = CursorSealer::new(&KEY);
        let e = expect_of(&cursor());
        let _ = s.open(&bytes, NOW, &e);
        let mut prefixed = b"tc1.".to_vec();
        prefixed.extend_from_slice(&bytes);
        prop_assert!(s.open(&prefixed, NOW, &e).is_err());
    }

    #[test]
    fn random_base64_bodies_never_open(bytes in proptest::collection::vec(any::<u8>(), 0..2200)) {
        let s = CursorSealer::new(&KEY);
        let t = format!("tc1.{}", URL_SAFE_NO_PAD.encode(&bytes));
        let r = s.open(t.as_bytes(), NOW, &expect_of(&cursor()));
        prop_assert!(matches!(r, Err(CursorError::Malformed | CursorError::Tampered)), "{r:?}");
    }

    #[test]
    fn random_payloads_under_our_key_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let s = CursorSealer::new(&KEY);
        let _ = s.open(seal_raw(&bytes).as_bytes(), NOW, &expect_of(&cursor()));
    }

    #[test]
    fn advance_walks_any_listing_in_order(
        pages in proptest::collection::vec(
            proptest::collection::vec(proptest::collection::vec(0u32..5, 0..5), 0..4), 0..5),
        size in 1usize..8,
    ) {
        // Number the items so the expected listing is 0..n in order.
        let mut n = 0u32;
        let ups: Vec<(u64, Vec<Vec<u32>>)> = pages.iter().enumerate().map(|(i, up)| {
            (i as u64 * 7 + 1, up.iter().map(|p| p.iter().map(|_| { n += 1; n - 1 }).collect()).collect())
        }).collect();
        let (items, _) = walk(&ups, size);
        prop_assert_eq!(items, (0..n).collect::<Vec<_>>());
    }
}

use super::*;
use crate::http::sse::{decode_all, OwnedEvent};
use proptest::prelude::*;

const SESSION: [u8; 16] = [7; 16];
const A: u64 = 0xA;
const B: u64 = 0xB;
const MAX: usize = 64 * 1024;

fn mapper() -> IdMapper {
    IdMapper::new(&[3; 32])
}

/// Feeds `input` whole to a fresh rewriter for `upstream`, then finishes.
fn relay(upstream: u64, input: &[u8], ids: &mut EventIdState, seen: &mut Seen) -> Vec<u8> {
    let mut r = Rewriter::new(upstream, SESSION, MAX);
    let mut out = Vec::new();
    r.feed(input, ids, &mapper(), &mut out, seen).unwrap();
    r.finish(ids, &mapper(), &mut out, seen).unwrap();
    out
}

fn events(out: &[u8]) -> Vec<OwnedEvent> {
    decode_all(out, MAX, AtEnd::Discard).unwrap()
}

fn one(data: &str) -> String {
    format!("data: {data}\n\n")
}

fn scanned(data: &[u8]) -> jsonrpc::Message<'_> {
    match jsonrpc::scan(data, &LIMITS).unwrap() {
        Body::Single(m) => m,
        Body::Batch(_) => panic!("batch"),
    }
}

#[test]
fn two_upstreams_sending_id_0_get_distinct_ids_that_unwrap_back() {
    let req = r#"{"jsonrpc":"2.0","id":0,"method":"sampling/createMessage","params":{}}"#;
    let (mut ids, mut seen) = (EventIdState::new(), Seen::default());
    let a = events(&relay(A, one(req).as_bytes(), &mut ids, &mut seen));
    let b = events(&relay(B, one(req).as_bytes(), &mut ids, &mut seen));
    let id_a = scanned(&a[0].data).id.unwrap().text.to_vec();
    let id_b = scanned(&b[0].data).id.unwrap().text.to_vec();
    assert_ne!(id_a, id_b);
    assert!(id_a.starts_with(b"\"tg~"));
    assert_eq!(mapper().unwrap(&SESSION, &id_a), Ok((A, b"0".to_vec())));
    assert_eq!(mapper().unwrap(&SESSION, &id_b), Ok((B, b"0".to_vec())));
    // Only the id changed.
    let expect = req.replace(":0,", &format!(":{},", String::from_utf8_lossy(&id_a)));
    assert_eq!(a[0].data, expect.as_bytes());
    assert_eq!(seen, Seen::default(), "requests are not recorded");
}

#[test]
fn cancelled_request_id_is_wrapped_like_the_request() {
    let stream = [
        one(r#"{"jsonrpc":"2.0","id":"e-1","method":"elicitation/create","params":{}}"#),
        one(r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"e-1","reason":"timeout"}}"#),
    ]
    .concat();
    let out = events(&relay(
        A,
        stream.as_bytes(),
        &mut EventIdState::new(),
        &mut Seen::default(),
    ));
    let request = scanned(&out[0].data).id.unwrap().text.to_vec();
    let cancelled = scanned(&out[1].data).request_id.unwrap().text.to_vec();
    assert_eq!(request, cancelled);
    assert_eq!(
        mapper().unwrap(&SESSION, &cancelled),
        Ok((A, br#""e-1""#.to_vec()))
    );
    assert!(String::from_utf8_lossy(&out[1].data).ends_with(r#","reason":"timeout"}}"#));
}

#[test]
fn a_cancelled_without_a_readable_request_id_passes_unchanged() {
    let stream =
        one(r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":null}}"#);
    let mut seen = Seen::default();
    let out = relay(A, stream.as_bytes(), &mut EventIdState::new(), &mut seen);
    assert_eq!(out, stream.as_bytes());
    assert_eq!((seen.dropped, seen.unscanned), (0, 0));
}

#[test]
fn a_batch_gets_every_id_wrapped_in_place() {
    let batch = r#"[{"jsonrpc":"2.0","id":1,"method":"roots/list"},{"jsonrpc":"2.0","id":2,"result":{}},{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":9}},{"jsonrpc":"2.0","id":"x","method":"ping"}]"#;
    let mut seen = Seen::default();
    let out = events(&relay(
        A,
        one(batch).as_bytes(),
        &mut EventIdState::new(),
        &mut seen,
    ));
    let Body::Batch(ms) = jsonrpc::scan(&out[0].data, &LIMITS).unwrap() else {
        panic!("not a batch")
    };
    let m = mapper();
    assert_eq!(
        m.unwrap(&SESSION, ms[0].id.as_ref().unwrap().text),
        Ok((A, b"1".to_vec()))
    );
    assert_eq!(ms[1].id.as_ref().unwrap().text, b"2", "responses unchanged");
    assert_eq!(
        m.unwrap(&SESSION, ms[2].request_id.as_ref().unwrap().text),
        Ok((A, b"9".to_vec()))
    );
    assert_eq!(
        m.unwrap(&SESSION, ms[3].id.as_ref().unwrap().text),
        Ok((A, br#""x""#.to_vec()))
    );
    assert_eq!(seen.responses, vec![b"2".to_vec()]);
}

#[test]
fn list_changed_notifications_set_flags_and_pass() {
    let mut seen = Seen::default();
    let n = |m: &str| {
        one(&format!(
            r#"{{"jsonrpc":"2.0","method":"notifications/{m}"}}"#
        ))
    };
    let stream = [n("tools/list_changed"), n("resources/list_changed")].concat();
    let out = relay(A, stream.as_bytes(), &mut EventIdState::new(), &mut seen);
    assert_eq!(out, stream.as_bytes(), "unchanged");
    assert!(seen.tools_list_changed && seen.resources_list_changed);
    assert!(!seen.prompts_list_changed);
    relay(
        A,
        n("prompts/list_changed").as_bytes(),
        &mut EventIdState::new(),
        &mut seen,
    );
    assert!(seen.prompts_list_changed);
}

#[test]
fn responses_pass_unchanged_and_are_recorded() {
    let stream = [
        one(r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}}"#),
        one(r#"{"jsonrpc":"2.0","id":"c-7","result":{"content":[]}}"#),
        one(r#"{"jsonrpc":"2.0","id":8,"error":{"code":-32601,"message":"no"}}"#),
    ]
    .concat();
    let mut seen = Seen::default();
    let out = relay(A, stream.as_bytes(), &mut EventIdState::new(), &mut seen);
    assert_eq!(out, stream.as_bytes());
    assert_eq!(seen.responses, vec![br#""c-7""#.to_vec(), b"8".to_vec()]);
    assert_eq!(seen.unscanned, 0);
}

#[test]
fn data_that_is_not_json_rpc_passes_unchanged() {
    let stream = "data: hello\ndata: world\n\ndata: {\"a\":1}\n\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"id\":2,\"method\":\"x\"}\n\n";
    let mut seen = Seen::default();
    let out = relay(A, stream.as_bytes(), &mut EventIdState::new(), &mut seen);
    assert_eq!(out, stream.as_bytes());
    assert_eq!(seen.unscanned, 3);
}

#[test]
fn comments_retry_and_event_types_pass() {
    let stream = ": keep-alive\r\nretry: 1500\r\nevent: note\r\ndata: x\r\n\r\n:\r\n";
    let out = relay(
        A,
        stream.as_bytes(),
        &mut EventIdState::new(),
        &mut Seen::default(),
    );
    assert_eq!(
        out,
        b": keep-alive\nretry: 1500\n\nevent: note\ndata: x\n\n:\n"
    );
}

#[test]
fn an_event_cut_off_by_the_end_is_not_relayed() {
    let out = relay(
        A,
        b"data: a\n\ndata: b\n",
        &mut EventIdState::new(),
        &mut Seen::default(),
    );
    assert_eq!(out, b"data: a\n\n");
}

#[test]
fn an_oversized_event_is_an_error_that_stays() {
    let mut r = Rewriter::new(A, SESSION, 16);
    let (mut ids, mut seen, mut out) = (EventIdState::new(), Seen::default(), Vec::new());
    let e = r.feed(
        b"data: 0123456789abcdefg\n\n",
        &mut ids,
        &mapper(),
        &mut out,
        &mut seen,
    );
    assert_eq!(e, Err(RelayError::EventTooLarge { max: 16 }));
    let again = r.feed(b"data: x\n\n", &mut ids, &mapper(), &mut out, &mut seen);
    assert_eq!(again, Err(RelayError::EventTooLarge { max: 16 }));
    assert!(out.is_empty());
}

#[test]
fn an_id_that_cannot_be_wrapped_drops_the_event() {
    let long = format!("\"{}\"", "x".repeat(crate::mcp::idmap::MAX_ORIGINAL_LEN));
    let stream = [
        one(&format!(
            r#"{{"jsonrpc":"2.0","id":{long},"method":"ping"}}"#
        )),
        one(r#"{"jsonrpc":"2.0","method":"notifications/message","params":{}}"#),
    ]
    .concat();
    let mut seen = Seen::default();
    let out = events(&relay(
        A,
        stream.as_bytes(),
        &mut EventIdState::new(),
        &mut seen,
    ));
    assert_eq!(out.len(), 1);
    assert_eq!(seen.dropped, 1);
    assert_eq!(
        seen.last_drop,
        Some(DropReason::Unwrappable(WrapError::TooLong))
    );
}

#[test]
fn upstream_ids_become_the_state_and_never_reach_the_client() {
    let mut ids = EventIdState::new();
    let out = events(&relay(
        A,
        b"id: 41\ndata: a\n\ndata: b\n\n",
        &mut ids,
        &mut Seen::default(),
    ));
    let want = EventIdState::from_entries(vec![(A, b"41".to_vec())]).encode();
    assert_eq!(out[0].id.as_deref(), Some(want.as_bytes()));
    assert_eq!(
        out[1].id.as_deref(),
        Some(want.as_bytes()),
        "the id persists"
    );
    assert_eq!(ids.get(A), Some(&b"41"[..]));
    // No id set upstream: none for the client.
    let out = relay(
        B,
        b"data: c\n\n",
        &mut EventIdState::new(),
        &mut Seen::default(),
    );
    assert_eq!(out, b"data: c\n\n");
}

#[test]
fn merged_state_of_two_upstreams() {
    let mut ids = EventIdState::new();
    let mut seen = Seen::default();
    let mut a = Rewriter::new(A, SESSION, MAX);
    let mut b = Rewriter::new(B, SESSION, MAX);
    let mut out = Vec::new();
    a.feed(
        b"id: a1\ndata: 1\n\n",
        &mut ids,
        &mapper(),
        &mut out,
        &mut seen,
    )
    .unwrap();
    b.feed(
        b"id: b1\ndata: 2\n\n",
        &mut ids,
        &mapper(),
        &mut out,
        &mut seen,
    )
    .unwrap();
    a.feed(
        b"id: a2\ndata: 3\n\n",
        &mut ids,
        &mapper(),
        &mut out,
        &mut seen,
    )
    .unwrap();
    let evs = events(&out);
    let last = parse_last_event_id(evs[2].id.as_deref().unwrap()).unwrap();
    assert_eq!(last, vec![(A, b"a2".to_vec()), (B, b"b1".to_vec())]);
    let second = parse_last_event_id(evs[1].id.as_deref().unwrap()).unwrap();
    assert_eq!(second, vec![(A, b"a1".to_vec()), (B, b"b1".to_vec())]);
    // Resuming from the second event: each upstream gets its own Last-Event-ID.
    let resumed = EventIdState::from_entries(second);
    assert_eq!(resumed.get(A), Some(&b"a1"[..]));
    assert_eq!(resumed.get(B), Some(&b"b1"[..]));
    assert_eq!(resumed.get(0xC), None);
    // An empty upstream id resets that upstream's entry.
    b.feed(
        b"id:\ndata: 4\n\n",
        &mut ids,
        &mapper(),
        &mut out,
        &mut seen,
    )
    .unwrap();
    assert_eq!(ids.entries(), &[(A, b"a2".to_vec())]);
}

#[test]
fn untrackable_upstream_ids_leave_the_state_and_go_out_without_id() {
    let mut ids = EventIdState::new();
    let long = format!("id: {}\ndata: x\n\n", "i".repeat(256));
    for stream in [
        long.as_bytes(),
        b"id: a b\ndata: x\n\n",
        b"id: \x01\ndata: x\n\n",
    ] {
        let out = relay(A, stream, &mut ids, &mut Seen::default());
        assert_eq!(out, b"data: x\n\n");
    }
    assert!(ids.entries().is_empty());
    for u in 0..MAX_UPSTREAMS as u64 {
        assert!(ids.set(u, b"1"));
    }
    assert!(!ids.set(999, b"1"), "a 65th upstream is not tracked");
    assert!(ids.set(3, b"2"), "existing ones still are");
    // The encoding never passes 4096 bytes: big ids stop being tracked first.
    let mut ids = EventIdState::new();
    let big = [b'z'; MAX_UPSTREAM_ID_LEN];
    let mut n = 0;
    while ids.set(n, &big) {
        n += 1;
    }
    assert!(n > 0 && ids.encode().len() <= MAX_EVENT_ID_LEN);
    assert_eq!(
        parse_last_event_id(ids.encode().as_bytes()).unwrap(),
        ids.entries()
    );
}

#[test]
fn last_event_id_refusals() {
    let enc = |raw: &[u8]| format!("{EVENT_ID_PREFIX}{}", URL_SAFE_NO_PAD.encode(raw));
    let entry = |u: u64, id: &[u8]| {
        let mut v = u.to_be_bytes().to_vec();
        v.push(id.len() as u8);
        v.extend_from_slice(id);
        v
    };
    let p = |s: &str| parse_last_event_id(s.as_bytes());
    assert_eq!(p(&enc(&[0])), Ok(vec![]));
    assert_eq!(p("tge2.AA"), Err(EventIdError::Prefix));
    assert_eq!(p("tge1.A*"), Err(EventIdError::Base64));
    assert_eq!(p("tge1."), Err(EventIdError::Truncated));
    assert_eq!(p(&enc(&[1])), Err(EventIdError::Truncated));
    assert_eq!(
        p(&enc(&[&[1][..], &entry(1, b"abc")[..11]].concat())),
        Err(EventIdError::Truncated)
    );
    assert_eq!(
        p(&enc(&[&[1][..], &entry(1, b"abc"), &[0]].concat())),
        Err(EventIdError::Leftover)
    );
    assert_eq!(p(&enc(&[65])), Err(EventIdError::TooMany));
    assert_eq!(
        p(&enc(&[&[2][..], &entry(1, b"a"), &entry(1, b"b")].concat())),
        Err(EventIdError::Duplicate)
    );
    assert_eq!(
        p(&enc(&[&[1][..], &entry(1, b"")].concat())),
        Err(EventIdError::BadId)
    );
    assert_eq!(
        p(&enc(&[&[1][..], &entry(1, b"a\nb")].concat())),
        Err(EventIdError::BadId)
    );
    let long = format!("{EVENT_ID_PREFIX}{}", "A".repeat(MAX_EVENT_ID_LEN));
    assert_eq!(p(&long), Err(EventIdError::TooLong));
}

#[test]
fn splice_handles_several_edits_in_any_order() {
    let body = b"0123456789";
    assert_eq!(respell_id(body, 2..4, b"ab"), b"01ab456789");
    let out = splice(body, &mut [(7..8, &b"XYZ"[..]), (0..1, b""), (3..5, b"-")]);
    assert_eq!(out, b"12-56XYZ89");
}

// ---- properties ----------------------------------------------------------------------------

/// Pieces of an upstream stream: JSON-RPC of every kind, other data, ids, comments, retry,
/// event types, with LF, CR or CRLF line ends.
fn piece() -> impl Strategy<Value = String> {
    let data = prop_oneof![
        (0u32..3).prop_map(|i| format!(r#"{{"jsonrpc":"2.0","id":{i},"method":"roots/list"}}"#)),
        (0u32..3).prop_map(|i| format!(
            r#"{{"jsonrpc":"2.0","method":"notifications/cancelled","params":{{"requestId":{i}}}}}"#
        )),
        (0u32..3).prop_map(|i| format!(r#"{{"jsonrpc":"2.0","id":"r{i}","result":{{}}}}"#)),
        Just(
            r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"result":{}}]"#
                .to_string()
        ),
        Just(r#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}"#.to_string()),
        "[a-z {}:\"]{0,12}",
    ];
    prop_oneof![
        4 => data.prop_map(|d| format!("data: {d}\n")),
        1 => "[a-z0-9]{0,6}".prop_map(|i| format!("id: {i}\n")),
        1 => "[a-z ]{0,8}".prop_map(|c| format!(":{c}\n")),
        1 => (0u32..5000).prop_map(|r| format!("retry: {r}\n")),
        1 => Just("event: other\n".to_string()),
        3 => Just("\n".to_string()),
    ]
}

fn stream() -> impl Strategy<Value = Vec<u8>> {
    (prop::collection::vec(piece(), 0..24), 0u8..3).prop_map(|(pieces, ends)| {
        let s = pieces.concat();
        match ends {
            0 => s,
            1 => s.replace('\n', "\r\n"),
            _ => s.replace('\n', "\r"),
        }
        .into_bytes()
    })
}

fn feed_in_parts(input: &[u8], cuts: &[usize]) -> (Vec<u8>, EventIdState, Seen) {
    let mut r = Rewriter::new(A, SESSION, MAX);
    let (mut ids, mut seen, mut out) = (EventIdState::new(), Seen::default(), Vec::new());
    let m = mapper();
    let mut at = 0;
    for &c in cuts.iter().chain(std::iter::once(&input.len())) {
        let c = c.clamp(at, input.len());
        r.feed(&input[at..c], &mut ids, &m, &mut out, &mut seen)
            .unwrap();
        at = c;
    }
    r.finish(&mut ids, &m, &mut out, &mut seen).unwrap();
    (out, ids, seen)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any split of the upstream stream gives the client the same bytes and the proxy the same
    /// `Seen` and state as one feed: every single cut, and a random set of cuts.
    #[test]
    fn every_split_gives_the_output_of_one_feed(
        input in stream(),
        mut cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let whole = feed_in_parts(&input, &[]);
        for cut in 0..=input.len() {
            prop_assert_eq!(&feed_in_parts(&input, &[cut]), &whole, "cut at {}", cut);
        }
        let mut at: Vec<usize> = cuts.drain(..).map(|i| i.index(input.len() + 1)).collect();
        at.sort_unstable();
        prop_assert_eq!(&feed_in_parts(&input, &at), &whole);
        // What the client gets is a valid stream whose ids are ours.
        for e in decode_all(&whole.0, MAX, AtEnd::Discard).unwrap() {
            if let Some(id) = e.id {
                prop_assert!(parse_last_event_id(&id).is_ok());
            }
        }
    }

    #[test]
    fn parse_last_event_id_never_panics(text in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = parse_last_event_id(&text);
        let mut prefixed = EVENT_ID_PREFIX.as_bytes().to_vec();
        prefixed.extend_from_slice(URL_SAFE_NO_PAD.encode(&text).as_bytes());
        if let Ok(entries) = parse_last_event_id(&prefixed) {
            // Whatever it accepts, it reads back from its own encoding.
            let again = EventIdState::from_entries(entries.clone()).encode();
            prop_assert_eq!(parse_last_event_id(again.as_bytes()), Ok(entries));
        }
    }

    #[test]
    fn state_encoding_round_trips(
        sets in prop::collection::vec((0u64..80, "[!-~]{0,40}"), 0..100),
    ) {
        let mut ids = EventIdState::new();
        for (u, id) in &sets {
            ids.set(*u, id.as_bytes());
        }
        let text = ids.encode();
        prop_assert!(text.len() <= MAX_EVENT_ID_LEN);
        prop_assert_eq!(parse_last_event_id(text.as_bytes()), Ok(ids.entries().to_vec()));
    }
}

#[test]
fn a_held_stream_stamps_results_and_keeps_server_requests_back() {
    let stream = [
        "id: 5\n".to_string() + &one(r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"t","progress":1}}"#),
        one(r#"{"jsonrpc":"2.0","id":"s1","method":"sampling/createMessage","params":{}}"#),
        one(r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"s1"}}"#),
        one(r#"[{"jsonrpc":"2.0","id":2,"method":"roots/list"},{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"x"}}]"#),
        one(r#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#),
    ]
    .concat();
    let (mut ids, mut seen) = (EventIdState::new(), Seen::default());
    let mut r = Rewriter::held(A, br#""resultType":"complete""#, MAX);
    let mut out = Vec::new();
    r.feed(stream.as_bytes(), &mut ids, &mapper(), &mut out, &mut seen)
        .unwrap();
    r.finish(&mut ids, &mapper(), &mut out, &mut seen).unwrap();
    let ev = events(&out);
    let data: Vec<&[u8]> = ev.iter().map(|e| e.data.as_slice()).collect();
    assert_eq!(data.len(), 3, "{:?}", String::from_utf8_lossy(&out));
    assert!(data[0].starts_with(br#"{"jsonrpc":"2.0","method":"notifications/progress""#));
    // The upstream's event ids are not relayed (nothing to resume them in).
    assert!(ev.iter().all(|e| e.id.is_none()));
    // A batch keeps its notification, as an event of its own; its request is held back.
    assert_eq!(
        data[1],
        br#"{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"x"}}"#
    );
    assert_eq!(
        data[2],
        br#"{"jsonrpc":"2.0","id":1,"result":{"resultType":"complete","content":[]}}"#
    );
    assert_eq!(
        seen.held_requests,
        vec![
            (b"\"s1\"".to_vec(), "sampling/createMessage".to_string()),
            (b"2".to_vec(), "roots/list".to_string()),
        ]
    );
    assert_eq!(seen.responses, vec![b"1".to_vec()]);
}

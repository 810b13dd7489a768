use super::*;
use proptest::prelude::*;

/// Everything a stream yields, owned, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Got {
    Event(OwnedEvent, Option<Range<u64>>),
    Comment(Vec<u8>),
    Retry(u64),
}

fn collect(into: &mut Vec<Got>) -> impl FnMut(Item<'_>) + '_ {
    move |item| {
        into.push(match item {
            Item::Event(e) => Got::Event(e.to_owned(), e.data_span.clone()),
            Item::Comment(c) => Got::Comment(c.to_vec()),
            Item::Retry(ms) => Got::Retry(ms),
        })
    }
}

/// Decodes `stream` fed in pieces cut at `cuts` (sorted offsets).
fn decode_split(
    stream: &[u8],
    cuts: &[usize],
    max: usize,
    at_end: AtEnd,
) -> Result<Vec<Got>, SseError> {
    let mut got = Vec::new();
    let mut d = Decoder::new(max);
    let mut from = 0;
    for &c in cuts.iter().chain(std::iter::once(&stream.len())) {
        let c = c.clamp(from, stream.len());
        d.feed(&stream[from..c], collect(&mut got))?;
        from = c;
    }
    d.finish(at_end, collect(&mut got))?;
    Ok(got)
}

fn events(stream: &[u8]) -> Vec<OwnedEvent> {
    decode_all(stream, 1 << 20, AtEnd::Discard).unwrap()
}

fn ev(event: &str, data: &str, id: Option<&str>) -> OwnedEvent {
    OwnedEvent {
        event: event.into(),
        data: data.into(),
        id: id.map(Into::into),
    }
}

#[test]
fn data_lines_join_and_one_space_is_stripped() {
    assert_eq!(
        events(b"data: a\ndata:b\ndata:  c\n\n"),
        vec![ev("", "a\nb\n c", None)]
    );
}

#[test]
fn every_line_ending_counts() {
    let want = vec![ev("x", "1\n2", None), ev("", "3", None)];
    for s in [
        &b"event: x\ndata: 1\ndata: 2\n\ndata: 3\n\n"[..],
        b"event: x\r\ndata: 1\r\ndata: 2\r\n\r\ndata: 3\r\n\r\n",
        b"event: x\rdata: 1\rdata: 2\r\rdata: 3\r\r",
        b"event: x\r\ndata: 1\rdata: 2\n\r\ndata: 3\n\r",
    ] {
        assert_eq!(events(s), want, "{:?}", String::from_utf8_lossy(s));
    }
}

#[test]
fn id_persists_and_nul_ids_are_ignored() {
    let got = events(b"id: 1\ndata: a\n\ndata: b\n\nid: 2\0\ndata: c\n\nid\ndata: d\n\n");
    assert_eq!(
        got,
        vec![
            ev("", "a", Some("1")),
            ev("", "b", Some("1")),
            ev("", "c", Some("1")),
            ev("", "d", Some("")),
        ]
    );
    let mut d = Decoder::new(100);
    d.feed(b"id: 7\n\n", |_| panic!("no data, no event"))
        .unwrap();
    assert_eq!(d.last_event_id(), Some(&b"7"[..]));
}

#[test]
fn comments_retry_and_unknown_fields() {
    let mut got = Vec::new();
    let mut d = Decoder::new(100);
    d.feed(
        b": keep-alive\n:\nretry: 1500\nretry: 1x\nretry:\nretry: -1\nfoo: bar\ndata\n\n",
        collect(&mut got),
    )
    .unwrap();
    assert_eq!(
        got,
        vec![
            Got::Comment(b" keep-alive".to_vec()),
            Got::Comment(vec![]),
            Got::Retry(1500),
            Got::Event(ev("", "", None), Some(67..67)),
        ]
    );
}

#[test]
fn an_event_without_data_is_not_dispatched_and_resets_its_type() {
    assert_eq!(events(b"event: a\n\ndata: x\n\n"), vec![ev("", "x", None)]);
    // The priming event (an id and one empty data line) is dispatched with empty data.
    assert_eq!(events(b"id: p\ndata: \n\n"), vec![ev("", "", Some("p"))]);
}

#[test]
fn a_leading_bom_is_skipped_once_even_when_split() {
    let s = b"\xEF\xBB\xBFdata: a\n\n\xEF\xBB\xBFdata: b\n\n";
    for cut in 0..=s.len() {
        let got = decode_split(s, &[1, 2, cut], 100, AtEnd::Discard).unwrap();
        // The second BOM is part of a field name, so that line is ignored.
        assert_eq!(
            got,
            vec![Got::Event(ev("", "a", None), Some(9..10))],
            "cut {cut}"
        );
    }
    // Part of a BOM is not one: its bytes start the first line (an unknown field here).
    assert_eq!(
        events(b"\xEF\xBBdata: a\n\ndata: b\n\n"),
        vec![ev("", "b", None)]
    );
    let got = decode_split(b"\xEFdata: a\n\n", &[1], 100, AtEnd::Discard).unwrap();
    assert!(got.is_empty(), "{got:?}");
}

#[test]
fn the_end_of_the_stream() {
    let s = b"data: a\n\ndata: b";
    assert_eq!(events(s), vec![ev("", "a", None)]);
    let all = decode_all(s, 100, AtEnd::Dispatch).unwrap();
    assert_eq!(all, vec![ev("", "a", None), ev("", "b", None)]);
    let all = decode_all(b"data: a\ndata: b\n", 100, AtEnd::Dispatch).unwrap();
    assert_eq!(all, vec![ev("", "a\nb", None)]);
}

#[test]
fn data_span_points_into_the_stream_for_one_data_line() {
    let s = b"id: 1\r\ndata: {\"x\":1}\r\n\r\ndata: a\ndata: b\n\n";
    let got = decode_split(s, &[9, 20], 100, AtEnd::Discard).unwrap();
    let Got::Event(_, Some(span)) = &got[0] else {
        panic!("{got:?}")
    };
    assert_eq!(&s[span.start as usize..span.end as usize], b"{\"x\":1}");
    assert!(matches!(got[1], Got::Event(_, None)));
}

#[test]
fn events_over_the_bound_fail_and_stay_failed() {
    let mut d = Decoder::new(8);
    assert!(d.feed(b"data: 12345678\n\n", |_| {}).is_ok(), "8 bytes fit");
    assert_eq!(
        d.feed(b"data: 1234\ndata: 5678\n\n", |_| {}),
        Err(SseError::TooLarge { max: 8 })
    );
    assert!(d.feed(b"data: 1\n\n", |_| {}).is_err());
    // A line that never ends is held only up to the bound, whatever the feeds.
    let mut d = Decoder::new(64);
    let mut res = Ok(());
    for _ in 0..100 {
        res = d.feed(b": a comment that never ends ", |_| {});
        if res.is_err() {
            break;
        }
    }
    assert_eq!(res, Err(SseError::TooLarge { max: 64 }));
}

#[test]
fn multibyte_characters_pass_through_at_any_split() {
    let s = "data: héllo → 😀\nevent: ñ\n\n".as_bytes();
    for cut in 0..=s.len() {
        let got = decode_split(s, &[cut], 100, AtEnd::Discard).unwrap();
        let Got::Event(e, _) = &got[0] else { panic!() };
        assert_eq!(e.data, "héllo → 😀".as_bytes());
        assert_eq!(e.event, "ñ".as_bytes());
    }
}

#[test]
fn the_encoder_writes_what_the_decoder_reads() {
    let mut out = Vec::new();
    let f = Fields {
        id: Some(b"3-1"),
        event: Some(b"message"),
        retry: Some(250),
    };
    write_event(&mut out, &f, b"{\"a\":1}");
    write_comment(&mut out, b" keep-alive");
    write_event(&mut out, &Fields::default(), b"two\r\nlines\rand\nmore");
    write_event_with(&mut out, &Fields::default(), |o| o.extend_from_slice(b""));
    assert!(out.starts_with(b"id: 3-1\nevent: message\nretry: 250\ndata: {\"a\":1}\n\n"));
    let got = decode_split(&out, &[], 1000, AtEnd::Discard).unwrap();
    assert_eq!(
        got,
        vec![
            Got::Retry(250),
            Got::Event(ev("message", "{\"a\":1}", Some("3-1")), Some(40..47)),
            Got::Comment(b" keep-alive".to_vec()),
            Got::Event(ev("", "two\nlines\nand\nmore", Some("3-1")), None),
            Got::Event(ev("", "", Some("3-1")), Some(112..112)),
        ]
    );
}

/// Streams built from the pieces that matter: field names, colons, spaces, every line ending,
/// BOMs, NULs, multi-byte characters, comments.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(&b"data"[..]),
        Just(&b"data: "[..]),
        Just(&b"event:"[..]),
        Just(&b"id: "[..]),
        Just(&b"retry: "[..]),
        Just(&b":"[..]),
        Just(&b" "[..]),
        Just(&b"\n"[..]),
        Just(&b"\r"[..]),
        Just(&b"\r\n"[..]),
        Just(&b"\n\n"[..]),
        Just(&b"\xEF\xBB\xBF"[..]),
        Just(&b"\0"[..]),
        Just("é😀".as_bytes()),
        Just(&b"12"[..]),
        Just(&b"{\"x\":1}"[..]),
    ];
    proptest::collection::vec(piece, 0..40).prop_map(|ps| ps.concat())
}

proptest! {
    #[test]
    fn any_split_decodes_like_the_whole(
        s in stream(),
        mut cuts in proptest::collection::vec(0usize..200, 0..8),
        dispatch in any::<bool>(),
    ) {
        cuts.sort_unstable();
        let at_end = if dispatch { AtEnd::Dispatch } else { AtEnd::Discard };
        let whole = decode_split(&s, &[], 1 << 16, at_end);
        let split = decode_split(&s, &cuts, 1 << 16, at_end);
        prop_assert_eq!(&whole, &split);
        // Byte-at-a-time too.
        let every: Vec<usize> = (0..s.len()).collect();
        prop_assert_eq!(&whole, &decode_split(&s, &every, 1 << 16, at_end));
        // Spans point at the data in the stream.
        for g in whole.unwrap() {
            if let Got::Event(e, Some(span)) = g {
                prop_assert_eq!(&s[span.start as usize..span.end as usize], &e.data[..]);
            }
        }
    }

    #[test]
    fn the_bound_is_kept_at_any_split(
        s in stream(),
        mut cuts in proptest::collection::vec(0usize..200, 0..8),
        max in 0usize..40,
    ) {
        cuts.sort_unstable();
        // An error, or every event within the bound; a split never makes the stream pass.
        if let Ok(got) = decode_split(&s, &cuts, max, AtEnd::Discard) {
            for g in got {
                if let Got::Event(e, _) = g {
                    prop_assert!(e.data.len() + e.event.len() <= max);
                }
            }
        }
    }

    #[test]
    fn encoded_data_round_trips(data in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut out = Vec::new();
        write_event(&mut out, &Fields::default(), &data);
        let got = events(&out);
        // Line ends come back as LF; everything else as written.
        let mut want = Vec::new();
        let mut i = 0;
        while i < data.len() {
            match data[i] {
                b'\r' if data.get(i + 1) == Some(&b'\n') => { want.push(b'\n'); i += 1; }
                b'\r' => want.push(b'\n'),
                b => want.push(b),
            }
            i += 1;
        }
        prop_assert_eq!(got.len(), 1);
        prop_assert_eq!(&got[0].data, &want);
    }
}

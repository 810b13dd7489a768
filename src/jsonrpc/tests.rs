//! Unit tests of the scanner's API; the broad catalogue lives in tests/scanner/cases/.

use super::*;

fn single(body: &str) -> Message<'_> {
    match scan(body.as_bytes(), &ScanLimits::default()) {
        Ok(Body::Single(m)) => m,
        other => panic!("expected a single message from {body}, got {other:?}"),
    }
}

fn fail(body: &[u8]) -> ScanError {
    match scan(body, &ScanLimits::default()) {
        Err(e) => e,
        Ok(b) => panic!(
            "expected an error from {:?}, got {b:?}",
            String::from_utf8_lossy(body)
        ),
    }
}

fn kind(body: &str) -> ScanErrorKind {
    fail(body.as_bytes()).kind
}

const TOOLS_CALL: &str = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"get_weather","arguments":{"city":"Paris","days":[1,2]},"_meta":{"progressToken":"tok-1","io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#;

#[test]
fn reads_every_field_of_a_tools_call() {
    let m = single(TOOLS_CALL);
    assert_eq!(m.kind, MessageKind::Request);
    let id = m.id.as_ref().unwrap();
    assert_eq!((id.text, id.start), (&b"7"[..], 22));
    let method = m.method.as_ref().unwrap();
    assert_eq!(method.value, "tools/call");
    assert!(matches!(method.value, Cow::Borrowed(_)));
    assert_eq!(&TOOLS_CALL[method.span.clone()], "\"tools/call\"");
    let name = m.name.as_ref().unwrap();
    assert_eq!(&TOOLS_CALL[name.span.clone()], "\"get_weather\"");
    let token = m.progress_token.as_ref().unwrap();
    assert_eq!(token.text, b"\"tok-1\"");
    assert_eq!(
        &TOOLS_CALL.as_bytes()[token.start..token.start + 7],
        b"\"tok-1\""
    );
    assert_eq!(m.meta_protocol_version.unwrap().value, "2026-07-28");
    assert_eq!(m.uri, None);
    assert_eq!(m.protocol_version, None);
    assert_eq!(m.span, 0..TOOLS_CALL.len());
}

#[test]
fn classifies_every_kind() {
    assert_eq!(
        single(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).kind,
        MessageKind::Notification
    );
    let r = single(r#"{"jsonrpc":"2.0","id":"a","result":{"protocolVersion":"2025-06-18"}}"#);
    assert_eq!(r.kind, MessageKind::Response);
    assert_eq!(r.id.unwrap().text, b"\"a\"");
    assert_eq!(r.protocol_version.unwrap().value, "2025-06-18");
    let e = single(r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"no"}}"#);
    assert_eq!(e.kind, MessageKind::Error);
    let i = single(
        r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-03-26"}}"#,
    );
    assert_eq!(i.protocol_version.unwrap().value, "2025-03-26");
}

#[test]
fn decodes_escapes_in_keys_and_values() {
    let m = single(
        r#"{"jsonr\u0070c":"2\u002e0","\u0069d":1,"method":"tools/del\u0065te","params":{"n\u0061me":"x\ty"}}"#,
    );
    assert_eq!(m.method.as_ref().unwrap().value, "tools/delete");
    assert!(matches!(m.method.unwrap().value, Cow::Owned(_)));
    assert_eq!(m.name.unwrap().value, "x\ty");
}

#[test]
fn rejects_duplicates_of_read_keys_even_when_escaped() {
    assert_eq!(
        kind(r#"{"jsonrpc":"2.0","id":1,"method":"a","method":"b"}"#),
        ScanErrorKind::DuplicateKey("method")
    );
    assert_eq!(
        kind(r#"{"jsonrpc":"2.0","id":1,"method":"a","params":{"name":"x","n\u0061me":"y"}}"#),
        ScanErrorKind::DuplicateKey("name")
    );
    assert_eq!(
        kind(
            r#"{"jsonrpc":"2.0","id":1,"method":"a","params":{"_meta":{"progressToken":1,"progressToken":2}}}"#
        ),
        ScanErrorKind::DuplicateKey("progressToken")
    );
    assert_eq!(
        kind(r#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"a","protocolVersion":"b"}}"#),
        ScanErrorKind::DuplicateKey("protocolVersion")
    );
    let e = fail(br#"{"jsonrpc":"2.0","id":1,"method":"a","method":"b"}"#);
    assert_eq!(e.offset, 37);
    assert_eq!(e.to_string(), "duplicate key \"method\" at byte 37");
}

#[test]
fn rejects_other_duplicates_at_read_levels_only() {
    assert_eq!(
        kind(r#"{"jsonrpc":"2.0","method":"a","x":1,"x":2}"#),
        ScanErrorKind::DuplicateKey(message::OTHER_KEY)
    );
    assert_eq!(
        kind(r#"{"jsonrpc":"2.0","method":"a","params":{"arguments":{},"arguments":{}}}"#),
        ScanErrorKind::DuplicateKey("arguments")
    );
    // The top level of `arguments` is read (a policy decides on its keys).
    assert_eq!(
        kind(r#"{"jsonrpc":"2.0","method":"a","params":{"arguments":{"x":1,"\u0078":2}}}"#),
        ScanErrorKind::DuplicateKey(message::OTHER_KEY)
    );
    // Below the levels the scanner reads, duplicates are forwarded as bytes.
    single(r#"{"jsonrpc":"2.0","method":"a","params":{"arguments":{"x":{"y":1,"y":2}}}}"#);
    single(r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"a":1,"a":2}]}}"#);
}

#[test]
fn duplicate_detection_scales_past_the_inline_set() {
    let mut body = String::from(r#"{"jsonrpc":"2.0","method":"a","params":{"#);
    for i in 0..20_000 {
        body.push_str(&format!("\"k{i}\":{i},"));
    }
    body.push_str(r#""k\u0031":1}}"#);
    assert_eq!(kind(&body), ScanErrorKind::DuplicateKey(message::OTHER_KEY));
    // Escaped keys spill too.
    let mut body = String::from(r#"{"jsonrpc":"2.0","method":"a","params":{"#);
    for i in 0..40 {
        body.push_str(&format!("\"\\u006b{i}\":{i},"));
    }
    body.push_str(r#""name":"n"}}"#);
    assert_eq!(single(&body).name.unwrap().value, "n");
}

#[test]
fn checks_jsonrpc_id_method_params_types() {
    assert_eq!(
        kind(r#"{"id":1,"method":"a"}"#),
        ScanErrorKind::BadJsonrpcVersion
    );
    assert_eq!(
        kind(r#"{"jsonrpc":"1.0","id":1,"method":"a"}"#),
        ScanErrorKind::BadJsonrpcVersion
    );
    assert_eq!(
        kind(r#"{"jsonrpc":2.0,"id":1,"method":"a"}"#),
        ScanErrorKind::BadJsonrpcVersion
    );
    for id in ["null", "true", "{}", "[1]"] {
        assert_eq!(
            kind(&format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"a"}}"#)),
            ScanErrorKind::BadId,
            "{id}"
        );
    }
    for method in ["null", "1", "false", "{}", "[]"] {
        assert_eq!(
            kind(&format!(r#"{{"jsonrpc":"2.0","id":1,"method":{method}}}"#)),
            ScanErrorKind::BadMethod,
            "{method}"
        );
    }
    for params in ["null", "1", "\"x\"", "true"] {
        assert_eq!(
            kind(&format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"a","params":{params}}}"#
            )),
            ScanErrorKind::BadParams,
            "{params}"
        );
    }
    assert_eq!(
        kind(r#"{"jsonrpc":"2.0","id":1,"method":"a","params":{"_meta":{"progressToken":null}}}"#),
        ScanErrorKind::BadParams
    );
    let m = single(r#"{"jsonrpc":"2.0","id":1,"method":"a","params":[{"name":"x"}]}"#);
    assert_eq!(m.name, None);
    let m = single(
        r#"{"jsonrpc":"2.0","id":-1.5e3,"method":"a","params":{"name":5,"uri":"file:///x","_meta":{"progressToken":42}}}"#,
    );
    assert_eq!(m.id.unwrap().text, b"-1.5e3");
    assert_eq!(m.name, None);
    assert_eq!(m.uri.unwrap().value, "file:///x");
    assert_eq!(m.progress_token.unwrap().text, b"42");
}

#[test]
fn reads_a_cancelled_request_id_and_refuses_two() {
    let body = r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"r\u0031","reason":"x"}}"#;
    let m = single(body);
    assert_eq!(m.kind, MessageKind::Notification);
    let r = m.request_id.unwrap();
    assert_eq!(r.text, br#""r\u0031""#, "raw text, escapes kept");
    assert_eq!(&body.as_bytes()[r.start..r.start + r.text.len()], r.text);
    let m =
        single(r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":-7}}"#);
    assert_eq!(m.request_id.unwrap().text, b"-7");
    // Not a string or number: validated, left unread, not refused.
    for v in ["null", "true", "{\"a\":1}", "[1]"] {
        let body = format!(
            r#"{{"jsonrpc":"2.0","method":"notifications/cancelled","params":{{"requestId":{v}}}}}"#
        );
        assert_eq!(single(&body).request_id, None, "{v}");
    }
    // Only at params level: elsewhere it is any other key.
    let m = single(
        r#"{"jsonrpc":"2.0","id":1,"method":"a","params":{"_meta":{"requestId":1}},"requestId":2}"#,
    );
    assert_eq!(m.request_id, None);
    assert_eq!(
        kind(
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1,"request\u0049d":2}}"#
        ),
        ScanErrorKind::DuplicateKey("requestId")
    );
}

#[test]
fn reads_a_list_cursor_and_refuses_two() {
    let m = single(
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"cursor":"tc1.\u0041b"}}"#,
    );
    let c = m.cursor.unwrap();
    assert_eq!(c.value, "tc1.Ab", "escapes decoded");
    assert_eq!(m.name, None);
    // Not a string: not read (the upstream or the gateway answers -32602).
    let m = single(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"cursor":7}}"#);
    assert_eq!(m.cursor, None);
    // Two cursors: parsers would disagree on which page was asked for.
    assert!(matches!(
        kind(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"cursor":"a","cursor":"b"}}"#
        ),
        ScanErrorKind::DuplicateKey(_)
    ));
}

#[test]
fn refuses_ambiguous_shapes() {
    let not = |b: &str| matches!(kind(b), ScanErrorKind::NotAMessage(_));
    assert!(not(r#"{"jsonrpc":"2.0","id":1,"method":"a","result":{}}"#));
    assert!(not(r#"{"jsonrpc":"2.0","id":1,"result":{},"error":{}}"#));
    assert!(not(r#"{"jsonrpc":"2.0","id":1}"#));
    assert!(not(r#"{"jsonrpc":"2.0","result":{}}"#));
    assert!(not(r#"{"jsonrpc":"2.0"}"#));
    assert!(not(r#"{"jsonrpc":"2.0","id":1,"error":5}"#));
}

#[test]
fn a_syntax_error_wins_over_an_earlier_request_error() {
    let e = fail(br#"{"jsonrpc":"2.0","id":null,"method":"a"} x"#);
    assert_eq!(e.kind, ScanErrorKind::TrailingBytes);
    assert!(e.is_parse_error());
    let e = fail(br#"[1, {"jsonrpc":"2.0","method":"a","params":{"a":"\ud800"}}]"#);
    assert_eq!(e.kind, ScanErrorKind::LoneSurrogate);
    let e = fail(br#"{"jsonrpc":"2.0","id":null,"method":"a"}"#);
    assert!(!e.is_parse_error());
    assert_eq!(e.to_string(), "\"id\" is not a string or number at byte 22");
}

#[test]
fn batches() {
    let body = r#"[{"jsonrpc":"2.0","id":1,"method":"a"}, {"jsonrpc":"2.0","method":"b"}]"#;
    match scan(body.as_bytes(), &ScanLimits::default()).unwrap() {
        Body::Batch(v) => {
            assert_eq!(v.len(), 2);
            assert_eq!(v[1].kind, MessageKind::Notification);
            assert_eq!(
                &body[v[1].span.clone()],
                r#"{"jsonrpc":"2.0","method":"b"}"#
            );
        }
        b => panic!("{b:?}"),
    }
    assert_eq!(kind("[]"), ScanErrorKind::EmptyBatch);
    assert_eq!(kind(" [ ] "), ScanErrorKind::EmptyBatch);
    assert_eq!(
        kind(r#"[{"jsonrpc":"2.0","method":"a"},1]"#),
        ScanErrorKind::NotAnObject
    );
    assert_eq!(
        kind(r#"[[{"jsonrpc":"2.0","method":"a"}]]"#),
        ScanErrorKind::NotAnObject
    );
    let limits = ScanLimits {
        max_batch_len: 2,
        ..ScanLimits::default()
    };
    let three = r#"[{"jsonrpc":"2.0","method":"a"},{"jsonrpc":"2.0","method":"a"},{"jsonrpc":"2.0","method":"a"}]"#;
    assert_eq!(
        scan(three.as_bytes(), &limits).unwrap_err().kind,
        ScanErrorKind::BatchTooLong
    );
    assert_eq!(scan(three.as_bytes(), &limits).unwrap_err().offset, 63);
}

#[test]
fn top_level_must_be_object_or_array() {
    for b in ["1", "\"x\"", "null", "true"] {
        assert_eq!(kind(b), ScanErrorKind::NotAnObject, "{b}");
    }
    assert_eq!(kind(""), ScanErrorKind::Empty);
    assert_eq!(kind(" \n\t\r"), ScanErrorKind::Empty);
    assert_eq!(kind("\u{c}{}"), ScanErrorKind::Syntax("expected a value"));
}

#[test]
fn utf8_and_bom() {
    let e = fail(b"{\"jsonrpc\":\"2.0\",\"method\":\"a\xff\"}");
    assert_eq!((e.kind, e.offset), (ScanErrorKind::InvalidUtf8, 28));
    assert_eq!(
        fail(b"\xEF\xBB\xBF{}").kind,
        ScanErrorKind::Syntax("UTF-8 byte order mark")
    );
    let m = single("{\"jsonrpc\":\"2.0\",\"method\":\"caf\u{e9} \u{1F600}\"}");
    assert_eq!(m.method.unwrap().value, "café 😀");
}

#[test]
fn depth_is_counted_from_the_top() {
    let nest = |n: usize| {
        format!(
            r#"{{"jsonrpc":"2.0","method":"a","params":{{"x":{}1{}}}}}"#,
            "[".repeat(n),
            "]".repeat(n)
        )
    };
    // message (1) + params (2) + n arrays.
    single(&nest(62));
    assert_eq!(kind(&nest(63)), ScanErrorKind::TooDeep);
    let limits = ScanLimits {
        max_depth: 0,
        ..ScanLimits::default()
    };
    assert_eq!(
        scan(b"{}", &limits).unwrap_err().kind,
        ScanErrorKind::TooDeep
    );
    let limits = ScanLimits {
        max_depth: 1,
        ..ScanLimits::default()
    };
    assert_eq!(
        scan(br#"{"jsonrpc":"2.0","method":"a","params":{}}"#, &limits)
            .unwrap_err()
            .kind,
        ScanErrorKind::TooDeep
    );
    assert_eq!(
        scan(br#"[{"jsonrpc":"2.0","method":"a"}]"#, &limits)
            .unwrap_err()
            .kind,
        ScanErrorKind::TooDeep
    );
    // A very deep body fails fast and never overflows the stack.
    let deep = "[".repeat(1_000_000);
    assert_eq!(kind(&deep), ScanErrorKind::TooDeep);
}

#[test]
fn every_error_displays_on_one_line() {
    for b in [
        &b""[..],
        b"\xff",
        b"{",
        b"{}x",
        b"[]",
        b"1",
        br#"{"a":"\ud800"}"#,
        b"[1e999]",
    ] {
        let e = fail(b);
        let s = e.to_string();
        assert!(
            !s.contains('\n') && s.ends_with(&format!(" at byte {}", e.offset)),
            "{s}"
        );
        assert!(!e.kind.as_str().is_empty());
    }
}

#[test]
fn reads_the_top_level_keys_of_arguments() {
    let m = single(TOOLS_CALL);
    let args = m.arguments.as_ref().expect("arguments read");
    assert_eq!(args.text, br#"{"city":"Paris","days":[1,2]}"#);
    assert_eq!(&TOOLS_CALL.as_bytes()[args.start..args.start + 1], b"{");
    let keys: Vec<_> = m.argument_keys().collect();
    assert_eq!(keys, ["city", "days"]);
    assert!(keys.iter().all(|k| matches!(k, Cow::Borrowed(_))));

    // Escaped keys are decoded; nested objects' keys are not listed.
    let m = single(
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments": { "a\u0062" : {"c":1} , "" : [] } }}"#,
    );
    let keys: Vec<_> = m.argument_keys().collect();
    assert_eq!(keys, ["ab", ""]);
    assert!(matches!(keys[0], Cow::Owned(_)));

    // Empty, absent, not an object: no keys (and `arguments` None unless an object).
    let m = single(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":{}}}"#);
    assert_eq!(m.arguments.as_ref().map(|a| a.text), Some(&b"{}"[..]));
    assert_eq!(m.argument_keys().count(), 0);
    for body in [
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":[1,{"a":1}]}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":"{\"a\":1}"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":[{"arguments":{"a":1}}]}"#,
    ] {
        let m = single(body);
        assert_eq!(m.arguments, None, "{body}");
        assert_eq!(m.argument_keys().count(), 0, "{body}");
    }
}

#[test]
fn kept_argument_keys_are_the_keys_lexed_again() {
    use crate::jsonrpc::ArgumentKeys;
    let call = |args: &str| {
        format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"arguments":{args}}}}}"#
        )
    };
    let nine = (0..9)
        .map(|i| format!("\"k{i}\": {i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let eight = (0..8)
        .map(|i| format!("\"k{i}\" :[{i}]"))
        .collect::<Vec<_>>()
        .join(",");
    for (args, kept) in [
        (r#"{"city":"Paris","days":[1,2]}"#.to_string(), true),
        (r#"{ "" : {"nested":1} ,"x\ty":2}"#.to_string(), false),
        (r#"{"a":"\"}\"","b":{"c":[{"d":"}"}]}}"#.to_string(), true),
        (format!("{{{eight}}}"), true),
        (format!("{{{nine}}}"), false),
        (r#"{"a\u0062":1,"c":2}"#.to_string(), false),
        ("{}".to_string(), true),
    ] {
        let body = call(&args);
        let m = single(&body);
        let text = m.arguments.as_ref().expect("arguments read").text;
        let keys: Vec<_> = m.argument_keys().collect();
        let lexed: Vec<_> = crate::jsonrpc::ObjectKeys::new(text).collect();
        assert_eq!(keys, lexed, "{args}");
        assert_eq!(
            matches!(m.argument_keys(), ArgumentKeys::Kept { .. }),
            kept,
            "{args}"
        );
    }
}

#[test]
fn arguments_keep_the_depth_limit() {
    // `arguments` at depth 3; the limit counts the same whether or not its keys are read.
    let limits = ScanLimits {
        max_depth: 4,
        max_batch_len: 10,
    };
    let ok = r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"arguments":{"a":{}}}}"#;
    assert!(scan(ok.as_bytes(), &limits).is_ok());
    let deep = r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"arguments":{"a":{"b":{}}}}}"#;
    assert_eq!(
        scan(deep.as_bytes(), &limits).map(|_| ()).unwrap_err().kind,
        ScanErrorKind::TooDeep
    );
}

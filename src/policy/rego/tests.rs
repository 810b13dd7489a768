use super::*;
use crate::policy::Source;

/// The README's example: readers may call only `echo`; tools marked `destructiveHint` only
/// admins; the decision is cacheable except where it reads the annotations.
const POLICY: &str = r#"
package tollgate
import rego.v1

default decision := {"allow": false, "reason": "not_allowed", "message": "You may not use this tool."}

decision := {"allow": true, "cacheable": true} if {
    "admin" in input.principal.roles
}

decision := {"allow": true, "reason": "reader_echo", "cacheable": true} if {
    not "admin" in input.principal.roles
    "reader" in input.principal.roles
    input.method == "tools/call"
    glob.match("echo*", [], input.tool)
    not input.annotations.destructiveHint
}

decision := {"allow": true} if {
    not "admin" in input.principal.roles
    input.method == "tools/list"
}
"#;

fn principal(roles: &[&str], id: u8, expires_at: Option<u64>) -> Principal {
    Principal {
        source: Source::Jwt { issuer: 0 },
        subject: format!("user{id}").into(),
        client: Some("cli".into()),
        tenant: None,
        roles: roles.iter().map(|r| Box::from(*r)).collect(),
        scopes: Box::new([]),
        expires_at,
        id: [id; 16],
    }
}

fn input<'a>(p: &'a Principal, method: &'a str, tool: Option<&'a str>, now: u64) -> RegoInput<'a> {
    RegoInput {
        principal: p,
        server: "/mcp",
        upstream: Some("demo"),
        method,
        tool,
        argument_keys: &[],
        annotations: None,
        time_unix: now,
        source: Some(IpAddr::from([127, 0, 0, 1])),
    }
}

fn src(text: &str) -> Vec<PolicySource> {
    vec![PolicySource {
        name: "policy.rego".into(),
        text: text.into(),
    }]
}

fn program(text: &str, entries: usize, ttl: u64) -> Arc<RegoProgram> {
    Arc::new(
        RegoProgram::compile(&src(text), DEFAULT_QUERY, entries, Duration::from_secs(ttl))
            .expect("compiles"),
    )
}

fn policy(text: &str) -> RegoPolicy {
    RegoPolicy::new(program(text, 16, 60), "/mcp")
}

#[test]
fn allows_denies_with_reason_and_message() {
    let pol = policy(POLICY);
    let reader = principal(&["reader"], 1, None);
    let admin = principal(&["admin"], 2, None);

    let d = pol
        .evaluate(&input(&reader, "tools/call", Some("echo"), 100))
        .unwrap();
    assert_eq!(
        (d.allow, &*d.reason, d.cacheable),
        (true, "reader_echo", true)
    );

    let d = pol
        .evaluate(&input(&reader, "tools/call", Some("delete"), 100))
        .unwrap();
    assert!(!d.allow);
    assert_eq!(&*d.reason, "not_allowed");
    assert_eq!(d.message.as_deref(), Some("You may not use this tool."));
    assert!(!d.cacheable);

    let d = pol
        .evaluate(&input(&admin, "tools/call", Some("delete"), 100))
        .unwrap();
    assert_eq!((d.allow, &*d.reason), (true, REASON_ALLOW));

    // No reason given: the defaults.
    let d = pol
        .evaluate(&input(&reader, "tools/list", None, 100))
        .unwrap();
    assert_eq!(
        (d.allow, &*d.reason, d.cacheable),
        (true, REASON_ALLOW, false)
    );
}

#[test]
fn annotations_and_argument_keys_reach_the_policy() {
    let pol = policy(POLICY);
    let reader = principal(&["reader"], 1, None);
    let mut i = input(&reader, "tools/call", Some("echo"), 100);
    i.annotations = Some(br#"{"destructiveHint": true}"#);
    assert!(!pol.evaluate(&i).unwrap().allow);
    i.annotations = Some(br#"{"destructiveHint": false, "title": "Echo"}"#);
    assert!(pol.evaluate(&i).unwrap().allow);

    let keys = policy(
        r#"package tollgate
        import rego.v1
        decision := {"allow": count(input.arguments) == 1, "reason": input.arguments[0]}"#,
    );
    let mut i = input(&reader, "tools/call", Some("echo"), 100);
    i.argument_keys = &["message"];
    let d = keys.evaluate(&i).unwrap();
    assert_eq!((d.allow, &*d.reason), (true, "message"));
}

#[test]
fn the_input_document_has_the_documented_shape() {
    let p = principal(&["reader"], 0xab, Some(5000));
    let mut i = input(&p, "resources/read", Some("file:///a"), 1234);
    i.argument_keys = &["a", "b"];
    i.annotations = Some(br#"{"readOnlyHint":true}"#);
    let doc = input_document(&i).unwrap().to_json_str().unwrap();
    let v: serde_json::Value = serde_json::from_str(&doc).unwrap();
    let expected = serde_json::json!({
        "principal": {
            "id": "abababababababababababababababab",
            "source": "jwt",
            "subject": "user171",
            "client": "cli",
            "tenant": null,
            "roles": ["reader"],
            "scopes": [],
            "expires_at": 5000
        },
        "server": "/mcp",
        "upstream": "demo",
        "method": "resources/read",
        "tool": "file:///a",
        "name": null,
        "uri": "file:///a",
        "arguments": ["a", "b"],
        "annotations": {"readOnlyHint": true},
        "time": 1234,
        "source": "127.0.0.1"
    });
    assert_eq!(v, expected);
}

#[test]
fn a_bool_decision_is_allow_or_deny() {
    let pol = policy("package tollgate\nimport rego.v1\ndecision := input.method == \"ping\"\n");
    let p = principal(&[], 1, None);
    let d = pol.evaluate(&input(&p, "ping", None, 1)).unwrap();
    assert_eq!(
        (d.allow, &*d.reason, d.cacheable),
        (true, REASON_ALLOW, false)
    );
    let d = pol.evaluate(&input(&p, "tools/call", None, 1)).unwrap();
    assert_eq!((d.allow, &*d.reason), (false, REASON_DENY));
}

#[test]
fn cacheable_decisions_are_cached_until_the_ttl_or_the_token_expires() {
    // The decision reads the time: a cached one is recognisable by its stale reason.
    let text = r#"package tollgate
        import rego.v1
        decision := {"allow": true, "reason": sprintf("t%d", [input.time]), "cacheable": input.tool != "nocache"}"#;
    let pol = RegoPolicy::new(program(text, 16, 60), "/mcp");
    let p = principal(&[], 1, None);
    let reason =
        |tool: &str, now: u64| pol.decide(&input(&p, "tools/call", Some(tool), now)).reason;

    assert_eq!(&*reason("a", 100), "t100");
    assert_eq!(&*reason("a", 159), "t100", "cached within the TTL");
    assert_eq!(&*reason("a", 160), "t160", "expired after 60 s");
    assert_eq!(&*reason("b", 161), "t161", "another tool is another key");
    assert_eq!(&*reason("nocache", 162), "t162");
    assert_eq!(
        &*reason("nocache", 163),
        "t163",
        "not cacheable: evaluated again"
    );
    assert_eq!(pol.cached(), 2);

    // Another principal does not see the first one's decision.
    let q = principal(&[], 2, None);
    let d = pol.decide(&input(&q, "tools/call", Some("a"), 161));
    assert_eq!(&*d.reason, "t161");

    // The token expires before the TTL: so does the entry.
    let short = principal(&[], 3, Some(110));
    let r = |now: u64| {
        pol.decide(&input(&short, "tools/call", Some("a"), now))
            .reason
    };
    assert_eq!(&*r(100), "t100");
    assert_eq!(&*r(109), "t100");
    assert_eq!(&*r(110), "t110");

    // The same subject (same id) with other roles, as a new token would carry them after a
    // role was taken away: decided again, not served the old decision.
    let mut demoted = principal(&[], 1, None);
    demoted.roles = vec![Box::<str>::from("former-admin")].into_boxed_slice();
    let d = pol.decide(&input(&demoted, "tools/call", Some("a"), 170));
    assert_eq!(&*d.reason, "t170");
}

#[test]
fn the_cache_is_bounded() {
    let text = r#"package tollgate
        import rego.v1
        decision := {"allow": true, "reason": sprintf("t%d", [input.time]), "cacheable": true}"#;
    let pol = RegoPolicy::new(program(text, 2, 60), "/mcp");
    let p = principal(&[], 1, None);
    let reason =
        |tool: &str, now: u64| pol.decide(&input(&p, "tools/call", Some(tool), now)).reason;
    reason("a", 100);
    reason("b", 101);
    reason("c", 102); // evicts "a", the one expiring soonest
    assert_eq!(pol.cached(), 2);
    assert_eq!(&*reason("b", 103), "t101");
    assert_eq!(&*reason("c", 103), "t102");
    assert_eq!(&*reason("a", 103), "t103");

    // 0 entries: nothing is cached.
    let off = RegoPolicy::new(program(text, 0, 60), "/mcp");
    off.decide(&input(&p, "tools/call", Some("a"), 1));
    assert_eq!(
        &*off.decide(&input(&p, "tools/call", Some("a"), 2)).reason,
        "t2"
    );
    assert_eq!(off.cached(), 0);
}

#[test]
fn errors_deny_with_rego_error() {
    let p = principal(&[], 1, None);
    type Check = fn(&RegoError) -> bool;
    let cases: [(&str, Check); 5] = [
        // Undefined: no rule body matched and no default.
        (
            "package tollgate\nimport rego.v1\ndecision := true if input.method == \"x\"\n",
            |e| *e == RegoError::Undefined,
        ),
        (
            "package tollgate\ndecision := \"yes\"\n",
            |e| matches!(e, RegoError::WrongType(_)),
        ),
        (
            "package tollgate\ndecision := {\"allow\": \"yes\"}\n",
            |e| matches!(e, RegoError::WrongType(_)),
        ),
        (
            "package tollgate\ndecision := {\"allow\": false, \"reason\": \"has spaces\"}\n",
            |e| matches!(e, RegoError::WrongType(_)),
        ),
        // Two complete definitions that disagree: a conflict at evaluation.
        (
            "package tollgate\nimport rego.v1\ndecision := true if input.time > 0\ndecision := false if input.time > 0\n",
            |e| matches!(e, RegoError::Runtime(_)),
        ),
    ];
    for (text, check) in cases {
        let pol = policy(text);
        let e = pol
            .evaluate(&input(&p, "tools/call", Some("a"), 5))
            .expect_err(text);
        assert!(check(&e), "{text}: {e:?}");
        assert_eq!(
            pol.decide(&input(&p, "tools/call", Some("a"), 5)),
            RegoDecision::error()
        );
    }
    // Annotations that are not an object.
    let pol = policy(POLICY);
    let mut i = input(&p, "tools/call", Some("a"), 5);
    i.annotations = Some(b"[1]");
    assert!(matches!(pol.evaluate(&i), Err(RegoError::Input(_))));
}

#[test]
fn a_runaway_evaluation_is_stopped_by_eval_timeout_and_denies() {
    // Nine million steps when asked for real (the compile-time probe has time 0).
    let text = "package tollgate\nimport rego.v1\ndecision := count([1 | some i in numbers.range(1, 3000); some j in numbers.range(1, 3000)]) > 0 if input.time > 0\n";
    let program = RegoProgram::compile(&src(text), DEFAULT_QUERY, 16, Duration::from_secs(60))
        .expect("compiles")
        .with_eval_timeout(Duration::from_millis(1));
    let pol = RegoPolicy::new(Arc::new(program), "/mcp");
    let p = principal(&[], 1, None);
    let e = pol
        .evaluate(&input(&p, "tools/call", Some("a"), 5))
        .expect_err("stopped");
    assert!(
        matches!(&e, RegoError::Runtime(why) if why.contains("time limit")),
        "{e:?}"
    );
    assert_eq!(
        pol.decide(&input(&p, "tools/call", Some("a"), 5)),
        RegoDecision::error()
    );
}

#[test]
fn compile_problems_name_the_file_line_or_the_query() {
    let bad = RegoProgram::compile(
        &[
            PolicySource {
                name: "ok.rego".into(),
                text: POLICY.into(),
            },
            PolicySource {
                name: "bad.rego".into(),
                text: "package tollgate\nx := {\n".into(),
            },
        ],
        DEFAULT_QUERY,
        1,
        Duration::from_secs(1),
    )
    .unwrap_err();
    assert_eq!(bad.len(), 1);
    let CompileProblem::Policy { index, problem } = &bad[0] else {
        panic!("{bad:?}")
    };
    assert_eq!(*index, 1);
    assert!(problem.starts_with("bad.rego:3:"), "{problem}");
    assert!(!problem.contains('\n'));

    for q in ["tollgate.decision", "data", "data.", "data.a b", "data.x-y"] {
        let e = RegoProgram::compile(&src(POLICY), q, 1, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(&e[..], [CompileProblem::Query(_)]), "{q}: {e:?}");
    }
    // A well-formed path with no rule there.
    let e = RegoProgram::compile(
        &src(POLICY),
        "data.tollgate.nothing",
        1,
        Duration::from_secs(1),
    )
    .unwrap_err();
    assert!(matches!(&e[..], [CompileProblem::Query(_)]), "{e:?}");
}

#[test]
fn one_line_keeps_location_and_message() {
    assert_eq!(
        one_line("\n--> bad.rego:3:1\n  |\n3 | \n  | ^\nerror: expecting expression"),
        "bad.rego:3:1: expecting expression"
    );
    assert_eq!(one_line("some\n  other   error"), "some other error");
}

#[test]
fn workers_share_one_compiled_program() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<RegoProgram>();
    let prog = program(POLICY, 4, 60);
    let p = principal(&["reader"], 1, None);
    let a = RegoPolicy::new(prog.clone(), "/mcp");
    let b = RegoPolicy::new(prog, "/mcp");
    assert!(a.decide(&input(&p, "tools/call", Some("echo"), 1)).allow);
    assert!(b.decide(&input(&p, "tools/call", Some("echo"), 1)).allow);
    assert_eq!((a.cached(), b.cached()), (1, 1));
}

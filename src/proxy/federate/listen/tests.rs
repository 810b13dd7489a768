//! The listen's pure parts: filters, judging, a member's request body.

use super::super::tables::TableKind;
use super::*;

fn filter(v: Value) -> Filter {
    Filter::from_json(&v)
}

#[test]
fn a_member_is_asked_only_what_it_declares() {
    let asked = filter(json!({"toolsListChanged": true, "promptsListChanged": true,
                              "resourcesListChanged": true, "resourceSubscriptions": ["a://x"]}));
    let caps =
        json!({"tools": {"listChanged": true}, "prompts": {}, "resources": {"subscribe": true}});
    let f = asked.declared_by(&caps);
    assert_eq!(
        f,
        Filter {
            tools: true,
            prompts: false,
            resources: false,
            uris: vec!["a://x".into()]
        }
    );
    assert_eq!(
        f.to_json(),
        json!({"toolsListChanged": true, "resourceSubscriptions": ["a://x"]})
    );
    assert!(filter(json!({"toolsListChanged": false})).is_empty());
}

#[test]
fn notifications_are_retagged_and_filtered() {
    let f = filter(json!({"toolsListChanged": true, "resourceSubscriptions": ["file:///d"]}));
    let id = json!(7);
    let msg = br#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed","params":{"_meta":{"io.modelcontextprotocol/subscriptionId":"7"}}}"#;
    let (v, changed) = judge(msg, &id, (&f, &|_| true), "m-1");
    assert_eq!(changed, Some(TableKind::Tools));
    let Verdict::Relay(b) = v else {
        panic!("{v:?}")
    };
    let out: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(out["params"]["_meta"][SUBSCRIPTION_ID], json!(7));
    // Not opted in: dropped, but the tables still go stale.
    let msg = br#"{"jsonrpc":"2.0","method":"notifications/prompts/list_changed"}"#;
    assert_eq!(
        judge(msg, &id, (&f, &|_| true), "m-1"),
        (Verdict::Drop, Some(TableKind::Prompts))
    );
    // No params at all: given some, with the tag.
    let msg = br#"{"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"uri":"file:///d/e"}}"#;
    assert!(matches!(
        judge(msg, &id, (&f, &|_| true), "m-1").0,
        Verdict::Relay(_)
    ));
    let msg = br#"{"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"uri":"file:///dx"}}"#;
    assert_eq!(judge(msg, &id, (&f, &|_| true), "m-1").0, Verdict::Drop);
    for never in [
        r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}}"#,
        r#"{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"x"}}"#,
        r#"{"jsonrpc":"2.0","id":3,"method":"sampling/createMessage","params":{}}"#,
        r#"{"jsonrpc":"2.0","id":"other","result":{}}"#,
        r#"not json"#,
    ] {
        assert_eq!(
            judge(never.as_bytes(), &id, (&f, &|_| true), "m-1").0,
            Verdict::Drop,
            "{never}"
        );
    }
    let fin = br#"{"jsonrpc":"2.0","id":"m-1","result":{"resultType":"complete"}}"#;
    assert_eq!(judge(fin, &id, (&f, &|_| true), "m-1").0, Verdict::End);
    let ack = br#"{"jsonrpc":"2.0","method":"notifications/subscriptions/acknowledged","params":{"notifications":{"toolsListChanged":true}}}"#;
    assert_eq!(
        judge(ack, &id, (&f, &|_| true), "m-1").0,
        Verdict::Ack(filter(json!({"toolsListChanged": true})))
    );
}

#[test]
fn a_resource_update_for_a_uri_the_endpoint_hides_is_dropped() {
    let id = json!(1);
    let f = filter(json!({"resourceSubscriptions": ["file:///docs/"]}));
    let upd = |uri: &str| {
        format!(
            r#"{{"jsonrpc":"2.0","method":"notifications/resources/updated","params":{{"uri":"{uri}"}}}}"#
        )
    };
    let hides_secret = |u: &str| !u.contains("secret");
    let shown = upd("file:///docs/a.md");
    let hidden = upd("file:///docs/secret.md");
    assert!(matches!(
        judge(shown.as_bytes(), &id, (&f, &hides_secret), "m-1").0,
        Verdict::Relay(_)
    ));
    assert_eq!(
        judge(hidden.as_bytes(), &id, (&f, &hides_secret), "m-1").0,
        Verdict::Drop
    );
}

#[test]
fn a_member_body_carries_the_gateways_id_and_the_members_filter() {
    let req = json!({"jsonrpc": "2.0", "id": 5, "method": "subscriptions/listen",
                     "params": {"_meta": {"k": 1}, "notifications": {"toolsListChanged": true, "promptsListChanged": true}}});
    let f = filter(json!({"promptsListChanged": true}));
    let b: Value = serde_json::from_slice(&member_body(&req, "g-1", &f)).unwrap();
    assert_eq!(b["id"], "g-1");
    assert_eq!(
        b["params"]["notifications"],
        json!({"promptsListChanged": true})
    );
    assert_eq!(b["params"]["_meta"]["k"], 1);
}

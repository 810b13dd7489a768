use super::*;
use crate::policy::{Principal, Source};

fn principal(roles: &[&str], scopes: &[&str]) -> Principal {
    Principal {
        source: Source::Development,
        subject: "alice".into(),
        client: Some("cli".into()),
        tenant: Some("acme".into()),
        roles: roles.iter().map(|r| (*r).into()).collect(),
        scopes: scopes.iter().map(|s| (*s).into()).collect(),
        expires_at: None,
        id: [0; 16],
    }
}

fn rule(name: &str, allow: bool) -> Rule {
    Rule {
        name: name.into(),
        allow,
        upstreams: None,
        tools: None,
        prompts: None,
        resources: None,
        methods: None,
        annotations: (0, 0),
        subjects: vec![],
        clients: vec![],
        tenants: vec![],
        roles: vec![],
        scopes: vec![],
        sources: vec![],
        window: None,
        message: None,
    }
}

fn glob(g: &[&str]) -> Option<Filter> {
    Some(Filter::new(g, &[] as &[&str]).unwrap())
}

fn roles(r: &[&str]) -> Vec<Box<str>> {
    r.iter().map(|x| (*x).into()).collect()
}

fn tool(name: &str) -> Item<'_> {
    Item {
        kind: ItemKind::Tool,
        name,
        method: Method::ToolsCall,
        upstream: Some(0),
        annotations: ann::DEFAULT,
    }
}

fn decide(rules: &Rules, item: &Item<'_>, p: Option<&Principal>, src: &str, now: u64) -> Verdict {
    let cand = rules.candidates(item.kind, item.name, item.method);
    let facts = Facts {
        principal: p,
        source: Some(src.parse().unwrap()),
        now_unix: now,
    };
    let v = rules.decide(&cand, item, &facts);
    // Lists agree with calls: whatever is decided other than hidden is visible.
    assert_eq!(
        rules.visible(&cand, item, p),
        !matches!(v, Verdict::Hidden { .. }),
        "{v:?}"
    );
    v
}

/// The issue's example: `reader` may call only `echo`, `admin` everything.
fn reader_admin() -> Rules {
    let mut admin = rule("admin", true);
    admin.roles = roles(&["admin"]);
    let mut reader = rule("reader-echo", true);
    reader.roles = roles(&["reader"]);
    reader.tools = glob(&["echo"]);
    Rules {
        rules: vec![admin, reader],
    }
}

#[test]
fn readers_call_echo_only_and_admins_everything() {
    let rules = reader_admin();
    let reader = principal(&["reader"], &[]);
    let admin = principal(&["admin"], &[]);
    let nobody = principal(&[], &[]);
    let at = "127.0.0.1";
    assert!(decide(&rules, &tool("echo"), Some(&reader), at, 0).allowed());
    assert_eq!(
        decide(&rules, &tool("add"), Some(&reader), at, 0),
        Verdict::Hidden { rule: None }
    );
    assert!(decide(&rules, &tool("add"), Some(&admin), at, 0).allowed());
    assert!(!decide(&rules, &tool("echo"), Some(&nobody), at, 0).allowed());
    assert!(!decide(&rules, &tool("echo"), None, at, 0).allowed());
    // The reader rule names tools only: a prompt is not an echo tool.
    let prompt = Item {
        kind: ItemKind::Prompt,
        name: "echo",
        method: Method::PromptsGet,
        upstream: Some(0),
        annotations: 0,
    };
    assert!(!decide(&rules, &prompt, Some(&reader), at, 0).allowed());
    assert!(decide(&rules, &prompt, Some(&admin), at, 0).allowed());
}

#[test]
fn an_unconditional_deny_hides_and_a_contextual_one_denies_visibly() {
    let mut no_delete = rule("no-delete", false);
    no_delete.tools = glob(&["delete_*"]);
    let mut night = rule("no-night-writes", false);
    night.tools = glob(&["write_*"]);
    night.window = Some(Window {
        start: 22 * 60,
        end: 6 * 60,
        days: Window::ALL_DAYS,
    });
    night.message = Some("Writes are frozen at night; try again after 06:00 UTC.".into());
    let all = rule("all", true);
    let rules = Rules {
        rules: vec![no_delete, night, all],
    };
    let p = principal(&[], &[]);
    let noon = 12 * 3600;
    let midnight = 23 * 3600;
    assert_eq!(
        decide(&rules, &tool("delete_all"), Some(&p), "10.0.0.1", noon),
        Verdict::Hidden { rule: Some(0) }
    );
    assert!(decide(&rules, &tool("write_x"), Some(&p), "10.0.0.1", noon).allowed());
    match decide(&rules, &tool("write_x"), Some(&p), "10.0.0.1", midnight) {
        Verdict::Denied {
            reason: Reason::Rule,
            rule: Some(1),
            message,
        } => assert!(message.contains("frozen at night"), "{message}"),
        v => panic!("{v:?}"),
    }
}

#[test]
fn sources_and_time_windows_deny_visibly_with_a_sentence() {
    let mut office = rule("office", true);
    office.sources = vec![Cidr::parse("10.0.0.0/8").unwrap()];
    office.window = Some(Window {
        start: 8 * 60,
        end: 18 * 60,
        days: 0b0011111,
    });
    let rules = Rules {
        rules: vec![office],
    };
    let p = principal(&[], &[]);
    // 1970-01-05 was a Monday.
    let monday_noon = 4 * 86_400 + 12 * 3600;
    assert!(decide(&rules, &tool("t"), Some(&p), "10.1.2.3", monday_noon).allowed());
    assert!(decide(&rules, &tool("t"), Some(&p), "::ffff:10.1.2.3", monday_noon).allowed());
    match decide(&rules, &tool("t"), Some(&p), "192.168.1.1", monday_noon) {
        Verdict::Denied {
            reason: Reason::Source,
            message,
            ..
        } => assert!(message.contains("network address"), "{message}"),
        v => panic!("{v:?}"),
    }
    let saturday_noon = monday_noon + 5 * 86_400;
    match decide(&rules, &tool("t"), Some(&p), "10.1.2.3", saturday_noon) {
        Verdict::Denied {
            reason: Reason::Time,
            message,
            ..
        } => assert!(message.contains("08:00-18:00 UTC"), "{message}"),
        v => panic!("{v:?}"),
    }
}

#[test]
fn a_missing_scope_is_asked_for_and_a_later_rule_can_still_allow() {
    let mut writers = rule("writers", true);
    writers.tools = glob(&["write_*"]);
    writers.scopes = roles(&["tools:write"]);
    let rules = Rules {
        rules: vec![writers],
    };
    let without = principal(&[], &["tools:read"]);
    let with = principal(&[], &["tools:write"]);
    assert_eq!(
        decide(&rules, &tool("write_x"), Some(&without), "10.0.0.1", 0),
        Verdict::NeedsScope {
            scope: "tools:write".into(),
            rule: 0
        }
    );
    assert!(decide(&rules, &tool("write_x"), Some(&with), "10.0.0.1", 0).allowed());
    assert_eq!(
        decide(&rules, &tool("read_x"), Some(&with), "10.0.0.1", 0),
        Verdict::Hidden { rule: None }
    );
}

#[test]
fn annotations_use_the_mcp_defaults() {
    let mut admin_destructive = rule("destructive-admin", true);
    admin_destructive.annotations = (ann::DESTRUCTIVE, 0);
    admin_destructive.roles = roles(&["admin"]);
    let mut safe = rule("safe", true);
    safe.annotations = (0, ann::DESTRUCTIVE);
    let rules = Rules {
        rules: vec![admin_destructive, safe],
    };
    let user = principal(&["user"], &[]);
    let admin = principal(&["admin"], &[]);
    let unannotated = tool("t");
    let mut read_only = tool("r");
    read_only.annotations = ann::of_tool(r#"{"name":"r","annotations":{"destructiveHint":false}}"#);
    assert_eq!(ann::of_tool(r#"{"name":"t"}"#), ann::DEFAULT);
    assert!(!decide(&rules, &unannotated, Some(&user), "10.0.0.1", 0).allowed());
    assert!(decide(&rules, &unannotated, Some(&admin), "10.0.0.1", 0).allowed());
    assert!(decide(&rules, &read_only, Some(&user), "10.0.0.1", 0).allowed());
}

#[test]
fn upstream_and_method_targets() {
    let mut only_b = rule("b-only", true);
    only_b.upstreams = Some(vec![1]);
    let mut complete = rule("complete", true);
    complete.methods = Some(vec![Method::CompletionComplete]);
    let rules = Rules {
        rules: vec![only_b, complete],
    };
    let p = principal(&[], &[]);
    let mut on_a = tool("x");
    on_a.upstream = Some(0);
    let mut on_b = tool("x");
    on_b.upstream = Some(1);
    assert!(!decide(&rules, &on_a, Some(&p), "10.0.0.1", 0).allowed());
    assert!(decide(&rules, &on_b, Some(&p), "10.0.0.1", 0).allowed());
    let completion = Item {
        kind: ItemKind::Method,
        name: "completion/complete",
        method: Method::CompletionComplete,
        upstream: None,
        annotations: 0,
    };
    assert!(decide(&rules, &completion, Some(&p), "10.0.0.1", 0).allowed());
    let set_level = Item {
        method: Method::LoggingSetLevel,
        name: "logging/setLevel",
        ..completion
    };
    assert!(!decide(&rules, &set_level, Some(&p), "10.0.0.1", 0).allowed());
    assert_eq!(Item::kind_of(Method::ToolsList), None);
    assert_eq!(Item::kind_of(Method::NotificationsProgress), None);
    assert_eq!(Item::kind_of(Method::ToolsCall), Some(ItemKind::Tool));
}

#[test]
fn the_memo_keeps_only_target_matching_rules_per_name() {
    let rules = reader_admin();
    let memo = Memo::default();
    let echo = memo.candidates(1, 0, &rules, &tool("echo"));
    let add = memo.candidates(1, 0, &rules, &tool("add"));
    assert_eq!(&*echo, &[0, 1]);
    assert_eq!(&*add, &[0]);
    assert!(Rc::ptr_eq(
        &echo,
        &memo.candidates(1, 0, &rules, &tool("echo"))
    ));
}

#[test]
fn cidrs_parse_and_match() {
    assert!(Cidr::parse("10.0.0.0/8")
        .unwrap()
        .contains("10.255.0.1".parse().unwrap()));
    assert!(!Cidr::parse("10.0.0.0/8")
        .unwrap()
        .contains("11.0.0.1".parse().unwrap()));
    assert!(Cidr::parse("0.0.0.0/0")
        .unwrap()
        .contains("1.2.3.4".parse().unwrap()));
    assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
    assert!(Cidr::parse("10.0.0.0/33").is_err());
    assert!(Cidr::parse("ten").is_err());
}

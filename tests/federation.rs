//! Federation end to end: one endpoint in front of several upstreams (demo upstreams in their
//! own processes and the built-in demo), through the real binary.

mod harness;

use std::collections::HashSet;

use harness::{Demo, Gateway, Mcp};
use serde_json::{json, Value};

/// alpha and beta (separate demo processes, prefixed by their names) and local (the built-in
/// demo, unprefixed) behind /mcp, 4 items a page; beta's `fail` is filtered out. /alpha serves
/// alpha alone (passed through).
fn federated(alpha: &Demo, beta: &Demo) -> Gateway {
    Gateway::builder()
        .upstream("alpha", &alpha.url())
        .upstream("beta", &beta.url())
        .upstream_with("local", "builtin:demo", &[("prefix", "\"\"")])
        .yaml(
            "servers:\n  - path: /mcp\n    upstreams: [alpha, beta, local]\n    list_page_size: 4\n    tools: {deny: [\"beta__fail\"]}\n  - path: /alpha\n    upstream: alpha\n",
        )
        .start()
}

/// Every item of a list, following `nextCursor`; returns the items and the number of pages.
fn list_all(m: &mut Mcp, method: &str, key: &str) -> (Vec<Value>, usize) {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let params = match &cursor {
            Some(c) => json!({ "cursor": c }),
            None => json!({}),
        };
        let r = m.request(method, params).json();
        assert!(r.get("error").is_none(), "{method}: {r}");
        pages += 1;
        items.extend(r["result"][key].as_array().unwrap().iter().cloned());
        match r["result"]["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return (items, pages),
        }
        assert!(pages < 100, "{method} never ends");
    }
}

fn names(items: &[Value], field: &str) -> Vec<String> {
    items
        .iter()
        .map(|i| i[field].as_str().unwrap().to_string())
        .collect()
}

fn text_of(result: &Value) -> String {
    result["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn one_endpoint_lists_and_calls_every_upstream() {
    let (alpha, beta) = (Demo::start(&[]), Demo::start(&["--tools", "2"]));
    let gw = federated(&alpha, &beta);
    let mut m = Mcp::new(gw.addr, "/mcp");
    let init = m.initialize("2025-06-18").json();
    assert_eq!(init["result"]["serverInfo"]["name"], "tollgate");
    assert!(init["result"]["capabilities"]["tools"].is_object());
    let instructions = init["result"]["instructions"].as_str().unwrap();
    assert!(instructions.contains("## alpha") && instructions.contains("## local"));

    let (tools, pages) = list_all(&mut m, "tools/list", "tools");
    let tools = names(&tools, "name");
    let demo = ["echo", "add", "slow", "progress", "large", "fail"];
    let mut want: Vec<String> = demo.iter().map(|t| format!("alpha__{t}")).collect();
    want.extend(
        demo.iter()
            .filter(|t| **t != "fail")
            .map(|t| format!("beta__{t}")),
    );
    want.extend(["beta__tool_0000".to_string(), "beta__tool_0001".to_string()]);
    want.extend(demo.iter().map(|t| t.to_string()));
    assert_eq!(
        tools, want,
        "upstream order, then each upstream's own order"
    );
    assert_eq!(pages, want.len().div_ceil(4));
    // Listing again gives the same order (deterministic).
    assert_eq!(
        names(&list_all(&mut m, "tools/list", "tools").0, "name"),
        want
    );

    // Each upstream gets its own name back.
    let r = m.call_tool("alpha__echo", json!({"text": "from alpha"}));
    assert_eq!(text_of(&r), "from alpha");
    let r = m.call_tool("beta__add", json!({"a": 2, "b": 40}));
    assert_eq!(text_of(&r), "42");
    let r = m.call_tool("echo", json!({"text": "local"}));
    assert_eq!(text_of(&r), "local");
    for unknown in ["nope", "beta__fail", "alpha__nope", "gamma__echo"] {
        let r = m.call_tool(unknown, json!({}));
        assert_eq!(r["error"]["code"], -32602, "{unknown}: {r}");
        assert_eq!(r["error"]["message"], format!("Unknown tool: {unknown}"));
    }

    let (prompts, _) = list_all(&mut m, "prompts/list", "prompts");
    assert_eq!(
        names(&prompts, "name"),
        ["alpha__greet", "beta__greet", "greet"]
    );
    let r = m.request(
        "prompts/get",
        json!({"name": "beta__greet", "arguments": {"name": "Ada"}}),
    );
    assert!(r.text().contains("Ada"), "{}", r.text());

    // Every demo lists the same URIs: the first upstream's are exposed, and reads go there.
    let (resources, _) = list_all(&mut m, "resources/list", "resources");
    assert_eq!(
        names(&resources, "uri"),
        ["demo://readme", "demo://data.json"]
    );
    let r = m
        .request("resources/read", json!({"uri": "demo://readme"}))
        .json();
    assert!(r["result"]["contents"][0]["text"].is_string(), "{r}");
    let r = m
        .request("resources/read", json!({"uri": "other://x"}))
        .json();
    assert_eq!(r["error"]["code"], -32602, "{r}");

    let r = m.request("ping", json!({})).json();
    assert_eq!(r["result"], json!({}));
    let r = m
        .request("logging/setLevel", json!({"level": "info"}))
        .json();
    assert_eq!(r["result"], json!({}), "{r}");

    // The single-upstream endpoint beside it passes alpha through unchanged.
    let mut solo = Mcp::new(gw.addr, "/alpha");
    let init = solo.initialize("2025-06-18").json();
    assert_ne!(init["result"]["serverInfo"]["name"], "tollgate");
    let (tools, _) = list_all(&mut solo, "tools/list", "tools");
    assert_eq!(names(&tools, "name"), demo);
}

#[test]
fn cursors_are_sealed_and_bound_to_their_list_and_session() {
    let (alpha, beta) = (Demo::start(&[]), Demo::start(&[]));
    let gw = federated(&alpha, &beta);
    let mut m = Mcp::new(gw.addr, "/mcp");
    m.initialize("2025-06-18");
    let first = m.request("tools/list", json!({})).json();
    let cursor = first["result"]["nextCursor"].as_str().unwrap().to_string();
    assert!(cursor.starts_with("tc1."), "{cursor}");

    let mut tampered = cursor.clone().into_bytes();
    let i = tampered.len() - 5;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let mut other = Mcp::new(gw.addr, "/mcp");
    other.initialize("2025-06-18");
    for (who, method, c) in [
        ("tampered", "tools/list", tampered.as_str()),
        ("foreign text", "tools/list", "abc"),
        ("another list", "prompts/list", cursor.as_str()),
    ] {
        let r = m.request(method, json!({ "cursor": c })).json();
        assert_eq!(r["error"]["code"], -32602, "{who}: {r}");
    }
    let r = other
        .request("tools/list", json!({ "cursor": cursor }))
        .json();
    assert_eq!(r["error"]["code"], -32602, "another session: {r}");
    // The real one still works, and pages never repeat an item.
    let second = m.request("tools/list", json!({ "cursor": cursor })).json();
    let a: HashSet<String> = names(first["result"]["tools"].as_array().unwrap(), "name")
        .into_iter()
        .collect();
    let b = names(second["result"]["tools"].as_array().unwrap(), "name");
    assert!(
        !b.is_empty() && b.iter().all(|n| !a.contains(n)),
        "{a:?} / {b:?}"
    );
}

#[test]
fn an_upstream_lost_mid_session_leaves_the_others_working_and_comes_back() {
    let alpha = Demo::start(&[]);
    let beta = Demo::start(&[]);
    let beta_addr = beta.addr.to_string();
    let gw = federated(&alpha, &beta);
    let mut m = Mcp::new(gw.addr, "/mcp");
    m.initialize("2025-06-18");
    assert_eq!(
        text_of(&m.call_tool("beta__echo", json!({"text": "b"}))),
        "b"
    );
    drop(beta);

    // Its tools are gone from the lists; a call to one names it; the others answer.
    let (tools, _) = list_all(&mut m, "tools/list", "tools");
    let tools = names(&tools, "name");
    assert!(tools.iter().all(|t| !t.starts_with("beta__")), "{tools:?}");
    assert!(tools.contains(&"alpha__echo".to_string()));
    let r = m.call_tool("beta__echo", json!({"text": "b"}));
    assert_eq!(r["error"]["code"], -31001, "{r}");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("\"beta\""),
        "{r}"
    );
    assert_eq!(
        text_of(&m.call_tool("alpha__echo", json!({"text": "a"}))),
        "a"
    );

    // A session opened while it is down goes on without it.
    let mut without = Mcp::new(gw.addr, "/mcp");
    without.initialize("2025-06-18");
    let r = without.call_tool("echo", json!({"text": "still"}));
    assert_eq!(text_of(&r), "still");

    // Back on the same address: new sessions have it again by themselves.
    let _beta = Demo::start_on(&beta_addr, &[]);
    let mut again = Mcp::new(gw.addr, "/mcp");
    again.initialize("2025-06-18");
    assert_eq!(
        text_of(&again.call_tool("beta__echo", json!({"text": "back"}))),
        "back"
    );
    let r = without.call_tool("beta__echo", json!({}));
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not part of this session"),
        "{r}"
    );
}

/// Two clients use the same JSON-RPC id and progress token toward the same upstream at once:
/// each gets its own result and only its own progress.
#[test]
fn two_clients_with_the_same_id_and_progress_token() {
    let (alpha, beta) = (Demo::start(&[]), Demo::start(&[]));
    let gw = federated(&alpha, &beta);
    let call = json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{
        "name":"alpha__progress","arguments":{"steps":3,"interval_ms":50},
        "_meta":{"progressToken":"p"}}})
    .to_string();
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let addr = gw.addr;
            let call = call.clone();
            std::thread::spawn(move || {
                let mut m = Mcp::new(addr, "/mcp");
                m.initialize("2025-06-18");
                m.post_raw(call.as_bytes()).sse_messages()
            })
        })
        .collect();
    for t in threads {
        let msgs = t.join().unwrap();
        let progress: Vec<&Value> = msgs
            .iter()
            .filter(|v| v["method"] == "notifications/progress")
            .collect();
        assert_eq!(progress.len(), 3, "{msgs:?}");
        assert!(progress.iter().all(|p| p["params"]["progressToken"] == "p"));
        let last = msgs.last().unwrap();
        assert_eq!(last["id"], 7);
        assert_eq!(text_of(last), "progress done: 3 steps");
    }
}

#[test]
fn delete_ends_the_session_and_get_says_405() {
    let (alpha, beta) = (Demo::start(&[]), Demo::start(&[]));
    let gw = federated(&alpha, &beta);
    let mut m = Mcp::new(gw.addr, "/mcp");
    m.initialize("2025-06-18");
    let headers: Vec<(String, String)> = m
        .headers()
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let hs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let r = m.http.request("GET", "/mcp", &hs, b"");
    assert_eq!(r.status, 405, "{}", r.text());
    let r = m.http.request("DELETE", "/mcp", &hs, b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = m.request("tools/list", json!({}));
    assert_eq!(r.status, 404, "{}", r.text());
}

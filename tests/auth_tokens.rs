//! `tollgate hash-key` and `tollgate mint-token` end to end: what they print is what the config
//! and `policy::authn` accept.
use std::io::Write;
use std::process::{Command, Stdio};

use tollgate::policy::authn::{Authn, Presented};
use tollgate::policy::AuthFailure;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn tollgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
}

fn hash_key(input: &[u8]) -> std::process::Output {
    let mut child = tollgate()
        .arg("hash-key")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn a_hashed_key_and_a_minted_token_authenticate() {
    let out = hash_key(b"tg_live_abc\n");
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(hash.len(), 64);
    assert_eq!(hash, tollgate::policy::authn::hash_key(b"tg_live_abc"));
    assert!(!hash_key(b"\n").status.success(), "an empty key is refused");

    let out = tollgate()
        .args([
            "mint-token",
            "--secret-env",
            "TG_TEST_SECRET",
            "--iss",
            "https://dev",
            "--aud",
            "http://127.0.0.1:8080/mcp",
            "--sub",
            "alice",
            "--roles",
            "admin,ops",
            "--ttl",
            "10m",
        ])
        .env("TG_TEST_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();

    let yaml = format!(
        r#"
upstreams: [{{name: d, url: "builtin:demo"}}]
servers: [{{path: /mcp, upstream: d, auth: {{}}}}]
auth:
  issuers: [{{name: dev, issuer: "https://dev", algorithms: [HS256], secret: "${{env:TG_TEST_SECRET}}"}}]
  api_keys: [{{name: ci, sha256: "{hash}"}}]
"#
    );
    let cfg = tollgate::config::load_str_with_env(&yaml, &|n| {
        (n == "TG_TEST_SECRET").then(|| SECRET.to_string())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let authn = Authn::new(&cfg);
    let header = format!("Bearer {token}");
    let req = Presented {
        authorization: Some(header.as_bytes()),
        ..Presented::default()
    };
    let p = authn.authenticate(&cfg, 0, &req, now()).unwrap();
    assert_eq!(&*p.subject, "alice");
    assert!(p.has_role("ops"));
    let exp = p.expires_at.unwrap();
    assert!((now() + 590..=now() + 600).contains(&exp));
    // Eleven minutes later (beyond the 30s leeway) it has expired.
    assert_eq!(
        authn.authenticate(&cfg, 0, &req, now() + 660).unwrap_err(),
        AuthFailure::Expired
    );
    let req = Presented {
        api_key: Some(b"tg_live_abc"),
        ..Presented::default()
    };
    assert_eq!(
        &*authn.authenticate(&cfg, 0, &req, now()).unwrap().subject,
        "ci"
    );

    let out = tollgate()
        .args([
            "mint-token",
            "--secret-env",
            "TG_UNSET_VAR_X",
            "--iss",
            "i",
            "--aud",
            "a",
            "--sub",
            "s",
        ])
        .env_remove("TG_UNSET_VAR_X")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("TG_UNSET_VAR_X is not set"));
}

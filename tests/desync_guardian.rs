//! Holds tollgate's admission of a request head to AWS's HTTP desync classifier,
//! `http_desync_guardian` (a dev-dependency). The crate ships its own test corpus: 159 requests
//! in `tests/*.yaml` inside the published crate, each with the tier its authors expect
//! (Compliant, Acceptable, Ambiguous, Severe). Every case is built into raw bytes, classified by
//! the guardian (`analyze_raw_request` on exactly those bytes) and given to
//! `tollgate::proxy::checks::admit_head`, the function the gateway's `read_head` calls (head
//! parser with its limits, then Host/authority and Origin).
//!
//! - rated Ambiguous or Severe (by the guardian on the bytes, or by the case file): refused;
//! - rated Compliant by both: admitted, except the few cases listed in `REFUSED_COMPLIANT`,
//!   each with its reason and the refusal it must get;
//! - Acceptable: either (the summary says which).
//!
//! A second test sends every case to the running binary and checks it does what admission
//! decided: the admission's status and a closed connection, or routing's 404 (no case is sent
//! to a served path).
//!
//! Building the bytes: `METHOD SP URI SP VERSION CRLF`, each `name: value CRLF`, then CRLF, as
//! the crate's own tests do. `\xNN` escapes are the byte NN (the crate's tests turn them into
//! a UTF-8 char, which would make `\xa0` two bytes); other non-ASCII text is UTF-8. Cases
//! without a Host (all of them) get `Host: localhost` as their first header: HTTP/1.1 requires
//! it (RFC 9112 §3.2), the guardian does not rate it, and the verdict is taken on the bytes
//! with it. A rejectable case refused only for its Host would not count.

mod harness;

use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};

use http_desync_guardian::request_analyzer::HttpRequestData;
use http_desync_guardian::RequestSafetyTier as Tier;
use serde_yaml_ng::Value;
use tollgate::error::Kind;

/// Compliant requests tollgate refuses on purpose: (file, case name, the refusal, why).
/// Keep this list minimal: an entry whose case is gone or now admitted fails the test.
const REFUSED_COMPLIANT: &[(&str, &str, Kind, &str)] = &[
    (
        "rfc-compliant.yaml",
        "Different Transfer-Encoding headers",
        Kind::UnsupportedTransferEncoding,
        GZIP,
    ),
    (
        "rfc-compliant.yaml",
        "Different Transfer-Encoding headers combined",
        Kind::UnsupportedTransferEncoding,
        GZIP,
    ),
    (
        "rfc-compliant.yaml",
        "Transfer-Encoding with a param: chunked;custom_param",
        Kind::UnsupportedTransferEncoding,
        GZIP,
    ),
    (
        "more-compliant-tests.yaml",
        "Correct TE OK",
        Kind::UnsupportedTransferEncoding,
        GZIP,
    ),
    (
        "more-compliant-tests.yaml",
        "Transfer-Encoding: identity and chunked OK",
        Kind::UnsupportedTransferEncoding,
        GZIP,
    ),
    (
        "more-compliant-tests.yaml",
        "Multiple transfer encoding headers in a single request OK",
        Kind::UnsupportedTransferEncoding,
        GZIP,
    ),
    (
        "more-compliant-tests.yaml",
        "TE with custom parameters OK",
        Kind::UnsupportedTransferEncoding,
        "`Transfer-Encoding: chunked;custom_param;`: RFC 9112 §7.1 says the chunked coding \
         defines no parameters and their presence SHOULD be treated as an error",
    ),
    (
        "rfc-compliant.yaml",
        "Empty URI",
        Kind::MalformedHttp,
        "`GET  HTTP/1.1`: no form of request-target is empty (RFC 9112 §3.2), so the request \
         line is invalid; the guardian does not look at the target's form",
    ),
];

const GZIP: &str = "a transfer coding other than chunked (gzip, deflate, compress, identity): \
     tollgate decodes only chunked, and RFC 9112 §6.1 says a server that receives a transfer \
     coding it does not understand SHOULD answer 501";

struct Case {
    file: String,
    name: String,
    raw: Vec<u8>,
    /// The guardian's verdict on `raw`, with its reason.
    guardian: (Tier, String),
    /// The tier the case file expects.
    expected: Tier,
}

impl Case {
    /// The stricter of the two ratings.
    fn tier(&self) -> Tier {
        if self.guardian.0 > self.expected {
            self.guardian.0
        } else {
            self.expected
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} / {:?}: guardian {:?} ({}), file {:?}\n    {}",
            self.file,
            self.name,
            self.guardian.0,
            self.guardian.1,
            self.expected,
            escaped(&self.raw)
        )
    }
}

fn escaped(raw: &[u8]) -> String {
    raw.iter()
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .collect()
}

/// Where cargo unpacked `http_desync_guardian` (the registry, a vendor dir, …). Offline and for
/// this host only: a fresh machine has downloaded just the packages this platform builds, and
/// `cargo metadata` for every platform would want the others too (Windows-only crates).
fn guardian_dir() -> PathBuf {
    let host = std::process::Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("rustc -vV runs");
    let host = String::from_utf8_lossy(&host.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .expect("rustc -vV names the host");
    let out = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--offline", "--format-version", "1"])
        .args(["--filter-platform", &host])
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let manifest = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .find(|p| p["name"] == "http_desync_guardian")
        .and_then(|p| p["manifest_path"].as_str())
        .expect("http_desync_guardian is a dependency");
    Path::new(manifest)
        .parent()
        .expect("crate dir")
        .to_path_buf()
}

/// The crate's own unescaping of case text (after YAML's), with `\xNN` kept as the byte NN.
fn bytes(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        let c = if c != '\\' {
            c
        } else {
            match chars.next() {
                Some('x') => {
                    let hex: String = chars.by_ref().take(2).collect();
                    let b = u8::from_str_radix(&hex, 16).expect("\\xNN");
                    char::from(b)
                }
                Some('b') => '\x08',
                Some('f') => '\x0c',
                Some('n') => '\n',
                Some('r') => '\r',
                Some('t') => '\t',
                Some(other) => other,
                None => panic!("a trailing backslash in {s:?}"),
            }
        };
        match u8::try_from(u32::from(c)) {
            Ok(b) => out.push(b),
            Err(_) => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    out
}

fn field(v: &Value) -> Vec<u8> {
    match v {
        Value::String(s) => bytes(s),
        Value::Number(n) => n.to_string().into_bytes(),
        other => panic!("expected text, got {other:?}"),
    }
}

fn tier(s: &str) -> Tier {
    match s {
        "Compliant" => Tier::Compliant,
        "Acceptable" => Tier::Acceptable,
        "Ambiguous" => Tier::Ambiguous,
        "Severe" => Tier::Severe,
        other => panic!("unknown tier {other:?}"),
    }
}

fn cases() -> Vec<Case> {
    let dir = guardian_dir().join("tests");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 9,
        "case files in {}: {files:?}",
        dir.display()
    );
    let mut out = Vec::new();
    for path in files {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let doc: Value = serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        for c in doc.as_sequence().expect("a list of cases") {
            let name = c["name"].as_str().expect("name").to_string();
            let mut raw = field(&c["method"]);
            raw.push(b' ');
            raw.extend(field(&c["uri"]));
            raw.push(b' ');
            raw.extend(field(&c["version"]));
            raw.extend_from_slice(b"\r\n");
            let headers = c["headers"].as_sequence().map_or(&[][..], |s| s.as_slice());
            let names: Vec<Vec<u8>> = headers.iter().map(|h| field(&h["name"])).collect();
            // First, so that a case whose value hides a blank line still has it in its head.
            if !names.iter().any(|n| n.eq_ignore_ascii_case(b"host")) {
                raw.extend_from_slice(b"Host: localhost\r\n");
            }
            for (h, n) in headers.iter().zip(names) {
                raw.extend(n);
                raw.extend_from_slice(b": ");
                raw.extend(field(&h["value"]));
                raw.extend_from_slice(b"\r\n");
            }
            raw.extend_from_slice(b"\r\n");
            let verdict = HttpRequestData::analyze_raw_request(&raw);
            out.push(Case {
                file: file.clone(),
                name,
                guardian: (verdict.tier, format!("{:?}", verdict.reason)),
                expected: tier(c["expected"]["tier"].as_str().expect("expected.tier")),
                raw,
            });
        }
    }
    // The published 0.1.3 crate has 159; fewer means the corpus was not found whole.
    assert!(out.len() >= 150, "only {} cases", out.len());
    out
}

/// What `read_head` decides about these bytes, given the default configuration (a loopback
/// listener: Host must be localhost, 127.0.0.1 or [::1]).
fn admit(config: &tollgate::config::Config, raw: &[u8]) -> Result<bool, (Kind, String)> {
    let mut scratch = [const { MaybeUninit::uninit() }; tollgate::proxy::MAX_HEADERS];
    tollgate::proxy::checks::admit_head(config, raw, &mut scratch)
        .map(|h| h.is_some())
        .map_err(|e| (e.kind, e.reason))
}

fn exception(c: &Case) -> Option<&'static (&'static str, &'static str, Kind, &'static str)> {
    REFUSED_COMPLIANT
        .iter()
        .find(|(f, n, ..)| *f == c.file && *n == c.name)
}

#[test]
fn admission_refuses_every_ambiguous_or_severe_request_and_admits_every_compliant_one() {
    let config = tollgate::config::load_str("").expect("the default config");
    let cases = cases();
    let mut failures = Vec::new();
    let mut acceptable = (0, 0);
    for c in &cases {
        let got = admit(&config, &c.raw);
        let refused = match &got {
            Ok(true) => None,
            // A complete head the gateway would wait on is neither admitted nor refused.
            Ok(false) => {
                failures.push(format!("waits for more bytes: {}", c.describe()));
                continue;
            }
            Err(e) => Some(e),
        };
        match (c.tier(), refused, exception(c)) {
            (Tier::Ambiguous | Tier::Severe, None, _) => {
                failures.push(format!("admitted: {}", c.describe()));
            }
            // Refused, but for the Host the harness added rather than for what the case is.
            (Tier::Ambiguous | Tier::Severe, Some((kind, why)), _)
                if *kind == Kind::HostNotAllowed || why.contains("Host header") =>
            {
                failures.push(format!("refused for its Host ({why}): {}", c.describe()));
            }
            (Tier::Compliant, Some((kind, why)), None) => {
                failures.push(format!("refused ({kind:?}: {why}): {}", c.describe()));
            }
            (Tier::Compliant, refused, Some((_, _, want, _)))
                if refused.map(|r| r.0) != Some(*want) =>
            {
                failures.push(format!(
                    "listed in REFUSED_COMPLIANT as {want:?}, got {got:?}: {}",
                    c.describe()
                ));
            }
            (Tier::Acceptable, refused, _) => {
                if refused.is_some() {
                    acceptable.1 += 1;
                } else {
                    acceptable.0 += 1;
                }
            }
            _ => {}
        }
        if exception(c).is_some() && c.tier() != Tier::Compliant {
            failures.push(format!(
                "listed in REFUSED_COMPLIANT but not Compliant: {}",
                c.describe()
            ));
        }
    }
    for (f, n, ..) in REFUSED_COMPLIANT {
        if !cases.iter().any(|c| c.file == *f && c.name == *n) {
            failures.push(format!("REFUSED_COMPLIANT names no case: {f} / {n:?}"));
        }
    }
    let count = |t: Tier| cases.iter().filter(|c| c.tier() == t).count();
    println!(
        "{} cases: {} Compliant ({} refused on purpose), {} Acceptable ({} admitted, {} refused), \
         {} Ambiguous, {} Severe",
        cases.len(),
        count(Tier::Compliant),
        REFUSED_COMPLIANT.len(),
        count(Tier::Acceptable),
        acceptable.0,
        acceptable.1,
        count(Tier::Ambiguous),
        count(Tier::Severe),
    );
    assert!(
        count(Tier::Ambiguous) + count(Tier::Severe) >= 60,
        "too few rejectable cases"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Statuses `admit_head` can refuse with, as the running gateway answers them.
fn is_admission_status(status: u16) -> bool {
    matches!(status, 400 | 403 | 414 | 431 | 501)
}

#[test]
fn the_running_gateway_answers_each_case_as_admission_decided() {
    let config = tollgate::config::load_str("").expect("the default config");
    let gw = harness::Gateway::builder().workers(1).start();
    let mut failures = Vec::new();
    for c in cases() {
        let mut h = harness::Http::connect(gw.addr);
        h.send_raw(&c.raw);
        let r = h.read_response_to(c.raw.starts_with(b"HEAD "));
        let status = r.as_ref().map(|r| r.status);
        match admit(&config, &c.raw) {
            // No case's path is served: an admitted head is routed, and not found.
            Ok(true) if status == Some(404) => {}
            Err((kind, _))
                if status == Some(kind.status()) && is_admission_status(kind.status()) =>
            {
                if !h.closed_within(std::time::Duration::from_secs(5)) {
                    failures.push(format!("refused but not closed: {}", c.describe()));
                }
            }
            other => failures.push(format!(
                "admission {other:?}, gateway {status:?}: {}",
                c.describe()
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

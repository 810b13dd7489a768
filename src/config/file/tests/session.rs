//! `session.key`: from the file, the environment, or generated.

use super::*;

#[test]
fn session_key_from_file_env_or_generated() {
    let env = |want: &'static str, value: &'static str| {
        move |name: &str| (name == want).then(|| value.to_string())
    };
    let upper = KEY_HEX.to_uppercase();
    let c = load_str_with_env(&format!("session: {{key: \"{upper}\"}}"), &no_env)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (c.session.key_source, c.session.key[10]),
        (KeySource::File, 10)
    );

    let c = load_str_with_env("", &env("TOLLGATE_SESSION_KEY", KEY_HEX))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (c.session.key_source, c.session.key[31]),
        (KeySource::Env, 0x1f)
    );

    let c = load_str_with_env("session: {key_env: MY_KEY}", &env("MY_KEY", KEY_HEX))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.session.key_source, KeySource::Env);
    // The default variable is not consulted when another is named.
    let c = load_str_with_env(
        "session: {key_env: MY_KEY}",
        &env("TOLLGATE_SESSION_KEY", KEY_HEX),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.session.key_source, KeySource::Generated);

    // The file wins over the environment.
    let other = "ff".repeat(32);
    let c = load_str_with_env(
        &format!("session: {{key: \"{other}\"}}"),
        &env("TOLLGATE_SESSION_KEY", KEY_HEX),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (c.session.key_source, c.session.key[0]),
        (KeySource::File, 0xff)
    );

    let e = load_str_with_env("", &env("TOLLGATE_SESSION_KEY", "s3cret-but-short"))
        .map(|_| ())
        .unwrap_err();
    assert_eq!(e.0.len(), 1);
    assert!(e.0[0].starts_with("session.key_env: environment variable TOLLGATE_SESSION_KEY: expected 64 hex characters"), "{e}");
    assert!(!e.to_string().contains("s3cret"), "{e}");

    let bad = "g".repeat(64);
    let e = err(&format!("session: {{key: \"{bad}\"}}"));
    assert!(
        e.starts_with("session.key: expected 64 hex characters"),
        "{e}"
    );
    assert!(!e.contains("ggg"), "{e}");
    assert!(err("session: {key: 12345}")
        .starts_with("session.key: expected 64 hex characters in quotes"));
    assert!(err("session: {key_env: \"1BAD\"}")
        .starts_with("session.key_env: \"1BAD\" is not an environment variable name"));
}

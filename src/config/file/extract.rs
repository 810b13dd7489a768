//! A small path-tracking reader over a parsed YAML value. Every problem is recorded as
//! `path: problem` and reading goes on with the default, so one run reports all of them.

use std::fmt::Display;
use std::time::Duration;

use serde_yaml_ng::{Mapping, Value};

use super::formats;

/// Every problem found so far, in file order.
#[derive(Default)]
pub struct Problems(pub Vec<String>);

impl Problems {
    pub fn add(&mut self, path: &str, problem: impl Display) {
        let path = if path.is_empty() { "(top level)" } else { path };
        self.0.push(format!("{path}: {problem}"));
    }
}

pub fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

pub fn item(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// How a value reads in an error: strings quoted, containers by kind (they can be long).
pub fn describe(v: &Value) -> String {
    match v {
        Value::Null => "nothing (null)".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a mapping".into(),
        Value::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

/// A mapping read against a fixed set of keys. Absent or null = empty (all defaults).
pub struct Section<'v> {
    pub path: String,
    map: Option<&'v Mapping>,
}

impl<'v> Section<'v> {
    pub fn open(p: &mut Problems, path: String, v: Option<&'v Value>, keys: &[&str]) -> Self {
        let map = match v {
            None | Some(Value::Null) => None,
            Some(Value::Mapping(m)) => {
                for k in m.keys() {
                    match k {
                        Value::String(k) if keys.contains(&k.as_str()) => {}
                        Value::String(k) => {
                            let hint = keys
                                .iter()
                                .filter(|known| formats::edit_distance(k, known) <= 2)
                                .min_by_key(|known| formats::edit_distance(k, known))
                                .map(|known| format!(" (did you mean {known:?}?)"))
                                .unwrap_or_default();
                            p.add(&child(&path, k), format!("unknown key{hint}"));
                        }
                        other => p.add(
                            &child(&path, &describe(other)),
                            "unknown key (keys must be strings)",
                        ),
                    }
                }
                Some(m)
            }
            Some(other) => {
                p.add(
                    &path,
                    format!("expected a mapping of keys, got {}", describe(other)),
                );
                None
            }
        };
        Section { path, map }
    }

    /// The value under `key` as written, null included (`admin: null` has a meaning).
    pub fn raw(&self, key: &str) -> Option<&'v Value> {
        self.map.and_then(|m| m.get(key))
    }

    /// The value under `key` with its path; absent or null = `None` (take the default).
    pub fn value(&self, key: &str) -> Option<(String, &'v Value)> {
        match self.raw(key) {
            None | Some(Value::Null) => None,
            Some(v) => Some((child(&self.path, key), v)),
        }
    }

    /// Reads `key` with `parse`; absent → `default`; a problem is recorded and `default` used.
    pub fn get<T>(
        &self,
        p: &mut Problems,
        key: &str,
        default: T,
        parse: impl FnOnce(&'v Value) -> Result<T, String>,
    ) -> T {
        match self.value(key) {
            None => default,
            Some((path, v)) => parse(v).unwrap_or_else(|e| {
                p.add(&path, e);
                default
            }),
        }
    }

    /// A required key: missing is a problem, reported once.
    pub fn required<T>(
        &self,
        p: &mut Problems,
        key: &str,
        parse: impl FnOnce(&'v Value) -> Result<T, String>,
    ) -> Option<T> {
        match self.value(key) {
            None => {
                p.add(&child(&self.path, key), "missing (required)");
                None
            }
            Some((path, v)) => parse(v).map_err(|e| p.add(&path, e)).ok(),
        }
    }
}

// Value readers. Each returns the problem as a phrase; the caller adds the path.

pub fn string(v: &Value) -> Result<&str, String> {
    match v {
        Value::String(s) => Ok(s),
        other => Err(format!("expected a string, got {}", describe(other))),
    }
}

pub fn boolean(v: &Value) -> Result<bool, String> {
    match v {
        Value::Bool(b) => Ok(*b),
        other => Err(format!("expected true or false, got {}", describe(other))),
    }
}

/// A whole number in `min..=max`.
pub fn count(min: u64, max: u64) -> impl Fn(&Value) -> Result<u64, String> {
    move |v| match v {
        Value::Number(n) => match n.as_u64() {
            Some(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(range_msg(min, max, &n.to_string())),
        },
        other => Err(range_msg(min, max, &describe(other))),
    }
}

fn range_msg(min: u64, max: u64, got: &str) -> String {
    if max == u64::MAX {
        format!("expected a whole number of at least {min}, got {got}")
    } else {
        format!("expected a whole number from {min} to {max}, got {got}")
    }
}

/// A duration of at least `min` (`formats::duration`).
pub fn duration(min: Duration) -> impl Fn(&Value) -> Result<Duration, String> {
    move |v| {
        let d = match v {
            Value::String(s) => formats::duration(s)?,
            Value::Number(n) => {
                return Err(format!(
                    "expected a duration with a unit like 250ms, 10s, 5m or 24h, got {n} (a bare number is ambiguous)"
                ))
            }
            other => {
                return Err(format!(
                    "expected a duration like 250ms, 10s, 5m or 24h, got {}",
                    describe(other)
                ))
            }
        };
        if d < min {
            Err(format!(
                "must be at least {}, got {}",
                formats::render_duration(min),
                formats::render_duration(d)
            ))
        } else {
            Ok(d)
        }
    }
}

/// A size in bytes of at least `min` (`formats::size`), as usize.
pub fn size(min: u64) -> impl Fn(&Value) -> Result<usize, String> {
    move |v| {
        let bad = || {
            format!(
                "expected a size like 4MiB or a whole number of bytes, got {}",
                describe(v)
            )
        };
        let n = match v {
            Value::String(s) => formats::size(s)?,
            Value::Number(n) => n.as_u64().ok_or_else(bad)?,
            _ => return Err(bad()),
        };
        if n < min {
            return Err(format!("must be at least {min} bytes, got {n}"));
        }
        usize::try_from(n).map_err(|_| format!("size {n} is too large for this machine"))
    }
}

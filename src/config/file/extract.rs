//! A small path-tracking reader over a parsed YAML value. Every problem is recorded as
//! `path: problem` and reading goes on with the default, so one run reports all of them.

use std::fmt::Display;
use std::time::Duration;

use serde_yaml_ng::{Mapping, Value};

use super::formats;

/// Every problem found so far, with the path it was found at (`in_file_order` sorts them).
#[derive(Default)]
pub struct Problems(Vec<(String, String)>);

impl Problems {
    pub fn add(&mut self, path: &str, problem: impl Display) {
        let shown = if path.is_empty() { "(top level)" } else { path };
        self.0
            .push((path.to_string(), format!("{shown}: {problem}")));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The problems as `path: problem` lines in file order: by where each path's keys and list
    /// items sit in `root` (mappings keep the file's key order), reading order among equals. A key
    /// that is not in the file (a missing required key) sorts after its mapping's other keys.
    pub fn in_file_order(self, root: &Value) -> Vec<String> {
        let mut keyed: Vec<(Vec<usize>, String)> = self
            .0
            .into_iter()
            .map(|(path, line)| (file_position(root, &path), line))
            .collect();
        // Stable: problems at the same place keep the order they were found in.
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        keyed.into_iter().map(|(_, line)| line).collect()
    }
}

/// The position of `path` (as built by `child` and `item`) in `root`: for each step, the index of
/// the key in its mapping or of the item in its list; `usize::MAX` where the file has no such
/// key, which ends the walk. Keys may contain `.` (header names), so the longest key that matches
/// up to a `.`, `[` or the end wins.
fn file_position(root: &Value, path: &str) -> Vec<usize> {
    let mut pos = Vec::new();
    let mut here = root;
    let mut rest = path;
    while !rest.is_empty() {
        let step = if let Some(r) = rest.strip_prefix('[') {
            let index = r
                .find(']')
                .and_then(|end| Some((r[..end].parse::<usize>().ok()?, &r[end + 1..])));
            match (here, index) {
                (Value::Sequence(items), Some((i, after))) => items.get(i).map(|v| (i, v, after)),
                _ => None,
            }
        } else if let Value::Mapping(m) = here {
            m.iter()
                .enumerate()
                .filter_map(|(i, (k, v))| {
                    let k = k.as_str()?;
                    let after = rest.strip_prefix(k)?;
                    (after.is_empty() || after.starts_with(['.', '['])).then_some((
                        i,
                        v,
                        after,
                        k.len(),
                    ))
                })
                .max_by_key(|&(.., len)| len)
                .map(|(i, v, after, _)| (i, v, after))
        } else {
            None
        };
        let Some((i, v, after)) = step else {
            pos.push(usize::MAX);
            break;
        };
        pos.push(i);
        here = v;
        rest = after.strip_prefix('.').unwrap_or(after);
    }
    pos
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

/// A duration in `min..=max`.
pub fn duration_within(
    min: Duration,
    max: Duration,
) -> impl Fn(&Value) -> Result<Duration, String> {
    let at_least = duration(min);
    move |v| {
        let d = at_least(v)?;
        if d > max {
            return Err(format!(
                "must be at most {}, got {}",
                formats::render_duration(max),
                formats::render_duration(d)
            ));
        }
        Ok(d)
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

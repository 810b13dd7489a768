//! What a listen asks for (`params.notifications`), what a member can deliver of it, and the
//! `notifications` object written back.

use serde_json::{json, Map, Value};

/// What a listen asks for (`params.notifications`), or what a server honours of it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Filter {
    pub tools: bool,
    pub prompts: bool,
    pub resources: bool,
    /// `resourceSubscriptions`: URIs whose `resources/updated` the client wants.
    pub uris: Vec<String>,
}

impl Filter {
    /// From a `notifications` object (a request's or an acknowledgement's).
    pub fn from_json(v: &Value) -> Filter {
        let yes = |k: &str| v.get(k).and_then(Value::as_bool) == Some(true);
        let mut uris: Vec<String> = v
            .get("resourceSubscriptions")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|u| u.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        uris.sort();
        uris.dedup();
        Filter {
            tools: yes("toolsListChanged"),
            prompts: yes("promptsListChanged"),
            resources: yes("resourcesListChanged"),
            uris,
        }
    }

    /// What a server declaring `caps` (its `server/discover` capabilities) can deliver of this:
    /// list changes where it declares `listChanged`, resource updates where it declares
    /// `resources.subscribe`.
    pub fn declared_by(&self, caps: &Value) -> Filter {
        let has = |kind: &str, what: &str| {
            caps.get(kind)
                .and_then(|c| c.get(what))
                .and_then(Value::as_bool)
                == Some(true)
        };
        Filter {
            tools: self.tools && has("tools", "listChanged"),
            prompts: self.prompts && has("prompts", "listChanged"),
            resources: self.resources && has("resources", "listChanged"),
            uris: if has("resources", "subscribe") {
                self.uris.clone()
            } else {
                Vec::new()
            },
        }
    }

    /// Both (what was asked of a member, and what its acknowledgement says it honours).
    pub fn both(&self, other: &Filter) -> Filter {
        Filter {
            tools: self.tools && other.tools,
            prompts: self.prompts && other.prompts,
            resources: self.resources && other.resources,
            uris: self
                .uris
                .iter()
                .filter(|u| other.uris.contains(u))
                .cloned()
                .collect(),
        }
    }

    pub fn add(&mut self, other: &Filter) {
        self.tools |= other.tools;
        self.prompts |= other.prompts;
        self.resources |= other.resources;
        for u in &other.uris {
            if !self.uris.contains(u) {
                self.uris.push(u.clone());
            }
        }
        self.uris.sort();
    }

    pub fn is_empty(&self) -> bool {
        !self.tools && !self.prompts && !self.resources && self.uris.is_empty()
    }

    /// The `notifications` object: only what is honoured, as the spec writes it.
    pub fn to_json(&self) -> Value {
        let mut o = Map::new();
        if self.tools {
            o.insert("toolsListChanged".into(), Value::Bool(true));
        }
        if self.prompts {
            o.insert("promptsListChanged".into(), Value::Bool(true));
        }
        if self.resources {
            o.insert("resourcesListChanged".into(), Value::Bool(true));
        }
        if !self.uris.is_empty() {
            o.insert("resourceSubscriptions".into(), json!(self.uris));
        }
        Value::Object(o)
    }

    /// Whether a `resources/updated` for `uri` was asked for: the URI itself, or one under it
    /// (the spec lets a server report a sub-resource).
    pub(super) fn wants_uri(&self, uri: &str) -> bool {
        self.uris.iter().any(|s| {
            uri == s
                || uri.strip_prefix(s.as_str()).is_some_and(|rest| {
                    s.ends_with('/') || rest.starts_with('/') || rest.starts_with('#')
                })
        })
    }
}

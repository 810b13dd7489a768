//! Allow/deny filters of globs over exposed names and resource URIs.
//!
//! A glob has two special characters: `*` matches any run of characters (empty included, `/`
//! included: names have no hierarchy, and for URIs `ui://*` should mean "every ui resource"),
//! `?` matches exactly one character (Unicode scalar). `**` is the same as `*`. There are no
//! classes and no escapes: `[`, `]`, `\` and `{` are literal, so a URI template can be written
//! as is. Matching is linear in space and at most O(pattern × text) in time, with no recursion.

use std::fmt;

/// Longest glob accepted (bytes).
pub const MAX_GLOB_LEN: usize = 1024;

/// Which list of a filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FilterList {
    Allow,
    Deny,
}

impl FilterList {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }
}

/// A glob that cannot be used (a config problem at `<list>[index]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GlobError {
    pub list: FilterList,
    pub index: usize,
    pub reason: &'static str,
}

impl fmt::Display for GlobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]: {}", self.list.as_str(), self.index, self.reason)
    }
}

impl std::error::Error for GlobError {}

/// A pattern of a filter that matches none of the names it was checked against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unmatched {
    pub list: FilterList,
    pub index: usize,
    pub pattern: String,
}

/// What a server exposes of one kind (tools, prompts or resources): a name passes if no deny
/// glob matches it and, when there are allow globs, one of them does. Deny wins; an empty
/// allow list allows everything. The default filter allows everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    allow: Vec<Box<str>>,
    deny: Vec<Box<str>>,
}

impl Filter {
    /// The allow globs, as written.
    pub fn allow_globs(&self) -> &[Box<str>] {
        &self.allow
    }

    pub fn new<A: AsRef<str>, D: AsRef<str>>(allow: &[A], deny: &[D]) -> Result<Filter, GlobError> {
        fn read<S: AsRef<str>>(list: FilterList, globs: &[S]) -> Result<Vec<Box<str>>, GlobError> {
            globs
                .iter()
                .enumerate()
                .map(|(index, g)| {
                    let g = g.as_ref();
                    let reason = if g.is_empty() {
                        "empty glob (matches nothing; `*` matches everything)"
                    } else if g.len() > MAX_GLOB_LEN {
                        "glob longer than 1024 bytes"
                    } else {
                        return Ok(Box::from(g));
                    };
                    Err(GlobError {
                        list,
                        index,
                        reason,
                    })
                })
                .collect()
        }
        Ok(Filter {
            allow: read(FilterList::Allow, allow)?,
            deny: read(FilterList::Deny, deny)?,
        })
    }

    /// Whether `name` is exposed.
    pub fn allows(&self, name: &str) -> bool {
        !self.deny.iter().any(|g| glob_match(g, name))
            && (self.allow.is_empty() || self.allow.iter().any(|g| glob_match(g, name)))
    }

    /// The globs that match none of `names` (for `tollgate check`: a filter that matches
    /// nothing is most likely a typo). Allow globs first, each list in its order.
    pub fn matches_nothing<S: AsRef<str>>(&self, names: &[S]) -> Vec<Unmatched> {
        let lists = [
            (FilterList::Allow, &self.allow),
            (FilterList::Deny, &self.deny),
        ];
        lists
            .into_iter()
            .flat_map(|(list, globs)| {
                globs
                    .iter()
                    .enumerate()
                    .filter(move |(_, g)| !names.iter().any(|n| glob_match(g, n.as_ref())))
                    .map(move |(index, g)| Unmatched {
                        list,
                        index,
                        pattern: g.to_string(),
                    })
            })
            .collect()
    }

    pub fn is_all(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

/// Length of the UTF-8 sequence starting with `b` (1 for a stray continuation byte, which a
/// `&str` never has at a boundary; being defensive costs nothing).
fn char_len(b: u8) -> usize {
    match b {
        0xF0..=0xFF => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

/// Whether `glob` matches all of `text`. Greedy with one backtrack point (the last `*`), which
/// is exact for globs made of literals, `?` and `*`.
pub fn glob_match(glob: &str, text: &str) -> bool {
    let (p, t) = (glob.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0usize, 0usize);
    // After the last `*` seen: the glob position after it, and the text position it resumes at.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if let Some(&c) = p.get(pi) {
            if c == b'*' {
                pi += 1;
                star = Some((pi, ti));
                continue;
            }
            if c == b'?' {
                pi += 1;
                ti = (ti + char_len(t[ti])).min(t.len());
                continue;
            }
            if c == t[ti] {
                pi += 1;
                ti += 1;
                continue;
            }
        }
        match star {
            Some((sp, st)) => {
                // Let the last `*` swallow one more character and retry from there.
                let next = (st + char_len(t[st])).min(t.len());
                star = Some((sp, next));
                pi = sp;
                ti = next;
            }
            None => return false,
        }
    }
    p[pi.min(p.len())..].iter().all(|&c| c == b'*')
}

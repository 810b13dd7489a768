//! Names across upstreams (federation): how an upstream's tool and prompt names are exposed
//! (`<prefix>__<name>`, charset-mapped, shortened with a hash), the per-server lookup tables
//! (exposed → upstream + original, and back), resource URI routing, and allow/deny glob filters.
//! Pure and I/O-free: built at config load and on list refresh, read on the request path.
//! Must never guess: a name that is not in a table is unknown (-32602); must not panic on input.

use std::collections::HashMap;

/// The tables' maps: foldhash, seeded at random per process (see `NameTable`).
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use std::fmt;

mod glob;

pub use glob::{glob_match, Filter, FilterList, GlobError, Unmatched};

/// Default separator between prefix and name. Two underscores: within `[a-zA-Z0-9_-]`, the
/// strictest rule common clients apply to tool names (the spec allows `.` too, 2025-11-25
/// `server/tools`; OpenAI- and Anthropic-style APIs do not), readable, and the convention hosts
/// already use (`mcp__server__tool`). A prefix may not contain it (see `Namer::new`), so the
/// prefix is always recoverable from an exposed name and prefixed names of two upstreams never
/// meet.
pub const SEPARATOR: &str = "__";
/// Default longest exposed name: the limit of many clients (the spec's SHOULD is 128).
pub const DEFAULT_MAX_LEN: usize = 64;
/// Shortest configurable maximum: room for the hash suffix and a few readable characters.
pub const MIN_MAX_LEN: usize = 16;
/// Longest configurable maximum: the spec's 128.
pub const MAX_MAX_LEN: usize = 128;
/// The marker between a shortened name and its hash.
const HASH_MARK: &str = "--";
/// Hash characters: 10 × 5 bits = 50 bits of SHA-256 (lowercase RFC 4648 base32, `a-z2-7`).
const HASH_CHARS: usize = 10;
/// Length of `--` + hash.
pub const HASH_SUFFIX_LEN: usize = HASH_MARK.len() + HASH_CHARS;
const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// Whether `c` may appear in an exposed name: `[A-Za-z0-9_.-]` (MCP 2025-11-25 tool names).
pub const fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// Whether `c` may appear in a separator: `[A-Za-z0-9_-]` (no `.`: strict clients refuse it).
const fn is_separator_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-')
}

/// Whether `name` is a valid exposed name: 1..=`max` characters of `[A-Za-z0-9_.-]`.
pub fn is_valid_name(name: &str, max: usize) -> bool {
    !name.is_empty() && name.len() <= max && name.chars().all(is_name_char)
}

/// Why an exposed name is not simply `prefix + sep + original` (what `tollgate check` reports).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rewrite {
    /// Exposed as `prefix + sep + original`.
    None,
    /// The original is empty (invalid in MCP): exposed by its hash.
    Empty,
    /// The original has characters outside `[A-Za-z0-9_.-]`: each became `_`, and the hash
    /// suffix keeps the name unique.
    Unallowed,
    /// Longer than the maximum once prefixed: shortened, with the hash suffix.
    TooLong,
    /// The plain name already ends like a hashed one (`--` + 10 of `a-z2-7`): hashed as well, so
    /// a plain name can never equal another name's hashed form.
    LooksHashed,
}

impl Rewrite {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Empty => "empty",
            Self::Unallowed => "characters outside [A-Za-z0-9_.-]",
            Self::TooLong => "too long",
            Self::LooksHashed => "ends like a hashed name",
        }
    }
}

/// The name a client sees for `original`, exposed behind `prefix` + `sep` within `max`.
/// See `exposed_with_reason`.
pub fn exposed_name(prefix: &str, sep: &str, original: &str, max: usize) -> String {
    exposed_with_reason(prefix, sep, original, max).0
}

/// The exposed name and why it differs from `prefix + sep + original`, if it does.
///
/// Scheme (deterministic, documented in ARCHITECTURE.md):
/// 1. `plain = prefix + sep + original`.
/// 2. If the original is non-empty, every character is in `[A-Za-z0-9_.-]`, `plain` is at most
///    `max` bytes and does not end like a hashed name, the exposed name is `plain`.
/// 3. Otherwise every character outside the set becomes `_` (one per Unicode scalar), the result
///    is cut to `max - 12` bytes and `--` + h is appended, where h is 10 lowercase base32
///    characters (50 bits) of SHA-256 over `tollgate/name`, then the lengths and bytes of
///    prefix, separator and original (unmapped): the full original decides the hash.
///
/// Plain names never end like hashed ones and hashed names always do, so the two never meet;
/// two plain names with the same prefix and separator differ wherever their originals do; two
/// hashed names meet only if 50 bits of SHA-256 do, which `NameTable::build` detects.
/// `max` is clamped to `MIN_MAX_LEN..=MAX_MAX_LEN`. The result is always 1..=max characters
/// of `[A-Za-z0-9_.-]`. Work is linear in the input; nothing panics.
pub fn exposed_with_reason(
    prefix: &str,
    sep: &str,
    original: &str,
    max: usize,
) -> (String, Rewrite) {
    let max = max.clamp(MIN_MAX_LEN, MAX_MAX_LEN);
    let mut out = String::with_capacity(max + 1);
    let mut mapped = false;
    let mut len = 0usize;
    for c in prefix.chars().chain(sep.chars()).chain(original.chars()) {
        len = len.saturating_add(1);
        let c = if is_name_char(c) {
            c
        } else {
            mapped = true;
            '_'
        };
        // Keep at most max + 1 characters: enough to know whether it is too long.
        if out.len() <= max {
            out.push(c);
        }
    }
    let reason = if original.is_empty() {
        Rewrite::Empty
    } else if mapped {
        Rewrite::Unallowed
    } else if len > max {
        Rewrite::TooLong
    } else if looks_hashed(&out) {
        Rewrite::LooksHashed
    } else {
        return (out, Rewrite::None);
    };
    // `out` is ASCII here (every character was checked or mapped), so any byte is a boundary.
    out.truncate(max - HASH_SUFFIX_LEN);
    out.push_str(HASH_MARK);
    push_hash(&mut out, prefix, sep, original);
    (out, reason)
}

/// Whether `s` ends like a hashed name: `--` followed by 10 characters of `a-z2-7`.
fn looks_hashed(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= HASH_SUFFIX_LEN && {
        let tail = &b[b.len() - HASH_SUFFIX_LEN..];
        tail.starts_with(HASH_MARK.as_bytes())
            && tail[HASH_MARK.len()..]
                .iter()
                .all(|c| c.is_ascii_lowercase() || (b'2'..=b'7').contains(c))
    }
}

fn push_hash(out: &mut String, prefix: &str, sep: &str, original: &str) {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"tollgate/name");
    // Lengths make the split between the parts unambiguous whatever they contain.
    for part in [prefix, sep, original] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part.as_bytes());
    }
    let d = ctx.finish();
    let mut bits = 0u64;
    for &b in &d.as_ref()[..8] {
        bits = bits << 8 | u64::from(b);
    }
    for i in 0..HASH_CHARS {
        let v = (bits >> (64 - 5 * (i + 1))) & 0x1F;
        out.push(char::from(BASE32[v as usize]));
    }
}

/// How one upstream's names are exposed on a server: with a prefix and separator (federation),
/// or as they are (a single upstream, unless configured otherwise).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namer {
    prefix: Option<Box<str>>,
    separator: Box<str>,
    max_len: usize,
}

/// Why a `Namer` cannot be built (a config problem at the upstream's prefix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NamerError {
    /// `max_len` outside `MIN_MAX_LEN..=MAX_MAX_LEN`.
    MaxLen(usize),
    /// An empty prefix (use no prefix instead).
    EmptyPrefix,
    /// The prefix has characters outside `[A-Za-z0-9_.-]`.
    PrefixChars,
    /// The separator is empty or has characters outside `[A-Za-z0-9_-]`.
    SeparatorChars,
    /// The separator occurs in `prefix + separator` before the separator itself (the prefix
    /// contains it, or ends with its beginning, as `a_` + `__`): the prefix would not be
    /// recoverable, and another upstream's names could meet these.
    AmbiguousPrefix,
    /// `prefix + separator` leaves fewer than one character for the name in a shortened one.
    PrefixTooLong,
}

impl fmt::Display for NamerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MaxLen(n) => write!(
                f,
                "maximum name length {n} outside {MIN_MAX_LEN}..={MAX_MAX_LEN}"
            ),
            Self::EmptyPrefix => f.write_str("prefix is empty"),
            Self::PrefixChars => f.write_str("prefix has characters outside [A-Za-z0-9_.-]"),
            Self::SeparatorChars => {
                f.write_str("separator must be 1 or more characters of [A-Za-z0-9_-]")
            }
            Self::AmbiguousPrefix => f.write_str(
                "prefix contains the separator or ends with its first character(s): names \
                 of different upstreams could be confused",
            ),
            Self::PrefixTooLong => {
                f.write_str("prefix and separator leave no room for the name in a shortened name")
            }
        }
    }
}

impl std::error::Error for NamerError {}

impl Namer {
    /// `prefix: None` exposes names as they are (still mapped and shortened if invalid).
    /// A prefix must be `[A-Za-z0-9_.-]`, must not contain the separator nor end with its first
    /// character(s), and `prefix + separator` must be shorter than `max_len - 12`, so every
    /// exposed name, shortened ones included, starts with `prefix + separator`.
    pub fn new(prefix: Option<&str>, separator: &str, max_len: usize) -> Result<Self, NamerError> {
        if !(MIN_MAX_LEN..=MAX_MAX_LEN).contains(&max_len) {
            return Err(NamerError::MaxLen(max_len));
        }
        if let Some(p) = prefix {
            if p.is_empty() {
                return Err(NamerError::EmptyPrefix);
            }
            if !p.chars().all(is_name_char) {
                return Err(NamerError::PrefixChars);
            }
            if separator.is_empty() || !separator.chars().all(is_separator_char) {
                return Err(NamerError::SeparatorChars);
            }
            let joined = format!("{p}{separator}");
            if joined.find(separator) != Some(p.len()) {
                return Err(NamerError::AmbiguousPrefix);
            }
            if joined.len() >= max_len - HASH_SUFFIX_LEN {
                return Err(NamerError::PrefixTooLong);
            }
        }
        Ok(Namer {
            prefix: prefix.map(Box::from),
            separator: Box::from(separator),
            max_len,
        })
    }

    /// The defaults for an upstream of a server: prefixed by the upstream's name with `__`
    /// within 64 when the server fronts more than one upstream, unprefixed otherwise.
    pub fn for_upstream(upstream_name: &str, federated: bool) -> Result<Self, NamerError> {
        Namer::new(
            federated.then_some(upstream_name),
            SEPARATOR,
            DEFAULT_MAX_LEN,
        )
    }

    pub fn prefix(&self) -> Option<&str> {
        self.prefix.as_deref()
    }

    pub fn separator(&self) -> &str {
        &self.separator
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The exposed name of `original` and why it was rewritten, if it was.
    pub fn expose(&self, original: &str) -> (String, Rewrite) {
        match &self.prefix {
            Some(p) => exposed_with_reason(p, &self.separator, original, self.max_len),
            None => exposed_with_reason("", "", original, self.max_len),
        }
    }
}

/// Pairs of a server's namers (positions in `namers`) whose plain names can meet: one's
/// `prefix + separator` begins the other's (an unprefixed namer begins every other). With one
/// separator and `Namer::new`'s prefix rule this is exactly "the same prefix"; with mixed
/// separators it also catches `a` + `__` against `a` + `_` (both spell `a__x`). Names that do meet are still
/// caught by `NameTable::build`, but only once the lists are known: `tollgate check` should
/// refuse an overlap up front. Hashed names of different namers meet only if SHA-256 does.
pub fn prefix_overlaps(namers: &[Namer]) -> Vec<(usize, usize)> {
    let joined: Vec<String> = namers
        .iter()
        .map(|n| match n.prefix() {
            Some(p) => format!("{p}{}", n.separator()),
            None => String::new(),
        })
        .collect();
    let mut out = Vec::new();
    for (i, a) in joined.iter().enumerate() {
        for (j, b) in joined.iter().enumerate().skip(i + 1) {
            if a.starts_with(b.as_str()) || b.starts_with(a.as_str()) {
                out.push((i, j));
            }
        }
    }
    out
}

/// Which upstream of the server: its position in the list given to the table builder (the
/// server's upstreams in config order). The integrator maps it to the upstream's stable id.
pub type UpstreamIndex = usize;

/// One exposed name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub upstream: UpstreamIndex,
    /// What the upstream calls it (and is sent on `tools/call`, `prompts/get`).
    pub original: Box<str>,
    /// What the client sees.
    pub exposed: Box<str>,
    pub rewrite: Rewrite,
}

/// One upstream's part of a table: how it names, and what it listed (in its own order).
#[derive(Clone, Copy, Debug)]
pub struct UpstreamNames<'a, S> {
    pub namer: &'a Namer,
    pub names: &'a [S],
}

/// What building a table found. None stops the build: the conflicting name is left out (the
/// earlier one stays), and `tollgate check` and the list-refresh log report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NameProblem {
    /// Two names exposed the same: the later (by upstream order, then listing order) is left out.
    Collision {
        exposed: String,
        kept: (UpstreamIndex, String),
        dropped: (UpstreamIndex, String),
    },
    /// An upstream listed the same name (or URI) twice: the second is ignored.
    Duplicate {
        upstream: UpstreamIndex,
        original: String,
    },
    /// Resource templates of two upstreams could match the same URI (one literal beginning is
    /// a prefix of the other): the later upstream's template is left out.
    TemplateOverlap {
        kept: (UpstreamIndex, String),
        dropped: (UpstreamIndex, String),
    },
}

impl fmt::Display for NameProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Collision {
                exposed,
                kept,
                dropped,
            } => write!(
                f,
                "{exposed:?}: upstream #{} {:?} and upstream #{} {:?} both expose it; the \
                 second is not exposed",
                kept.0, kept.1, dropped.0, dropped.1
            ),
            Self::Duplicate { upstream, original } => {
                write!(f, "upstream #{upstream} lists {original:?} twice")
            }
            Self::TemplateOverlap { kept, dropped } => write!(
                f,
                "resource templates {:?} (upstream #{}) and {:?} (upstream #{}) can match the \
                 same URI; the second is not exposed",
                kept.1, kept.0, dropped.1, dropped.0
            ),
        }
    }
}

/// Exposed names of one kind (tools, or prompts) on one server: exposed → (upstream, original)
/// for routing, (upstream, original) → exposed for rewriting list results, and the listing in
/// a deterministic order (upstream order, then each upstream's own order).
///
/// Lookups borrow the client's `&str` and allocate nothing. foldhash with a per-process random
/// seed (every `tools/call` on a federated endpoint resolves a name; SipHash cost more than the
/// rest of the lookup): the keys come from upstreams' listings, never from clients, whose
/// probes only look up; a name over `MAX_MAX_LEN` is unknown without hashing it.
#[derive(Clone, Debug, Default)]
pub struct NameTable {
    entries: Vec<Entry>,
    by_exposed: Map<Box<str>, u32>,
    by_original: Vec<Map<Box<str>, u32>>,
}

impl NameTable {
    /// Builds the table from each upstream's names, keeping what `filter` allows (it is matched
    /// against the exposed name, what the operator sees in a listing). Collisions and
    /// duplicates are reported, never resolved by shadowing: the first comes first.
    pub fn build<S: AsRef<str>>(
        upstreams: &[UpstreamNames<'_, S>],
        filter: &Filter,
    ) -> (NameTable, Vec<NameProblem>) {
        let mut t = NameTable {
            entries: Vec::new(),
            by_exposed: Map::default(),
            by_original: vec![Map::default(); upstreams.len()],
        };
        let mut problems = Vec::new();
        for (upstream, u) in upstreams.iter().enumerate() {
            for name in u.names {
                let original = name.as_ref();
                if t.by_original[upstream].contains_key(original) {
                    problems.push(NameProblem::Duplicate {
                        upstream,
                        original: original.to_owned(),
                    });
                    continue;
                }
                let (exposed, rewrite) = u.namer.expose(original);
                if !filter.allows(&exposed) {
                    continue;
                }
                if let Some(&i) = t.by_exposed.get(exposed.as_str()) {
                    let kept = &t.entries[i as usize];
                    problems.push(NameProblem::Collision {
                        kept: (kept.upstream, kept.original.to_string()),
                        dropped: (upstream, original.to_owned()),
                        exposed,
                    });
                    continue;
                }
                let Ok(i) = u32::try_from(t.entries.len()) else {
                    break;
                };
                let exposed: Box<str> = exposed.into();
                let original: Box<str> = original.into();
                t.by_exposed.insert(exposed.clone(), i);
                t.by_original[upstream].insert(original.clone(), i);
                t.entries.push(Entry {
                    upstream,
                    original,
                    exposed,
                    rewrite,
                });
            }
        }
        (t, problems)
    }

    /// The upstream and original name behind an exposed name; `None` is an unknown name
    /// (-32602), never a guess.
    pub fn resolve(&self, exposed: &str) -> Option<(UpstreamIndex, &str)> {
        if exposed.len() > MAX_MAX_LEN {
            return None;
        }
        let e = &self.entries[*self.by_exposed.get(exposed)? as usize];
        Some((e.upstream, &e.original))
    }

    /// The exposed name of an upstream's original name (rewriting a list result), or `None`
    /// when it is not exposed (filtered, colliding, or not listed when the table was built).
    pub fn exposed(&self, upstream: UpstreamIndex, original: &str) -> Option<&str> {
        let i = *self.by_original.get(upstream)?.get(original)?;
        Some(&self.entries[i as usize].exposed)
    }

    /// Every exposed name, in listing order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Entries whose exposed name is not `prefix + sep + original` (for `tollgate check`).
    pub fn rewritten(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| e.rewrite != Rewrite::None)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Resource URIs are exposed unchanged and routed by this table.
///
/// Why not prefix them: a URI is an identifier clients may act on (`ui://` resources are MCP
/// Apps and must stay `ui://`; hosts open `file://` and `https://` ones themselves), and a
/// scheme-preserving marker would have to be invented per scheme (no authority in `file:///`,
/// none at all in `urn:`), while resource templates (RFC 6570) would need the marker inside
/// their expressions. Unchanged URIs are valid and trivially reversible; what prefixing buys
/// for tools, a routing table with collision detection buys here: the same URI from two
/// upstreams is a `Collision` (the later is not exposed), as are templates of two upstreams
/// that could match the same URI.
///
/// Routing: an exact listed URI first; else the template whose literal beginning (the text
/// before its first `{`) starts the URI. Templates of different upstreams never overlap (one
/// literal beginning a prefix of another's is refused at build), so at most one upstream's
/// templates match: the route is never a guess.
#[derive(Clone, Debug, Default)]
pub struct UriTable {
    exact: Map<Box<str>, UpstreamIndex>,
    resources: Vec<(UpstreamIndex, Box<str>)>,
    templates: Vec<TemplateEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct TemplateEntry {
    upstream: UpstreamIndex,
    template: Box<str>,
    /// Length of the literal text before the first `{`.
    literal: usize,
}

impl TemplateEntry {
    fn literal(&self) -> &str {
        &self.template[..self.literal]
    }
}

impl UriTable {
    /// `resources[i]` and `templates[i]` are what upstream `i` listed (either may be shorter
    /// than the other: missing means none). `filter` is matched against URIs and templates.
    pub fn build<S: AsRef<str>, T: AsRef<str>>(
        resources: &[&[S]],
        templates: &[&[T]],
        filter: &Filter,
    ) -> (UriTable, Vec<NameProblem>) {
        let mut t = UriTable::default();
        let mut problems = Vec::new();
        for (upstream, list) in resources.iter().enumerate() {
            for uri in list.iter().map(AsRef::as_ref) {
                if !filter.allows(uri) {
                    continue;
                }
                match t.exact.get(uri) {
                    Some(&u) if u == upstream => problems.push(NameProblem::Duplicate {
                        upstream,
                        original: uri.to_owned(),
                    }),
                    Some(&u) => problems.push(NameProblem::Collision {
                        exposed: uri.to_owned(),
                        kept: (u, uri.to_owned()),
                        dropped: (upstream, uri.to_owned()),
                    }),
                    None => {
                        t.exact.insert(uri.into(), upstream);
                        t.resources.push((upstream, uri.into()));
                    }
                }
            }
        }
        for (upstream, list) in templates.iter().enumerate() {
            for template in list.iter().map(AsRef::as_ref) {
                if !filter.allows(template) {
                    continue;
                }
                let literal = template.find('{').unwrap_or(template.len());
                let lit = &template[..literal];
                let clash = t.templates.iter().find(|o| {
                    o.upstream != upstream
                        && (o.literal().starts_with(lit) || lit.starts_with(o.literal()))
                });
                if let Some(o) = clash {
                    problems.push(NameProblem::TemplateOverlap {
                        kept: (o.upstream, o.template.to_string()),
                        dropped: (upstream, template.to_owned()),
                    });
                    continue;
                }
                if t.templates
                    .iter()
                    .any(|o| o.upstream == upstream && &*o.template == template)
                {
                    problems.push(NameProblem::Duplicate {
                        upstream,
                        original: template.to_owned(),
                    });
                    continue;
                }
                t.templates.push(TemplateEntry {
                    upstream,
                    template: template.into(),
                    literal,
                });
            }
        }
        (t, problems)
    }

    /// The upstream serving `uri`, or `None` (unknown resource: the integrator answers as the
    /// revision asks, -32002 or -32602). Allocates nothing.
    pub fn route(&self, uri: &str) -> Option<UpstreamIndex> {
        if let Some(&u) = self.exact.get(uri) {
            return Some(u);
        }
        self.templates
            .iter()
            .find(|t| uri.starts_with(t.literal()))
            .map(|t| t.upstream)
    }

    /// Exposed resources (URI and upstream), in listing order.
    pub fn resources(&self) -> impl Iterator<Item = (UpstreamIndex, &str)> {
        self.resources.iter().map(|(u, s)| (*u, &**s))
    }

    /// Exposed resource templates (upstream and template), in listing order.
    pub fn templates(&self) -> impl Iterator<Item = (UpstreamIndex, &str)> {
        self.templates.iter().map(|t| (t.upstream, &*t.template))
    }

    /// Whether `uri` (from upstream `upstream`'s `resources/list`) is exposed.
    pub fn exposes(&self, upstream: UpstreamIndex, uri: &str) -> bool {
        self.exact.get(uri) == Some(&upstream)
    }

    /// Whether `template` (from upstream `upstream`'s `resources/templates/list`) is exposed.
    pub fn exposes_template(&self, upstream: UpstreamIndex, template: &str) -> bool {
        self.templates
            .iter()
            .any(|t| t.upstream == upstream && &*t.template == template)
    }
}

#[cfg(test)]
mod tests;

//! Traffic rules (`traffic:`): request rate (GCRA), concurrent calls and calendar quotas, as
//! compiled at config load, and the pure arithmetic the limiter runs on (GCRA, calendar windows
//! in a time zone, splitting a global budget into per-core shares). No I/O, no clock: every
//! function takes `now`. The request path and the cross-core exchange are `proxy::limit`.

use std::hash::{Hash, Hasher};
use std::time::Duration;

use crate::mcp::names::Filter;
use crate::mcp::Method;

/// Key parts (`traffic.rules[].key`), as bits.
pub mod part {
    pub const PRINCIPAL: u8 = 1;
    pub const CLIENT: u8 = 2;
    pub const TENANT: u8 = 4;
    pub const SERVER: u8 = 8;
    pub const UPSTREAM: u8 = 16;
    pub const TOOL: u8 = 32;
    pub const METHOD: u8 = 64;
    /// A hash of a `tools/call`'s `params.arguments` (`arguments_hash`).
    pub const ARGUMENTS: u8 = 128;
    /// In the order `render` writes them.
    pub const NAMES: [(&str, u8); 8] = [
        ("principal", PRINCIPAL),
        ("client", CLIENT),
        ("tenant", TENANT),
        ("server", SERVER),
        ("upstream", UPSTREAM),
        ("tool", TOOL),
        ("method", METHOD),
        ("arguments", ARGUMENTS),
    ];
}

/// `traffic:`.
#[derive(Debug)]
pub struct Traffic {
    /// `time_zone`: the IANA name calendar quotas count in, and its rules.
    pub time_zone: Box<str>,
    pub tz: jiff::tz::TimeZone,
    /// How often the exchange brings every worker the global usage (and rebalances shares).
    pub sync_interval: Duration,
    /// Keys one worker tracks at most (the oldest idle ones are evicted past it).
    pub max_keys: usize,
    /// Keys the exchange keeps at most (past it the longest idle are evicted: a quota key so
    /// dropped starts its window's count afresh).
    pub max_global_keys: usize,
    pub rules: Vec<LimitRule>,
    /// Some rule keys by `arguments`: the scan phase hashes each `tools/call`'s arguments
    /// (nothing is hashed otherwise).
    pub hashes_arguments: bool,
    /// `redis`: usage shared with the other instances (none: this instance alone).
    pub redis: Option<RedisBackend>,
}

/// `traffic.redis`: where the instances add up their usage of rate limits and quotas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisBackend {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: Box<str>,
    /// How often the exchange sends its deltas and reads back the totals.
    pub sync_interval: Duration,
    /// How long one round trip (or a connect) may take before Redis counts as down.
    pub timeout: Duration,
    pub on_failure: OnFailure,
    /// Prepended to every key (several fleets can share one Redis).
    pub key_prefix: Box<str>,
}

/// What the limits of an instance do while Redis is down or slow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFailure {
    /// Admit every call under a rate limit or quota (counted, and sent once Redis is back).
    Open,
    /// Refuse every call under a rate limit or quota.
    Closed,
    /// Limit with this instance's own count plus the others' as last seen, within its
    /// allotment as last read (`proxy::limit`).
    Local,
}

impl OnFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            OnFailure::Open => "open",
            OnFailure::Closed => "closed",
            OnFailure::Local => "local",
        }
    }
}

/// A calendar window of a quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CalWindow {
    Minute,
    Hour,
    Day,
    Month,
}

impl CalWindow {
    pub fn as_str(self) -> &'static str {
        match self {
            CalWindow::Minute => "minute",
            CalWindow::Hour => "hour",
            CalWindow::Day => "day",
            CalWindow::Month => "month",
        }
    }
}

/// What one limit of a rule counts. The counted unit is a call; a later `unit: tokens` fits
/// beside `limit` without changing the exchange (it moves amounts, not calls).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// GCRA: `limit` calls per `per`, up to `burst` at once.
    Rate {
        limit: u64,
        per: Duration,
        burst: u64,
    },
    /// Calls in flight at once.
    Concurrency { limit: u64 },
    /// Calls per calendar window (in `traffic.time_zone`).
    Quota { limit: u64, window: CalWindow },
    /// Units per calendar window: the estimated tokens of the replies relayed
    /// (`observe::tokens`), charged after each call, plus the rule's `costs` per call, charged
    /// when it is admitted. A call is refused once the window's budget is spent.
    Tokens { limit: u64, window: CalWindow },
    /// A loop guard's count on the exchange (`LoopGuard::kind`), never in a rule's `limits`:
    /// `max` calls in a window of `window` that opens at the key's first call.
    Loop { max: u64, window: Duration },
}

impl LimitKind {
    /// The metric label and the `data.kind` of a rejection.
    pub fn label(&self) -> &'static str {
        match self {
            LimitKind::Rate { .. } => "rate",
            LimitKind::Concurrency { .. } => "concurrency",
            LimitKind::Quota { .. } => "quota",
            LimitKind::Tokens { .. } => "tokens",
            LimitKind::Loop { .. } => "loop",
        }
    }

    /// The budget the shares are cut from: the burst, the concurrency or the quota.
    pub fn budget(&self) -> u64 {
        match *self {
            LimitKind::Rate { burst, .. } => burst,
            LimitKind::Concurrency { limit }
            | LimitKind::Quota { limit, .. }
            | LimitKind::Tokens { limit, .. } => limit,
            LimitKind::Loop { max, .. } => max,
        }
    }

    /// The calendar window of a quota (in calls or tokens).
    pub fn window(&self) -> Option<CalWindow> {
        match *self {
            LimitKind::Quota { window, .. } | LimitKind::Tokens { window, .. } => Some(window),
            _ => None,
        }
    }
}

/// One limit of a rule, with its fingerprint: a hash of the rule's name and whole definition
/// (and the time zone for a quota). State is keyed by it, so a reload that leaves a rule as it
/// was keeps its counters, and one that changes it starts afresh.
#[derive(Clone, Copy, Debug)]
pub struct Limit {
    pub kind: LimitKind,
    pub fp: u64,
}

/// One traffic rule, compiled.
#[derive(Debug)]
pub struct LimitRule {
    pub name: Box<str>,
    /// Target (absent = every one): server indices, upstream indices, tool globs (exposed
    /// names), methods.
    pub servers: Option<Vec<usize>>,
    pub upstreams: Option<Vec<usize>>,
    pub tools: Option<Filter>,
    pub methods: Option<Vec<Method>>,
    /// Identity: each non-empty list needs one match.
    pub subjects: Vec<Box<str>>,
    pub clients: Vec<Box<str>>,
    pub tenants: Vec<Box<str>>,
    pub roles: Vec<Box<str>>,
    /// `part` bits; 0 = one counter for everything the rule matches.
    pub key: u8,
    pub limits: Vec<Limit>,
    /// `tokens.costs`: units a tool call is charged when admitted, by the first glob (over
    /// exposed tool names) that matches; none: 0.
    pub costs: Vec<(Box<str>, u64)>,
    /// A runaway-loop guard (`loop: {max, window}`; its rule has no `limits`): at most `max`
    /// calls in a window keyed by principal, tool and arguments (`proxy::limit::loops`); matches
    /// `tools/call` only.
    pub loop_guard: Option<LoopGuard>,
}

/// `loop: {max, window}` as written, and its fingerprint (`LimitRule::seal`: the rule's name
/// and definition; a reload that keeps the rule keeps its windows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoopGuard {
    pub max: u64,
    pub window: Duration,
    pub fp: u64,
}

impl LoopGuard {
    /// What the exchange counts for it (`proxy::limit`: its windows are global across workers).
    pub fn kind(&self) -> LimitKind {
        LimitKind::Loop {
            max: self.max,
            window: self.window,
        }
    }
}

/// A hash of a `tools/call`'s `params.arguments` object as the scanner found it (`text`), for
/// keys with `arguments`. Insignificant whitespace does not count, nor does the order of the
/// top-level members (each is hashed apart and the hashes added); deeper key order and string
/// escapes do (`{"a":"x"}` and `{"a":"\u0078"}` differ): a model repeating a call sends the
/// same bytes, and this stays one pass over them with nothing allocated.
pub fn arguments_hash(text: &[u8]) -> u64 {
    let mut total: u64 = 0;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let (mut depth, mut in_string, mut escaped) = (0u32, false, false);
    for &b in text {
        if in_string {
            h.write_u8(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b' ' | b'\t' | b'\n' | b'\r' => continue,
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth == 1 {
                    continue;
                }
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    continue;
                }
            }
            b',' if depth == 1 => {
                total = total.wrapping_add(h.finish());
                h = std::collections::hash_map::DefaultHasher::new();
                continue;
            }
            _ => {}
        }
        h.write_u8(b);
    }
    total.wrapping_add(h.finish())
}

impl LimitRule {
    /// A per-tool rule (it names tools): its rejections of a tool call are tool results with
    /// `isError`, so the model reads them; other rules throttle with a JSON-RPC error.
    pub fn per_tool(&self) -> bool {
        self.tools.is_some()
    }

    /// What an admitted call adds to `kind`'s count: one call, or for a token quota the cost
    /// of `tool` (its reply's tokens are charged after it).
    pub fn units(&self, kind: &LimitKind, tool: Option<&str>) -> u64 {
        match kind {
            LimitKind::Tokens { .. } => tool.map_or(0, |t| {
                self.costs
                    .iter()
                    .find(|(g, _)| crate::mcp::names::glob_match(g, t))
                    .map_or(0, |c| c.1)
            }),
            _ => 1,
        }
    }

    /// Computes the fingerprints of the rule's limits from its definition (`describe`: the
    /// rule's target keys as written; its key parts and each limit are hashed beside it).
    pub fn seal(&mut self, describe: &str, time_zone: &str) {
        for l in &mut self.limits {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            self.name.hash(&mut h);
            describe.hash(&mut h);
            self.key.hash(&mut h);
            l.kind.hash(&mut h);
            if l.kind.window().is_some() {
                time_zone.hash(&mut h);
            }
            l.fp = h.finish();
        }
        if let Some(g) = &mut self.loop_guard {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            ("loop", &self.name, describe, self.key, g.max, g.window).hash(&mut h);
            g.fp = h.finish();
        }
    }
}

/// GCRA in microseconds: `t` the emission interval (`per / limit`), `tau` the tolerance
/// (`(burst - 1) * t`). The state is one number, the theoretical arrival time `tat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gcra {
    pub t: u64,
    pub tau: u64,
}

impl Gcra {
    pub fn new(limit: u64, per: Duration, burst: u64) -> Gcra {
        let t = (per.as_micros() as u64 / limit.max(1)).max(1);
        Gcra {
            t,
            tau: t.saturating_mul(burst.max(1) - 1),
        }
    }

    /// `tat` after one admitted call at `now`.
    pub fn admit(&self, tat: u64, now: u64) -> u64 {
        tat.max(now).saturating_add(self.t)
    }

    /// How many calls conform at `at` (0 ..= burst).
    pub fn available(&self, tat: u64, at: u64) -> u64 {
        let start = tat.max(at);
        let room = at.saturating_add(self.tau);
        if start > room {
            0
        } else {
            (room - start) / self.t + 1
        }
    }

    /// When the next call conforms (`now` if one does now).
    pub fn next_at(&self, tat: u64, now: u64) -> u64 {
        tat.saturating_sub(self.tau).max(now)
    }
}

/// The calendar window holding `now_unix` in `tz`: (start, end) in Unix seconds. Called only
/// when a cached window ends, never per request.
pub fn window_bounds(now_unix: i64, window: CalWindow, tz: &jiff::tz::TimeZone) -> (i64, i64) {
    use jiff::ToSpan;
    let fallback = |len: i64| {
        let start = now_unix - now_unix.rem_euclid(len);
        (start, start + len)
    };
    let Ok(ts) = jiff::Timestamp::from_second(now_unix) else {
        return fallback(60);
    };
    let z = ts.to_zoned(tz.clone());
    let bounds = || -> Result<(i64, i64), jiff::Error> {
        let (start, end) = match window {
            CalWindow::Minute => {
                let s = z.with().second(0).subsec_nanosecond(0).build()?;
                let e = s.checked_add(1.minute())?;
                (s, e)
            }
            CalWindow::Hour => {
                let s = z.with().minute(0).second(0).subsec_nanosecond(0).build()?;
                let e = s.checked_add(1.hour())?;
                (s, e)
            }
            CalWindow::Day => {
                let s = z.start_of_day()?;
                let e = s.tomorrow()?.start_of_day()?;
                (s, e)
            }
            CalWindow::Month => {
                let s = z.first_of_month()?.start_of_day()?;
                let e = s.checked_add(1.month())?.start_of_day()?;
                (s, e)
            }
        };
        Ok((start.timestamp().as_second(), end.timestamp().as_second()))
    };
    match bounds() {
        Ok((s, e)) if s <= now_unix && now_unix < e => (s, e),
        _ => fallback(match window {
            CalWindow::Minute => 60,
            CalWindow::Hour => 3600,
            CalWindow::Day | CalWindow::Month => 86_400,
        }),
    }
}

/// A worker's share of a budget before the exchange has said anything about a key:
/// `ceil(budget / workers)`, so a key used on one core alone gets a fair start and the shares
/// add up to at most `budget + workers - 1`.
pub fn initial_share(budget: u64, workers: usize) -> u64 {
    let n = workers.max(1) as u64;
    budget.div_ceil(n)
}

/// Splits `remaining` among workers in proportion to their demand in the last interval (evenly
/// when nobody asked); what rounding leaves goes one by one to the most demanding. The shares
/// add up to exactly `remaining`: a key hot on one core gets all of it at the next sync, and
/// none is lost to rounding. A worker left without a share waits for the next sync on its
/// first call (`proxy::limit`), which its demand brings at once.
pub fn split(remaining: u64, demand: &[u64], out: &mut [u64]) {
    let n = demand.len().min(out.len());
    if n == 0 {
        return;
    }
    let even = demand[..n].iter().all(|&d| d == 0);
    let weight = |d: u64| u128::from(d) + u128::from(even);
    let total: u128 = demand[..n].iter().map(|&d| weight(d)).sum();
    let mut given = 0u64;
    for w in 0..n {
        let s = (u128::from(remaining) * weight(demand[w]) / total) as u64;
        out[w] = s;
        given += s;
    }
    let mut left = remaining - given;
    // Each floor lost less than one, so fewer than n are left: one each, most demanding first.
    let mut order: smallvec::SmallVec<[usize; 16]> = (0..n).collect();
    order.sort_by(|&a, &c| demand[c].cmp(&demand[a]));
    for w in order.into_iter().cycle() {
        if left == 0 {
            break;
        }
        out[w] += 1;
        left -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_arguments_hash_ignores_whitespace_and_top_level_order_only() {
        let h = |s: &str| arguments_hash(s.as_bytes());
        let base = h(r#"{"city":"Paris","days":[1,2]}"#);
        assert_eq!(
            base,
            h(r#"{ "city" : "Paris",
            "days": [1, 2] }"#)
        );
        assert_eq!(base, h(r#"{"days":[1,2],"city":"Paris"}"#));
        // Values, nesting, order below the top level and spaces inside strings count.
        for other in [
            r#"{"city":"Paris","days":[2,1]}"#,
            r#"{"city":"Pari","days":[1,2]}"#,
            r#"{"city":"Par is","days":[1,2]}"#,
            r#"{"city":"Paris"}"#,
            r#"{"city":"Paris","days":[1,2],"x":null}"#,
            r#"{"city":{"a":1,"b":2},"days":[1,2]}"#,
        ] {
            assert_ne!(base, h(other), "{other}");
        }
        assert_ne!(h(r#"{"a":{"x":1,"y":2}}"#), h(r#"{"a":{"y":2,"x":1}}"#));
        // A quote escaped inside a string does not end it.
        assert_ne!(h(r#"{"a":"x\" ,\"b"}"#), h(r#"{"a":"x\",\"b"}"#));
        assert_ne!(h("{}"), h(r#"{"a":1}"#));
    }

    #[test]
    fn gcra_admits_the_burst_then_one_per_interval() {
        // 3 per second, burst 3: t = 333_333 µs.
        let g = Gcra::new(3, Duration::from_secs(1), 3);
        let mut tat = 0;
        let now = 10_000_000;
        assert_eq!(g.available(tat, now), 3);
        for left in [2, 1, 0] {
            tat = g.admit(tat, now);
            assert_eq!(g.available(tat, now), left);
        }
        // The next conforms one interval after the first.
        assert_eq!(g.next_at(tat, now), now + g.t);
        assert_eq!(g.available(tat, now + g.t - 1), 0);
        assert_eq!(g.available(tat, now + g.t), 1);
        // Idle for long: back to the burst, never more.
        assert_eq!(g.available(tat, now + 60_000_000), 3);
    }

    #[test]
    fn gcra_burst_one_is_an_even_rate() {
        let g = Gcra::new(10, Duration::from_secs(1), 1);
        assert_eq!(g.tau, 0);
        let tat = g.admit(0, 1_000_000);
        assert_eq!(g.available(tat, 1_000_000), 0);
        assert_eq!(g.available(tat, 1_100_000), 1);
    }

    #[test]
    fn windows_in_utc() {
        let utc = jiff::tz::TimeZone::UTC;
        // 2026-11-28T23:59:30Z
        let t = 1_795_910_370;
        let (s, e) = window_bounds(t, CalWindow::Minute, &utc);
        assert_eq!((s % 60, e - s), (0, 60));
        assert!(s <= t && t < e);
        let (s, e) = window_bounds(t, CalWindow::Day, &utc);
        assert_eq!((s % 86_400, e - s), (0, 86_400));
        let (s, e) = window_bounds(t, CalWindow::Hour, &utc);
        assert_eq!((s % 3600, e - s), (0, 3600));
    }

    #[test]
    fn a_month_ends_at_local_midnight_across_a_dst_change() {
        let tz = jiff::tz::TimeZone::get("Europe/Berlin").unwrap();
        // 2026-10-15T12:00:00Z: October 2026 in Berlin runs from Oct 1 00:00 CEST (UTC+2) to
        // Nov 1 00:00 CET (UTC+1): the DST change on Oct 25 makes it one hour longer.
        let t = 1_792_065_600;
        let (s, e) = window_bounds(t, CalWindow::Month, &tz);
        assert_eq!(s, 1_790_805_600, "2026-09-30T22:00:00Z");
        assert_eq!(e, 1_793_487_600, "2026-10-31T23:00:00Z");
        assert_eq!(e - s, 31 * 86_400 + 3600);
        // The last second of the month is in it; midnight is the next window.
        assert_eq!(window_bounds(e - 1, CalWindow::Month, &tz), (s, e));
        assert_eq!(window_bounds(e, CalWindow::Month, &tz).0, e);
        // A day in a zone with a half-hour offset starts at its local midnight.
        let kolkata = jiff::tz::TimeZone::get("Asia/Kolkata").unwrap();
        let (s, _) = window_bounds(t, CalWindow::Day, &kolkata);
        assert_eq!((s + 5 * 3600 + 1800) % 86_400, 0);
    }

    #[test]
    fn initial_shares_cover_the_budget_with_bounded_rounding() {
        assert_eq!(initial_share(5, 1), 5);
        assert_eq!(initial_share(5, 2), 3);
        assert_eq!(initial_share(1, 4), 1);
        for budget in 0..50 {
            for n in 1..9 {
                let total = initial_share(budget, n) * n as u64;
                assert!(total >= budget && total < budget + n as u64);
            }
        }
    }

    #[test]
    fn split_follows_demand_and_loses_nothing() {
        let mut out = [0u64; 2];
        split(100, &[98, 0], &mut out);
        assert_eq!(out, [100, 0]);
        split(100, &[3, 1], &mut out);
        assert_eq!(out, [75, 25]);
        split(1, &[0, 5], &mut out);
        assert_eq!(out, [0, 1]);
        split(0, &[3, 3], &mut out);
        assert_eq!(out, [0, 0]);
        let mut out = [0u64; 4];
        for r in 0..40 {
            split(r, &[1, 7, 0, 7], &mut out);
            assert_eq!(out.iter().sum::<u64>(), r);
        }
        split(10, &[0, 0, 0, 0], &mut out);
        assert!(out.iter().all(|&s| s == 2 || s == 3), "{out:?}");
    }
}

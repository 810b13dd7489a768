//! The merged stream written to the client: member messages judged and relayed, keep-alives,
//! and its end (client gone, shutdown, members gone or lost).

use futures_util::future::{select_all, FutureExt, LocalBoxFuture};
use serde_json::Value;

use crate::http::chunked::{encode_chunk, LAST_CHUNK};
use crate::http::pool::Idleness;
use crate::http::sse;

use super::super::super::authorize;
use super::super::super::client::Client;
use super::super::super::context::Ctx;
use super::super::super::shutdown::Woken;
use super::super::super::state::WorkerState;
use super::super::tables::TableKind;
use super::judge::{judge, Verdict};
use super::member::{count_member_end, Member};
use super::SUBSCRIPTION_ID;

/// Whether the caller may read resource `uri` (of upstream `u`) here and now: its updates are
/// relayed only then (the endpoint's rules and Rego, `proxy::authorize::usable`).
fn resource_shown(
    w: &WorkerState,
    gw: &crate::proxy::state::Gateway,
    server: usize,
    access: &authorize::Access,
    u: usize,
    uri: &str,
) -> bool {
    let item = crate::policy::rules::Item {
        kind: crate::policy::rules::ItemKind::Resource,
        name: uri,
        method: crate::mcp::Method::ResourcesRead,
        upstream: Some(u),
        annotations: 0,
    };
    authorize::usable(w, gw, server, access, &item)
}

/// What woke the relay.
enum Woke {
    Member(usize),
    Client,
    Keepalive,
    Shutdown,
}

/// Writes `first` (the ack), then relays the members until the client leaves (`client_closed`),
/// the worker shuts down (`shutdown`) or every member stream has ended (`members_gone`); the
/// last two end with the listen's final result.
pub(super) async fn relay(
    w: &WorkerState,
    c: &mut Client,
    ctx: &mut Ctx,
    members: &mut Vec<Member>,
    (client_id, raw_id): (&Value, &[u8]),
    first: Vec<u8>,
) -> &'static str {
    let gen = ctx.gen.clone();
    let gw = &*gen.gw;
    let server = ctx.server.unwrap_or_default();
    let keepalive = gw.config.limits.listen_keepalive;
    let access = authorize::Access::of(ctx);
    let mut events = first;
    let mut watch_client = true;
    // When the client was last written to: keep-alives count from it (a member whose messages
    // are all dropped does not keep the client's stream warm).
    let mut last_write = w.shutdown.now();
    // A member stream ended without its own final result.
    let mut lost = false;
    let fin = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"result\":{{\"resultType\":\"complete\",\"_meta\":{{\"{SUBSCRIPTION_ID}\":{id}}}}}}}",
        id = String::from_utf8_lossy(raw_id)
    );
    loop {
        let mut stale = [false; 3];
        for m in members.iter_mut() {
            if let Err(why) = m.take() {
                let name = &gw.upstreams[m.u].name;
                tracing::warn!(upstream = %name, error = %why, "subscriptions/listen: member stream unusable");
                m.done = true;
                m.ended = Some("unusable");
            }
            while let Some(msg) = m.msgs.pop_front() {
                let member = m.u;
                let exposed = |u: &str| {
                    gw.config.servers[server].resources.filter.allows(u)
                        && resource_shown(w, gw, server, &access, member, u)
                };
                let (verdict, changed) = judge(&msg, client_id, (&m.filter, &exposed), &m.id);
                if let Some(k) = changed {
                    stale[k as usize] = true;
                }
                match verdict {
                    Verdict::Relay(b) => sse::write_event(&mut events, &Default::default(), &b),
                    Verdict::End => {
                        m.done = true;
                        m.finished = true;
                        m.ended.get_or_insert("ended");
                    }
                    Verdict::Ack(_) | Verdict::Drop => {}
                }
            }
        }
        for (k, changed) in [TableKind::Tools, TableKind::Prompts, TableKind::Resources]
            .into_iter()
            .zip(stale)
        {
            if changed {
                w.catalogs.mark_stale(gw, server, k);
            }
        }
        members.retain(|m| {
            if m.done {
                lost |= !m.finished;
                let reason = m.ended.unwrap_or("ended");
                let name = &gw.upstreams[m.u].name;
                tracing::info!(upstream = %name, reason, "subscriptions/listen: a member stream ended; the others go on");
                count_member_end(gw, m.u, reason);
            }
            !m.done
        });
        let over = members.is_empty();
        if over && lost {
            // A member stream broke off (an upstream restarting, a connection lost): the
            // client's ends the same way, with no final result, so it listens again (a final
            // result is an orderly end, after which it would not).
            write(c, ctx, &events);
            let _ = c.flush().await;
            return "members_lost";
        }
        if over {
            sse::write_event(&mut events, &Default::default(), fin.as_bytes());
        }
        if !events.is_empty() {
            write(c, ctx, &events);
            events.clear();
            last_write = w.shutdown.now();
        }
        if over {
            if !ctx.http10 {
                c.out.extend_from_slice(LAST_CHUNK);
            }
            let _ = c.flush().await;
            return "members_gone";
        }
        if c.flush().await.is_err() {
            return "client_closed";
        }
        let until = last_write + keepalive;
        let woke = loop {
            let which = {
                let mut waits: Vec<LocalBoxFuture<'_, Woke>> = members
                    .iter()
                    .enumerate()
                    .map(|(i, m)| {
                        m.conn
                            .io
                            .readable()
                            .map(move |_| Woke::Member(i))
                            .boxed_local()
                    })
                    .collect();
                if watch_client {
                    waits.push(c.conn.io.readable().map(|_| Woke::Client).boxed_local());
                }
                waits.push(
                    w.shutdown
                        .wait_until(until)
                        .map(|why| match why {
                            Woken::Deadline => Woke::Keepalive,
                            Woken::Shutdown => Woke::Shutdown,
                        })
                        .boxed_local(),
                );
                select_all(waits).await.0
            };
            match which {
                Woke::Member(i) if members[i].spurious() => continue,
                Woke::Client => match c.conn.io.peer_state() {
                    Idleness::Closed => break Woke::Client,
                    // A pipelined request: the client is there; stop watching it.
                    Idleness::Unsolicited => watch_client = false,
                    Idleness::Silent => {}
                },
                other => break other,
            }
        };
        match woke {
            Woke::Member(i) => members[i].read().await,
            Woke::Client => return "client_closed",
            Woke::Keepalive => {
                let mut k = Vec::new();
                sse::write_comment(&mut k, b" keep-alive");
                k.push(b'\n');
                write(c, ctx, &k);
                last_write = w.shutdown.now();
            }
            Woke::Shutdown => {
                let mut e = Vec::new();
                sse::write_event(&mut e, &Default::default(), fin.as_bytes());
                write(c, ctx, &e);
                if !ctx.http10 {
                    c.out.extend_from_slice(LAST_CHUNK);
                }
                let _ = c.flush().await;
                return "shutdown";
            }
        }
    }
}

/// Appends bytes of the client's event stream (a chunk, or raw for HTTP/1.0).
fn write(c: &mut Client, ctx: &Ctx, bytes: &[u8]) {
    if ctx.http10 {
        c.out.extend_from_slice(bytes);
    } else {
        encode_chunk(&mut c.out, bytes);
    }
}

//! The catalog of metric names. Every metric the gateway exports is named here and only here.
//! Label values come from closed enums (`Method`, `Outcome`, `error::Kind`) or configured names.

pub const REQUESTS_TOTAL: &str = "tollgate_requests_total";
pub const REQUEST_DURATION_SECONDS: &str = "tollgate_request_duration_seconds";
pub const UPSTREAM_REQUESTS_TOTAL: &str = "tollgate_upstream_requests_total";
/// Requests to upstreams' token endpoints (`upstreams[].credentials`), by upstream, grant
/// (client_credentials, token_exchange) and result (ok, error).
pub const UPSTREAM_TOKEN_REQUESTS_TOTAL: &str = "tollgate_upstream_token_requests_total";
pub const UPSTREAM_DURATION_SECONDS: &str = "tollgate_upstream_duration_seconds";
/// Tool calls by endpoint, tool (its name when config names it, else `other`; at most
/// `observe.max_tool_series` names) and outcome; and their duration.
pub const TOOL_CALLS_TOTAL: &str = "tollgate_tool_calls_total";
pub const TOOL_DURATION_SECONDS: &str = "tollgate_tool_duration_seconds";
pub const CONNECTIONS_OPEN: &str = "tollgate_connections_open";
pub const CONNECTIONS_ACCEPTED_TOTAL: &str = "tollgate_connections_accepted_total";
pub const FIXED_FILE_MISSES_TOTAL: &str = "tollgate_fixed_file_misses_total";
pub const TLS_HANDSHAKE_FAILURES_TOTAL: &str = "tollgate_tls_handshake_failures_total";
pub const REJECTIONS_TOTAL: &str = "tollgate_rejections_total";
pub const LIMIT_REJECTIONS_TOTAL: &str = "tollgate_limit_rejections_total";
/// Pooled upstream connections dropped instead of reused, by reason (closed, unsolicited, expired).
pub const UPSTREAM_POOL_DISCARDS_TOTAL: &str = "tollgate_upstream_pool_discards_total";
pub const SESSIONS_OPENED_TOTAL: &str = "tollgate_sessions_opened_total";
pub const SESSIONS_CLOSED_TOTAL: &str = "tollgate_sessions_closed_total";
/// The admin listener's own limits (`admin.max_connections`, `admin.request_timeout`).
pub const ADMIN_LIMIT_REJECTIONS_TOTAL: &str = "tollgate_admin_limit_rejections_total";
/// Control messages (session revocations, …) a worker's queue could not take, by kind.
pub const CONTROL_UNDELIVERABLE_TOTAL: &str = "tollgate_control_undeliverable_total";
/// Hot reloads by result (ok, error), and when the running config was last loaded successfully.
pub const CONFIG_RELOADS_TOTAL: &str = "tollgate_config_reloads_total";
pub const CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP_SECONDS: &str =
    "tollgate_config_last_reload_success_timestamp_seconds";
/// Federated endpoints: an upstream's part that failed (initialize, a list), by upstream and step.
pub const FEDERATION_UPSTREAM_FAILURES_TOTAL: &str = "tollgate_federation_upstream_failures_total";
/// Federated endpoints: routing tables rebuilt by listing the upstreams, by list kind.
pub const FEDERATION_TABLE_REFRESHES_TOTAL: &str = "tollgate_federation_table_refreshes_total";
/// Server→client requests a session-era upstream sent in a session the gateway holds for
/// clients of 2026-07-28 (`proxy::held`): answered by the gateway (ping) or refused (-32601),
/// never relayed; by method (sampling, elicitation, roots, ping, other).
pub const HELD_SERVER_REQUESTS_TOTAL: &str = "tollgate_held_server_requests_total";
/// Requests that found every held session with an upstream busy at
/// `limits.held_sessions_per_upstream` and had to wait for one (refused when the wait outlasts
/// the upstream's request_timeout: `tollgate_limit_rejections_total`), by upstream.
pub const HELD_SESSION_WAITS_TOTAL: &str = "tollgate_held_session_waits_total";
/// Tools of an upstream a federated endpoint leaves out of its lists and routing tables, by
/// upstream and reason (`x_mcp_header`: an invalid `x-mcp-header` annotation in its schema).
pub const FEDERATION_TOOLS_DROPPED_TOTAL: &str = "tollgate_federation_tools_dropped_total";
/// Held sessions left out of the pool because a request in them ended before its reply did
/// (the client went away, a timeout): the upstream may still be running it.
pub const HELD_SESSIONS_ABANDONED_TOTAL: &str = "tollgate_held_sessions_abandoned_total";
/// Upstreams with `transport: sse`: their event streams open now (one per client session).
pub const LEGACY_UPSTREAM_STREAMS_OPEN: &str = "tollgate_legacy_upstream_streams_open";
/// Upstreams with `transport: sse`: messages the holding worker handed to another worker.
pub const LEGACY_UPSTREAM_HANDOFFS_TOTAL: &str = "tollgate_legacy_upstream_handoffs_total";
/// Upstreams with `transport: sse`: failures by step (connect, endpoint, post, timeout, ended,
/// unroutable, dropped, limit).
pub const LEGACY_UPSTREAM_FAILURES_TOTAL: &str = "tollgate_legacy_upstream_failures_total";
/// 1 unless the upstream is known-down (written at scrape time from the readiness counters).
/// Legacy HTTP+SSE transport: streams open now; POSTs handed to the worker holding their
/// stream; streams ended by how (client closed, slow reader, shutdown, lifetime).
pub const LEGACY_SSE_STREAMS_OPEN: &str = "tollgate_legacy_sse_streams_open";
pub const LEGACY_SSE_HANDOVERS_TOTAL: &str = "tollgate_legacy_sse_handovers_total";
pub const LEGACY_SSE_STREAMS_ENDED_TOTAL: &str = "tollgate_legacy_sse_streams_ended_total";
/// 2026-07-28 `subscriptions/listen`: streams open now (merged on a federated endpoint, or a
/// single upstream's relayed); merged streams ended by reason (client_closed, shutdown, members_gone: every member ended its own subscription, members_lost: a member stream broke off, the client's ends with no final result so it listens again), member streams that ended while the
/// client's went on or could not be opened (by upstream and reason).
pub const LISTEN_STREAMS_OPEN: &str = "tollgate_listen_streams_open";
pub const LISTEN_STREAMS_ENDED_TOTAL: &str = "tollgate_listen_streams_ended_total";
pub const LISTEN_MEMBER_ENDS_TOTAL: &str = "tollgate_listen_member_ends_total";
pub const UPSTREAM_UP: &str = "tollgate_upstream_up";
/// `upstreams[].circuit_breaker`: its state (0 closed, 1 open, 2 half-open) and its changes by
/// the state entered (closed, open, half_open); written at scrape time like `UPSTREAM_UP`.
pub const UPSTREAM_CIRCUIT_STATE: &str = "tollgate_upstream_circuit_state";
pub const UPSTREAM_CIRCUIT_TRANSITIONS_TOTAL: &str = "tollgate_upstream_circuit_transitions_total";
/// `upstreams[].replicas` (upstreams with several): each replica's health check verdict (1
/// healthy), its circuit breaker's state, and its health check probes by result (passed,
/// failed); written at scrape time like `UPSTREAM_UP`.
pub const UPSTREAM_REPLICA_HEALTHY: &str = "tollgate_upstream_replica_healthy";
pub const UPSTREAM_REPLICA_CIRCUIT_STATE: &str = "tollgate_upstream_replica_circuit_state";
pub const UPSTREAM_HEALTH_CHECKS_TOTAL: &str = "tollgate_upstream_health_checks_total";
/// Requests in flight to each replica (upstreams with several), summed over the workers' own
/// counts at scrape time: from the pick to the end of the response body, so an open event
/// stream counts (what the least-in-flight pick sees, per worker).
pub const UPSTREAM_REPLICA_IN_FLIGHT: &str = "tollgate_upstream_replica_in_flight";
pub const WORKERS: &str = "tollgate_workers";
pub const BUILD_INFO: &str = "tollgate_build_info";

/// `servers[].rego`: evaluations that failed and so denied (reason `rego_error`), by server and
/// kind (undefined, wrong_type, runtime, input).
pub const REGO_ERRORS_TOTAL: &str = "tollgate_rego_errors_total";
/// `traffic.rules`: calls refused by a rate limit, concurrency limit or quota, by rule and kind
/// (rate, concurrency, quota). Rule names are bounded by the config.
pub const TRAFFIC_REJECTIONS_TOTAL: &str = "tollgate_traffic_rejections_total";
/// `traffic.max_keys` / `max_global_keys`: limiter keys a worker or the exchange evicted (the
/// oldest idle), and open loop guard windows a worker evicted, to stay within it.
pub const TRAFFIC_KEYS_EVICTED_TOTAL: &str = "tollgate_traffic_keys_evicted_total";
/// Usage messages between the workers and the traffic exchange that a full queue could not take
/// (a worker's level is sent again at its next decision; an update at the next change).
pub const TRAFFIC_EXCHANGE_DROPPED_TOTAL: &str = "tollgate_traffic_exchange_dropped_total";
/// Quotas (`quota`, `tokens`): units counted (calls, or estimated tokens and costs), by rule
/// and kind, summed over the rule's keys (a key is never a label).
pub const TRAFFIC_QUOTA_USED_TOTAL: &str = "tollgate_traffic_quota_used_total";
/// Quotas: the fullest key's share of its budget in the current window (0..1, above 1 when
/// calls in flight overran it), by rule: alert on it nearing 1.
pub const TRAFFIC_QUOTA_FULLEST_RATIO: &str = "tollgate_traffic_quota_fullest_ratio";
/// `traffic.redis`: 1 while the last sync with Redis succeeded, else 0.
pub const TRAFFIC_REDIS_UP: &str = "tollgate_traffic_redis_up";
/// `traffic.redis`: syncs with Redis by result (ok, error).
pub const TRAFFIC_REDIS_SYNCS_TOTAL: &str = "tollgate_traffic_redis_syncs_total";
/// `traffic.redis`: live instances sharing the Redis (heartbeats), as last read: what is left
/// of a budget is split this many ways.
pub const TRAFFIC_REDIS_INSTANCES: &str = "tollgate_traffic_redis_instances";
/// Histogram buckets in seconds: 100 µs to 60 s, dense where a proxy's overhead lives.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];
/// Authorization decisions, one per decided item (a tool call, a prompt, a resource, a method;
/// every message of a batch on its own), by decision (allow, deny) and reason
/// (`policy::rules::Reason`: rule, authenticated, open, hidden, source, time,
/// insufficient_scope, rego, rego_error).
pub const AUTHZ_DECISIONS_TOTAL: &str = "tollgate_authz_decisions_total";
/// Requests refused 401 by why their credential failed (`policy::AuthFailure::reason`).
pub const AUTH_FAILURES_TOTAL: &str = "tollgate_auth_failures_total";
/// Bearer tokens looked up in a worker's verified-token cache, by result (hit: no signature
/// check; miss: verified in full). Added up once a second per worker.
pub const AUTH_TOKEN_CACHE_TOTAL: &str = "tollgate_auth_token_cache_total";
/// Calls to an issuer's token introspection endpoint (RFC 7662) for opaque tokens, by result
/// (active; inactive; refused: active but failing the gateway's iss/aud/exp/nbf/claim checks;
/// error: unreachable, timed out, not 200 or not JSON; the request is refused but for active).
pub const AUTH_INTROSPECTIONS_TOTAL: &str = "tollgate_auth_introspections_total";
/// Fetches of an issuer's signing keys (JWKS, after discovery when configured) by the key
/// refresher thread, by issuer and result (ok, error: the last good keys stay in use).
pub const AUTH_KEY_REFRESHES_TOTAL: &str = "tollgate_auth_key_refreshes_total";
/// `audit`: records written, by sink (file, stdout, http).
pub const AUDIT_RECORDS_TOTAL: &str = "tollgate_audit_records_total";
/// `audit`: records lost, by reason (overflow: `audit.buffer` full with `overflow: drop`;
/// sink_failed: a sink could not write them, the HTTP collector after every retry; closed: the
/// writer had stopped; http_overflow: the HTTP sink's queue full with `overflow: drop`, lost to
/// that sink only).
pub const AUDIT_RECORDS_DROPPED_TOTAL: &str = "tollgate_audit_records_dropped_total";
/// `audit`: failed writes, syncs, rotations and HTTP attempts, by sink.
pub const AUDIT_SINK_ERRORS_TOTAL: &str = "tollgate_audit_sink_errors_total";
/// `audit`: upstream replies whose JSON-RPC errors were not read to the reply's end, by reason
/// (encoding: a Content-Encoding the probe does not decode; max_decoded: `audit.max_decoded`
/// bytes decoded; corrupt: not valid gzip or deflate). Their records may lack `error_code`.
pub const AUDIT_REPLIES_UNREAD_TOTAL: &str = "tollgate_audit_replies_unread_total";
/// `audit`: records handed to the writer thread and not yet written (at most `audit.buffer`).
pub const AUDIT_QUEUE_RECORDS: &str = "tollgate_audit_queue_records";
/// OTLP span export (`tracing.otlp`): spans sent, spans dropped by reason (queue_full,
/// export_failed), and POSTs the collector did not accept.
pub const TRACE_SPANS_EXPORTED_TOTAL: &str = "tollgate_trace_spans_exported_total";
pub const TRACE_SPANS_DROPPED_TOTAL: &str = "tollgate_trace_spans_dropped_total";
pub const TRACE_EXPORT_ERRORS_TOTAL: &str = "tollgate_trace_export_errors_total";

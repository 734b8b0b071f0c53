//! The operator console: one web page (`/console/`) on the node's operations listener and
//! the JSON calls it makes (`/console/api/...`). An operator signs in with a short-lived
//! token minted by `sealpost cluster console` (Admin.ConsoleToken, operators only, over
//! mutual TLS); every call carries it as a bearer token, and any node of the provider
//! verifies it (see `sealpost_crypto::console_token`).
//!
//! The console sees what an operator may see through the gRPC API and nothing more: the
//! nodes and their roles (each member asked, so a node that is down shows as unreachable),
//! throughput and commit latency sampled once a second, relay queues and inbox depths, dead
//! letters with a resend (the same audited `Reprocess` command as `sealpost reprocess`,
//! recorded under the token's operator), a message's timeline by id, and audit search
//! (recorded as an audit read). It never fetches or shows a payload.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use sealpost_crypto::console_token::ConsoleTokens;
use sealpost_crypto::tls::{Role, Subject};
use sealpost_proto::v1 as pb;
use sealpost_raft::RaftNode;
use serde::Deserialize;
use serde_json::json;
use tonic::{Code, Status};

use crate::admin::AdminService;
use crate::audit::AuditService;
use crate::authz::Caller;
use crate::messaging::MessagingService;
use crate::relay_worker::LastErrors;

/// Lifetime of a console token when the operator names none.
pub const CONSOLE_TOKEN_TTL_SECS_DEFAULT: u64 = 15 * 60;
/// Longest lifetime a console token may have.
pub const CONSOLE_TOKEN_TTL_SECS_MAX: u64 = 60 * 60;
/// How often the console's charts are sampled.
pub const CONSOLE_SAMPLE_MS: u64 = 1_000;
/// Samples kept for the charts (ten minutes at one a second).
pub const CONSOLE_SAMPLES_MAX: usize = 600;
/// Bytes of a console request body, at most.
pub const CONSOLE_BODY_BYTES_MAX: usize = 4 * 1024;
/// Dead letters one console page lists, at most.
pub const CONSOLE_DEAD_LETTERS_MAX: u32 = 100;

const INDEX_HTML: &str = include_str!("console/index.html");

/// One point of the console's charts.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Sample {
    pub ts_ms: u64,
    /// Events in the event store.
    pub events: u64,
    /// Batches committed so far and the seconds they took, summed.
    pub commits: u64,
    pub commit_seconds: f64,
    /// WAL fsyncs so far and their seconds, summed.
    pub fsyncs: u64,
    pub fsync_seconds: f64,
}

/// The chart samples, newest last.
pub type History = Arc<Mutex<VecDeque<Sample>>>;

/// Samples the node's counters every [`CONSOLE_SAMPLE_MS`] until `stop` turns true.
pub fn spawn_sampler(
    raft: RaftNode,
    history: History,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    crate::spawn_every(Duration::from_millis(CONSOLE_SAMPLE_MS), stop, move || {
        sample(&raft, &history);
        std::future::ready(())
    })
}

/// Appends one sample of the node's counters to `history`.
fn sample(raft: &RaftNode, history: &History) {
    let Ok(st) = raft.status() else { return };
    let commits = &raft.batch_metrics().commit_seconds;
    let fsyncs = raft.log_fsync_seconds();
    let sample = Sample {
        ts_ms: crate::messaging::now_ms(),
        events: st.sm.event_count,
        commits: commits.count(),
        commit_seconds: commits.total_seconds(),
        fsyncs: fsyncs.count(),
        fsync_seconds: fsyncs.total_seconds(),
    };
    let mut h = history
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if h.len() >= CONSOLE_SAMPLES_MAX {
        h.pop_front();
    }
    h.push_back(sample);
}

/// What the console's handlers share.
#[derive(Clone)]
pub struct Console {
    pub tokens: Arc<ConsoleTokens>,
    pub raft: RaftNode,
    pub admin: AdminService,
    pub messaging: MessagingService,
    pub audit: AuditService,
    pub relay_errors: LastErrors,
    pub history: History,
}

/// An error as the console's script reads it: an HTTP status and `{"error": ...}`.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<Status> for ApiError {
    fn from(s: Status) -> Self {
        let code = match s.code() {
            Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => StatusCode::CONFLICT,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unavailable | Code::DeadlineExceeded => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(code, s.message().to_string())
    }
}

type ApiResult = Result<Response, ApiError>;

impl Console {
    /// The operator the request's bearer token was minted for, as a caller whose actions
    /// are recorded under `console:<identity>@node-<id>`.
    fn caller(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let unauthorized = |why: String| ApiError(StatusCode::UNAUTHORIZED, why);
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                unauthorized("sign in with a console token (sealpost cluster console)".into())
            })?;
        let identity = self
            .tokens
            .verify(token.trim(), crate::messaging::now_ms())
            .map_err(|e| unauthorized(e.to_string()))?;
        let identity = format!("console:{identity}");
        Ok(Caller {
            actor: format!("{identity}@node-{}", self.raft.id()),
            subject: Some(Subject::Role(Role::Operator)),
            identity,
        })
    }
}

fn json_ok(v: impl serde::Serialize) -> ApiResult {
    Ok(Json(v).into_response())
}

async fn whoami(State(c): State<Console>, headers: HeaderMap) -> ApiResult {
    let caller = c.caller(&headers)?;
    json_ok(json!({ "operator": caller.identity, "node": c.raft.id() }))
}

async fn overview(State(c): State<Console>, headers: HeaderMap) -> ApiResult {
    c.caller(&headers)?;
    let st = c.admin.statuses(true).await?;
    json_ok(json!({ "node": c.raft.id(), "members": st.members }))
}

async fn series(State(c): State<Console>, headers: HeaderMap) -> ApiResult {
    c.caller(&headers)?;
    let samples: Vec<Sample> = c
        .history
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .copied()
        .collect();
    json_ok(json!({ "sample_ms": CONSOLE_SAMPLE_MS, "samples": samples }))
}

async fn queues(State(c): State<Console>, headers: HeaderMap) -> ApiResult {
    c.caller(&headers)?;
    let q = c
        .raft
        .view()
        .queue_depths(crate::metrics::METRICS_SCAN_KEYS_MAX)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let errors = c.relay_errors.lock().map(|m| m.clone()).unwrap_or_default();
    json_ok(json!({
        "relay": q.relay_by_provider,
        "relay_errors": errors,
        "inbox": q.inbox_by_org,
        "dead_letters": q.dead_letters,
        "truncated": q.truncated,
    }))
}

async fn dead_letters(State(c): State<Console>, headers: HeaderMap) -> ApiResult {
    c.caller(&headers)?;
    let r = c
        .admin
        .dead_letter_list(pb::DeadLettersRequest {
            before_seq: 0,
            limit: CONSOLE_DEAD_LETTERS_MAX,
        })
        .await?;
    json_ok(r)
}

#[derive(Deserialize)]
struct Resend {
    message_id: String,
    #[serde(default)]
    recipient: String,
}

async fn resend(State(c): State<Console>, headers: HeaderMap, Json(r): Json<Resend>) -> ApiResult {
    let caller = c.caller(&headers)?;
    tracing::info!(actor = %caller.actor, message_id = %r.message_id, "console resend");
    let reply = c
        .admin
        .reprocess_as(
            &caller,
            pb::ReprocessRequest {
                message_id: r.message_id,
                recipient: r.recipient,
            },
        )
        .await?;
    json_ok(reply)
}

async fn message(
    State(c): State<Console>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    let caller = c.caller(&headers)?;
    json_ok(c.messaging.track_as(&caller, id.trim()).await?)
}

#[derive(Deserialize)]
struct Search {
    #[serde(default)]
    sender_org: String,
    #[serde(default)]
    recipient: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    payload_type: String,
    #[serde(default)]
    since_ms: u64,
    #[serde(default)]
    until_ms: u64,
    #[serde(default)]
    cursor: String,
}

async fn search(
    State(c): State<Console>,
    headers: HeaderMap,
    Query(q): Query<Search>,
) -> ApiResult {
    let caller = c.caller(&headers)?;
    let reply = c
        .audit
        .search_as(
            caller.actor,
            pb::MessageSearchRequest {
                since_ms: q.since_ms,
                until_ms: q.until_ms,
                sender_org: q.sender_org,
                recipient: q.recipient,
                patient: String::new(),
                payload_type: q.payload_type,
                status: q.status,
                limit: 50,
                cursor: q.cursor,
            },
        )
        .await?;
    json_ok(reply)
}

async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            // The page loads nothing from anywhere else and is never framed.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        INDEX_HTML,
    )
}

/// The console's routes, to merge into the operations listener's router.
pub fn router(console: Console) -> Router {
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::permanent("/console/") }),
        )
        .route("/console/", get(page))
        .route("/console/api/whoami", get(whoami))
        .route("/console/api/overview", get(overview))
        .route("/console/api/series", get(series))
        .route("/console/api/queues", get(queues))
        .route("/console/api/dead-letters", get(dead_letters))
        .route("/console/api/dead-letters/resend", post(resend))
        .route("/console/api/messages/{id}", get(message))
        .route("/console/api/search", get(search))
        .layer(DefaultBodyLimit::max(CONSOLE_BODY_BYTES_MAX))
        .with_state(console)
}

//! The HTTP admin plane: a JSON API to look at and steer a running broker, Prometheus metrics,
//! health and readiness probes, and a live dashboard.
//!
//! Everything here goes through a server's [`Control`] handle, which every server (Tokio, smol,
//! std) hands out, so this module is written once whatever runtime serves MQTT. It runs on
//! Tokio (axum); a broker on smol or std gives it a small Tokio runtime of its own
//! ([`spawn_on_own_runtime`]).
//!
//! Paths (all JSON but `/metrics` and the dashboard at `/`):
//!
//! | Method and path | What |
//! |---|---|
//! | `GET /healthz` | the process is up |
//! | `GET /readyz` | listeners bound, store loaded, not stopping (503 otherwise) |
//! | `GET /api/v1/clients?prefix=&limit=&cursor=` | clients, connected and with a stored session |
//! | `GET /api/v1/clients/{client_id}` | one client with its subscriptions |
//! | `DELETE /api/v1/clients/{client_id}?session=true` | disconnect (v5: 0x98), discard the session |
//! | `GET /api/v1/retained?filter=&limit=` | retained messages under a filter |
//! | `DELETE /api/v1/retained/{topic}` | clear one retained message |
//! | `POST /api/v1/publish` | publish as the broker |
//! | `GET /api/v1/stats` | counters and gauges |
//! | `POST /api/v1/reload` | re-read the configuration (as SIGHUP) |
//! | `GET /api/v1/openapi.json` | the OpenAPI 3 description of all of this |
//! | `GET /metrics` | Prometheus / OpenMetrics text |
//!
//! With bearer tokens configured, every path but `/healthz` and `/readyz` needs
//! `Authorization: Bearer <token>`; errors are `{"error": code, "detail": text}`.

mod metrics;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use serde_json::{Value, json};
use ternmq_core::broker::admin::{
    AdminError, ClientDetail, ClientInfo, Request as Admin, Response as Answer, RetainedMessage,
};
use ternmq_core::codec::{
    MqttStr, PayloadFormat, ProtocolVersion, Publish, PublishProperties, QoS, ReasonCode,
};
use ternmq_core::topic::{TopicFilter, TopicName};
use ternmq_tokio::{Control, TlsAcceptor};

/// Clients or retained messages in one answer when the request does not say.
const DEFAULT_LIMIT: usize = 100;
/// The most a request may ask for at once.
const MAX_LIMIT: usize = 1000;
/// How long a TLS handshake on the admin port may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request body (a publish's payload, base64 and all).
const MAX_BODY: usize = 16 * 1024 * 1024;

const OPENAPI: &str = include_str!("openapi.json");
const DASHBOARD: &str = include_str!("dashboard.html");

/// What a configuration reload did ([`Reloader`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Options that changed but take effect only on a restart.
    pub restart_needed: Vec<String>,
    /// Clients disconnected because their user was removed.
    pub disconnected: usize,
    /// Other things worth saying (certificates reloaded or kept).
    pub notes: Vec<String>,
}

/// Re-reads the configuration and applies it (the program's SIGHUP); an error says why nothing
/// was applied. Called on a thread that may block.
pub type Reloader = Arc<dyn Fn() -> Result<Reloaded, String> + Send + Sync>;

/// The admin plane's settings.
#[derive(Clone, Default)]
pub struct HttpOptions {
    /// Bearer tokens; empty: no authentication (allowed on a loopback address only).
    pub tokens: Vec<String>,
    /// HTTPS with this certificate.
    pub tls: Option<TlsAcceptor>,
    /// What `POST /api/v1/reload` does; without it the path answers 409.
    pub reload: Option<Reloader>,
}

impl std::fmt::Debug for HttpOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpOptions")
            .field("tokens", &self.tokens.len())
            .field("tls", &self.tls.is_some())
            .field("reload", &self.reload.is_some())
            .finish()
    }
}

/// Reads bearer tokens from `path`: one a line, blank lines and `#` comments skipped. An error
/// names the file.
pub fn load_tokens(path: &Path) -> io::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let tokens: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    if tokens.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: no token in it (one token a line)", path.display()),
        ));
    }
    Ok(tokens)
}

/// Refuses to serve the admin plane on `addr` without tokens unless it is a loopback address.
pub fn check_bind(addr: SocketAddr, options: &HttpOptions) -> Result<(), String> {
    if options.tokens.is_empty() && !addr.ip().is_loopback() {
        return Err(format!(
            "refusing to serve the HTTP admin API on {addr} without a token_file: anyone who \
             can reach it could disconnect clients and publish. Set token_file in the [http] \
             table (a file with one bearer token a line), or bind it to a loopback address \
             (127.0.0.1:8080)"
        ));
    }
    Ok(())
}

#[derive(Clone)]
struct AppState {
    control: Control,
    tokens: Arc<[String]>,
    reload: Option<Reloader>,
}

/// The router of the admin plane over `control`.
pub fn router(control: Control, options: &HttpOptions) -> Router {
    let state =
        AppState { control, tokens: options.tokens.clone().into(), reload: options.reload.clone() };
    let guarded = Router::new()
        .route("/", get(dashboard))
        .route("/api/v1/clients", get(list_clients))
        .route("/api/v1/clients/{client_id}", get(get_client).delete(kick_client))
        .route("/api/v1/retained", get(list_retained))
        .route("/api/v1/retained/{*topic}", axum::routing::delete(clear_retained))
        .route("/api/v1/publish", post(publish))
        .route("/api/v1/stats", get(stats))
        .route("/api/v1/reload", post(reload))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(guarded)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Serves the admin plane on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    control: Control,
    options: HttpOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let app = router(control, &options);
    match options.tls {
        None => axum::serve(listener, app).with_graceful_shutdown(shutdown).await,
        Some(tls) => {
            let listener = TlsListener::start(listener, tls)?;
            axum::serve(listener, app).with_graceful_shutdown(shutdown).await
        }
    }
}

/// Binds `addr` and serves the admin plane on a Tokio runtime of its own (one worker thread),
/// whatever runtime serves MQTT; returns the address bound. It serves until the process ends.
pub fn spawn_on_own_runtime(
    addr: SocketAddr,
    control: Control,
    options: HttpOptions,
) -> io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("ternmq-http")
        .enable_all()
        .build()?;
    std::thread::Builder::new().name("ternmq-http".into()).spawn(move || {
        let served = rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            serve(listener, control, options, std::future::pending()).await
        });
        if let Err(e) = served {
            log::error!("HTTP admin API stopped: {e}");
        }
    })?;
    Ok(local)
}

/// TLS on the admin port: handshakes run on tasks of their own (a slow one holds up no other)
/// and finished connections queue for axum.
struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        SocketAddr,
    )>,
    local: SocketAddr,
}

impl TlsListener {
    fn start(listener: tokio::net::TcpListener, tls: TlsAcceptor) -> io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        log::warn!("HTTP admin API: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let acceptor =
                    tokio_rustls::TlsAcceptor::from(tls.rustls_config(&[b"http/1.1".as_slice()]));
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => {
                            let _ = tx.send((s, peer)).await;
                        }
                        Ok(Err(e)) => log::debug!("HTTP admin API: TLS from {peer}: {e}"),
                        Err(_) => log::debug!("HTTP admin API: TLS from {peer}: timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

// ---------------------------------------------------------------- errors and auth

/// An error answer: `{"error": code, "detail": text}`.
fn fail(status: StatusCode, code: &str, detail: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": code, "detail": detail.into() }))).into_response()
}

fn stopped(e: &io::Error) -> Response {
    fail(StatusCode::SERVICE_UNAVAILABLE, "unavailable", format!("the broker is not serving: {e}"))
}

fn refused(e: &AdminError) -> Response {
    match e {
        AdminError::TooLarge { .. } => {
            fail(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
        }
        _ => fail(StatusCode::BAD_REQUEST, "invalid", e.to_string()),
    }
}

fn unexpected(answer: &Answer) -> Response {
    log::error!("HTTP admin API: unexpected answer {answer:?}");
    fail(StatusCode::INTERNAL_SERVER_ERROR, "internal", "unexpected answer from the broker")
}

async fn not_found() -> Response {
    fail(StatusCode::NOT_FOUND, "not_found", "no such path; see /api/v1/openapi.json")
}

async fn method_not_allowed() -> Response {
    fail(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this path does not take that method",
    )
}

/// Compares without stopping at the first difference, so that timing tells nothing of a token.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn authorize(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if state.tokens.is_empty() {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    let ok = given.is_some_and(|g| state.tokens.iter().any(|t| same(t.as_bytes(), g.as_bytes())));
    if ok {
        return next.run(request).await;
    }
    let mut response = fail(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "this path needs the header Authorization: Bearer <token>, with a token of the token_file",
    );
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"ternmq\""));
    response
}

// ---------------------------------------------------------------- health

async fn healthz() -> Response {
    axum::Json(json!({ "status": "ok" })).into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.control.is_ready() {
        axum::Json(json!({ "status": "ready" })).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({ "status": "not ready" })))
            .into_response()
    }
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn dashboard() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], DASHBOARD).into_response()
}

// ---------------------------------------------------------------- asking the broker

/// A query string, or a 400 in the API's error form.
struct Params<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequestParts<S>
    for Params<T>
{
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Response> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(q)) => Ok(Params(q)),
            Err(e) => Err(bad_query(&e)),
        }
    }
}

/// The broker's answer to `request`; a refusal or a stopped broker as the response to give.
async fn ask(state: &AppState, request: Admin) -> Result<Answer, Response> {
    match state.control.request(request).await {
        Ok(Answer::Refused(e)) => Err(refused(&e)),
        Ok(answer) => Ok(answer),
        Err(e) => Err(stopped(&e)),
    }
}

// ---------------------------------------------------------------- clients

#[derive(Deserialize)]
struct ClientsQuery {
    #[serde(default)]
    prefix: String,
    limit: Option<usize>,
    cursor: Option<String>,
}

fn limit(given: Option<usize>) -> Result<usize, Response> {
    match given.unwrap_or(DEFAULT_LIMIT) {
        n @ 1..=MAX_LIMIT => Ok(n),
        n => Err(fail(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("limit {n}: give 1 to {MAX_LIMIT}"),
        )),
    }
}

fn bad_query(e: &QueryRejection) -> Response {
    fail(StatusCode::BAD_REQUEST, "invalid", e.body_text())
}

fn protocol(v: ProtocolVersion) -> &'static str {
    match v {
        ProtocolVersion::V3_1 => "3.1",
        ProtocolVersion::V3_1_1 => "3.1.1",
        _ => "5.0",
    }
}

fn unix_now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

fn client_json(c: &ClientInfo, control: &Control) -> Value {
    let connected_since = c.connected_for.map(|d| unix_now().saturating_sub(d).as_secs());
    let listener = control.listeners().get(usize::from(c.listener));
    json!({
        "client_id": c.client_id,
        "username": c.username,
        "peer": c.peer.map(|p| p.to_string()),
        "protocol": protocol(c.protocol),
        "listener": listener.map(|l| l.addr.to_string()),
        "listener_kind": listener.map(|l| l.kind),
        "connected": c.connected,
        "connected_since": connected_since,
        "keep_alive": c.keep_alive,
        "subscriptions": c.subscriptions,
        "inflight": c.inflight,
        "queued": c.queued,
        "session_expiry_interval": c.session_expiry,
        "session_expires_in": c.expires_in.map(|d| d.as_secs()),
    })
}

async fn list_clients(State(state): State<AppState>, Params(q): Params<ClientsQuery>) -> Response {
    let limit = match limit(q.limit) {
        Ok(n) => n,
        Err(r) => return r,
    };
    let request = Admin::ListClients { prefix: q.prefix, after: q.cursor, limit };
    match ask(&state, request).await {
        Ok(Answer::Clients { clients, next }) => {
            let clients: Vec<Value> =
                clients.iter().map(|c| client_json(c, &state.control)).collect();
            axum::Json(json!({ "clients": clients, "next_cursor": next })).into_response()
        }
        Ok(other) => unexpected(&other),
        Err(r) => r,
    }
}

fn detail_json(d: &ClientDetail, control: &Control) -> Value {
    let mut v = client_json(&d.info, control);
    let subs: Vec<Value> = d
        .subscriptions
        .iter()
        .map(|s| {
            json!({
                "filter": s.filter,
                "qos": s.qos as u8,
                "no_local": s.no_local,
                "retain_as_published": s.retain_as_published,
                "subscription_identifier": s.subscription_id,
            })
        })
        .collect();
    v["subscription_list"] = Value::Array(subs);
    v
}

async fn get_client(
    State(state): State<AppState>,
    UrlPath(client_id): UrlPath<String>,
) -> Response {
    match ask(&state, Admin::GetClient { client_id: client_id.clone() }).await {
        Ok(Answer::Client(Some(d))) => axum::Json(detail_json(&d, &state.control)).into_response(),
        Ok(Answer::Client(None)) => {
            fail(StatusCode::NOT_FOUND, "not_found", format!("no client {client_id:?}"))
        }
        Ok(other) => unexpected(&other),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
struct KickQuery {
    #[serde(default)]
    session: bool,
}

async fn kick_client(
    State(state): State<AppState>,
    UrlPath(client_id): UrlPath<String>,
    Params(q): Params<KickQuery>,
) -> Response {
    let request = Admin::Disconnect {
        client_id: client_id.clone(),
        reason: ReasonCode::AdministrativeAction,
        discard_session: q.session,
    };
    match ask(&state, request).await {
        Ok(Answer::Disconnected { found: true }) => {
            log::info!(
                "HTTP admin API: disconnected {client_id:?}{}",
                if q.session { " and discarded its session" } else { "" }
            );
            axum::Json(json!({
                "client_id": client_id,
                "disconnected": true,
                "session_discarded": q.session,
            }))
            .into_response()
        }
        Ok(Answer::Disconnected { found: false }) => {
            fail(StatusCode::NOT_FOUND, "not_found", format!("no client {client_id:?}"))
        }
        Ok(other) => unexpected(&other),
        Err(r) => r,
    }
}

// ---------------------------------------------------------------- retained messages

#[derive(Deserialize)]
struct RetainedQuery {
    filter: Option<String>,
    limit: Option<usize>,
}

/// A payload as JSON: the text when it is UTF-8, base64 otherwise, and which.
fn payload_json(payload: &[u8]) -> (Value, &'static str) {
    match std::str::from_utf8(payload) {
        Ok(text) => (Value::String(text.into()), "utf-8"),
        Err(_) => (Value::String(BASE64.encode(payload)), "base64"),
    }
}

fn properties_json(p: &PublishProperties) -> Value {
    let users: Vec<Value> = p
        .user_properties
        .iter()
        .map(|(k, v)| json!({ "key": k.as_str(), "value": v.as_str() }))
        .collect();
    json!({
        "payload_format_indicator": p.payload_format_indicator.map(|f| match f {
            PayloadFormat::Utf8 => 1,
            _ => 0,
        }),
        "message_expiry_interval": p.message_expiry_interval,
        "content_type": p.content_type.as_ref().map(MqttStr::as_str),
        "response_topic": p.response_topic.as_ref().map(TopicName::as_str),
        "correlation_data": p.correlation_data.as_ref().map(|d| BASE64.encode(d)),
        "user_properties": users,
    })
}

fn retained_json(m: &RetainedMessage) -> Value {
    let (payload, encoding) = payload_json(&m.payload);
    json!({
        "topic": m.topic,
        "qos": m.qos as u8,
        "payload": payload,
        "encoding": encoding,
        "properties": properties_json(&m.properties),
        "expires_in": m.expires_in.map(|d| d.as_secs()),
    })
}

async fn list_retained(
    State(state): State<AppState>,
    Params(q): Params<RetainedQuery>,
) -> Response {
    let limit = match limit(q.limit) {
        Ok(n) => n,
        Err(r) => return r,
    };
    let text = q.filter.unwrap_or_else(|| "#".into());
    let filter = match TopicFilter::new(&text) {
        Ok(f) => f,
        Err(e) => {
            return fail(StatusCode::BAD_REQUEST, "invalid", format!("filter {text:?}: {e}"));
        }
    };
    match ask(&state, Admin::ListRetained { filter, limit }).await {
        Ok(Answer::Retained { messages, truncated }) => {
            let messages: Vec<Value> = messages.iter().map(retained_json).collect();
            axum::Json(json!({ "messages": messages, "truncated": truncated })).into_response()
        }
        Ok(other) => unexpected(&other),
        Err(r) => r,
    }
}

async fn clear_retained(State(state): State<AppState>, UrlPath(text): UrlPath<String>) -> Response {
    let topic = match TopicName::new(&text) {
        Ok(t) if !text.is_empty() => t,
        Ok(_) => return fail(StatusCode::BAD_REQUEST, "invalid", "the topic is empty"),
        Err(e) => {
            return fail(StatusCode::BAD_REQUEST, "invalid", format!("topic {text:?}: {e}"));
        }
    };
    match ask(&state, Admin::ClearRetained { topic }).await {
        Ok(Answer::Cleared { found: true }) => {
            axum::Json(json!({ "topic": text, "cleared": true })).into_response()
        }
        Ok(Answer::Cleared { found: false }) => {
            fail(StatusCode::NOT_FOUND, "not_found", format!("no retained message on {text:?}"))
        }
        Ok(other) => unexpected(&other),
        Err(r) => r,
    }
}

// ---------------------------------------------------------------- publishing

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    topic: String,
    payload: Option<String>,
    payload_base64: Option<String>,
    #[serde(default)]
    qos: u8,
    #[serde(default)]
    retain: bool,
    #[serde(default)]
    properties: PropertiesBody,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PropertiesBody {
    payload_format_indicator: Option<u8>,
    message_expiry_interval: Option<u32>,
    content_type: Option<String>,
    response_topic: Option<String>,
    /// Base64.
    correlation_data: Option<String>,
    #[serde(default)]
    user_properties: Vec<UserPropertyBody>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserPropertyBody {
    key: String,
    value: String,
}

fn invalid(detail: impl Into<String>) -> Response {
    fail(StatusCode::BAD_REQUEST, "invalid", detail)
}

fn mqtt_str(field: &str, s: &str) -> Result<MqttStr, Response> {
    MqttStr::new(s).map_err(|e| invalid(format!("{field}: {e}")))
}

/// The message a publish request describes; a bad field is a 400 naming it.
fn message(body: PublishBody) -> Result<Publish, Response> {
    let topic =
        TopicName::new(&body.topic).map_err(|e| invalid(format!("topic {:?}: {e}", body.topic)))?;
    if body.topic.is_empty() {
        return Err(invalid("topic: empty"));
    }
    let qos = QoS::from_u8(body.qos)
        .ok_or_else(|| invalid(format!("qos {}: use 0, 1 or 2", body.qos)))?;
    let payload = match (body.payload, body.payload_base64) {
        (Some(_), Some(_)) => return Err(invalid("give payload or payload_base64, not both")),
        (Some(text), None) => Bytes::from(text),
        (None, Some(b64)) => Bytes::from(
            BASE64.decode(b64.trim()).map_err(|e| invalid(format!("payload_base64: {e}")))?,
        ),
        (None, None) => Bytes::new(),
    };
    let p = body.properties;
    let payload_format_indicator = match p.payload_format_indicator {
        None => None,
        Some(0) => Some(PayloadFormat::Unspecified),
        Some(1) => {
            if std::str::from_utf8(&payload).is_err() {
                return Err(invalid("payload_format_indicator 1, but the payload is not UTF-8"));
            }
            Some(PayloadFormat::Utf8)
        }
        Some(v) => return Err(invalid(format!("payload_format_indicator {v}: use 0 or 1"))),
    };
    let mut props = PublishProperties {
        payload_format_indicator,
        message_expiry_interval: p.message_expiry_interval,
        ..PublishProperties::default()
    };
    if let Some(ct) = &p.content_type {
        props.content_type = Some(mqtt_str("content_type", ct)?);
    }
    if let Some(rt) = &p.response_topic {
        let t = TopicName::new(rt).map_err(|e| invalid(format!("response_topic {rt:?}: {e}")))?;
        if rt.is_empty() {
            return Err(invalid("response_topic: empty"));
        }
        props.response_topic = Some(t);
    }
    if let Some(cd) = &p.correlation_data {
        let data =
            BASE64.decode(cd.trim()).map_err(|e| invalid(format!("correlation_data: {e}")))?;
        props.correlation_data = Some(Bytes::from(data));
    }
    for u in &p.user_properties {
        props.user_properties.push((
            mqtt_str("user_properties key", &u.key)?,
            mqtt_str("user_properties value", &u.value)?,
        ));
    }
    let mut publish = Publish::new(topic, payload);
    publish.qos = qos;
    publish.retain = body.retain;
    publish.properties = props;
    Ok(publish)
}

async fn publish(State(state): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return fail(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the request body is over {MAX_BODY} bytes"),
            );
        }
        Err(e) => return invalid(e.body_text()),
    };
    let body: PublishBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return invalid(format!("the body is not a publish request: {e}")),
    };
    let (topic, qos, retain) = (body.topic.clone(), body.qos, body.retain);
    let message = match message(body) {
        Ok(m) => m,
        Err(r) => return r,
    };
    match ask(&state, Admin::Publish(message)).await {
        Ok(Answer::Published { matched }) => {
            log::debug!(
                "HTTP admin API: published on {topic:?} (QoS {qos}, retain {retain}) to {matched}"
            );
            axum::Json(json!({ "topic": topic, "matched": matched })).into_response()
        }
        Ok(other) => unexpected(&other),
        Err(r) => r,
    }
}

// ---------------------------------------------------------------- stats, metrics, reload

/// The broker's figures now, with the server's listeners and store.
async fn snapshot(state: &AppState) -> Result<metrics::Snapshot<'_>, Response> {
    match ask(state, Admin::Stats).await? {
        Answer::Stats { stats, gauges, uptime } => Ok(metrics::Snapshot {
            stats,
            gauges,
            uptime,
            store: state.control.store_figures(),
            listeners: state.control.listeners(),
        }),
        other => Err(unexpected(&other)),
    }
}

async fn stats(State(state): State<AppState>) -> Response {
    match snapshot(&state).await {
        Ok(snap) => axum::Json(metrics::stats_json(&snap)).into_response(),
        Err(r) => r,
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let snap = match snapshot(&state).await {
        Ok(snap) => snap,
        Err(r) => return r,
    };
    match metrics::exposition(&snap) {
        Ok(text) => (
            [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
            text,
        )
            .into_response(),
        Err(e) => fail(StatusCode::INTERNAL_SERVER_ERROR, "internal", e),
    }
}

async fn reload(State(state): State<AppState>) -> Response {
    let Some(reload) = state.reload.clone() else {
        return fail(
            StatusCode::CONFLICT,
            "not_reloadable",
            "this broker was not started from a configuration it can read again",
        );
    };
    match tokio::task::spawn_blocking(move || reload()).await {
        Ok(Ok(r)) => axum::Json(json!({
            "reloaded": true,
            "restart_needed": r.restart_needed,
            "disconnected": r.disconnected,
            "notes": r.notes,
        }))
        .into_response(),
        Ok(Err(e)) => fail(StatusCode::UNPROCESSABLE_ENTITY, "invalid_config", e),
        Err(e) => fail(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

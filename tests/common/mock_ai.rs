//! A stand-in for the remote AI services clusterwatch calls, speaking their real wire formats over
//! HTTP: Anthropic Messages (`/v1/messages`), OpenAI chat completions (`/v1/chat/completions`),
//! OpenAI embeddings (`/v1/embeddings`) and TEI (`/embed`).
//!
//! The "model" echoes the first user line back as the request summary — a model that leaks — so
//! privacy tests see what a careless model would do. Embeddings are feature-hashed word vectors, so
//! similar requests land near each other. Faults are injected on command, with a seeded RNG: 429
//! with `Retry-After`, 500, 503, answers slower than the client's timeout, bodies cut off
//! mid-stream, malformed JSON, and answers that parse but are wrong (an invalid summary, vectors of
//! the wrong dimension).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// The faults the server can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    RateLimited,
    Internal,
    Unavailable,
    Slow,
    CutOff,
    MalformedJson,
    /// A well-formed envelope whose content is wrong: an invalid summary, wrong-dimension vectors.
    WrongContent,
}

pub const ALL_FAULTS: [Fault; 7] = [
    Fault::RateLimited,
    Fault::Internal,
    Fault::Unavailable,
    Fault::Slow,
    Fault::CutOff,
    Fault::MalformedJson,
    Fault::WrongContent,
];

/// What the server is told to do.
pub struct Plan {
    /// Share of requests that get a random fault.
    pub failure_rate: f64,
    /// Every request gets a 503.
    pub outage: bool,
    /// How long a `Slow` answer takes.
    pub slow: Duration,
    /// Dimension of the embeddings served.
    pub dimension: usize,
    rng: rand_chacha::ChaCha8Rng,
}

/// What the server saw and did.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub requests: BTreeMap<&'static str, u64>,
    pub answered: BTreeMap<&'static str, u64>,
    pub faults: BTreeMap<Fault, u64>,
    pub unauthorized: u64,
    /// Texts embedded successfully.
    pub texts_embedded: u64,
}

pub struct MockAi {
    pub addr: SocketAddr,
    pub plan: Arc<Mutex<Plan>>,
    pub stats: Arc<Mutex<Stats>>,
    /// Every prompt the LLM routes received (to check what left clusterwatch).
    pub prompts: Arc<Mutex<Vec<String>>>,
}

#[derive(Clone)]
struct Shared {
    plan: Arc<Mutex<Plan>>,
    stats: Arc<Mutex<Stats>>,
    prompts: Arc<Mutex<Vec<String>>>,
}

/// The API key the server expects, as `x-api-key` or a bearer token.
pub const MOCK_KEY: &str = "mock-key-not-secret";

impl MockAi {
    /// Starts the server on a free port, in the current runtime.
    pub async fn start(seed: u64, dimension: usize) -> MockAi {
        let plan = Arc::new(Mutex::new(Plan {
            failure_rate: 0.0,
            outage: false,
            slow: Duration::from_millis(1500),
            dimension,
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
        }));
        let shared = Shared {
            plan: plan.clone(),
            stats: Default::default(),
            prompts: Default::default(),
        };
        let app = Router::new()
            .route("/v1/messages", post(anthropic))
            .route("/v1/chat/completions", post(openai_chat))
            .route("/v1/embeddings", post(openai_embeddings))
            .route("/embed", post(tei_embed))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        MockAi {
            addr,
            plan,
            stats: shared.stats,
            prompts: shared.prompts,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_failure_rate(&self, rate: f64) {
        self.plan.lock().unwrap().failure_rate = rate;
    }

    pub fn set_outage(&self, outage: bool) {
        self.plan.lock().unwrap().outage = outage;
    }

    pub fn stats(&self) -> Stats {
        self.stats.lock().unwrap().clone()
    }
}

/// Decides this request's fault, counting it.
fn roll(shared: &Shared, route: &'static str) -> (Option<Fault>, Duration) {
    let mut plan = shared.plan.lock().unwrap();
    let mut stats = shared.stats.lock().unwrap();
    *stats.requests.entry(route).or_default() += 1;
    let rate = plan.failure_rate.clamp(0.0, 1.0);
    let fault = if plan.outage {
        Some(Fault::Unavailable)
    } else if plan.rng.gen_bool(rate) {
        Some(ALL_FAULTS[plan.rng.gen_range(0..ALL_FAULTS.len())])
    } else {
        None
    };
    if let Some(f) = fault {
        *stats.faults.entry(f).or_default() += 1;
    }
    (fault, plan.slow)
}

/// The response for a transport- or status-level fault; `None` for faults shaped by the route.
async fn status_fault(fault: Fault, slow: Duration, well_formed: &Value) -> Option<Response> {
    match fault {
        Fault::RateLimited => Some(
            (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "1")],
                Json(json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}})),
            )
                .into_response(),
        ),
        Fault::Internal => Some((StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()),
        Fault::Unavailable => Some((StatusCode::SERVICE_UNAVAILABLE, "overloaded").into_response()),
        Fault::Slow => {
            tokio::time::sleep(slow).await;
            Some(Json(well_formed.clone()).into_response())
        }
        Fault::CutOff => {
            let full = well_formed.to_string();
            let half = Bytes::from(full[..full.len() / 2].to_string());
            let stream = futures::stream::iter(vec![
                Ok::<Bytes, std::io::Error>(half),
                Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "cut off")),
            ]);
            Some(
                Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", "application/json")
                    .header("content-length", full.len().to_string())
                    .body(Body::from_stream(stream))
                    .unwrap(),
            )
        }
        Fault::MalformedJson => {
            let full = well_formed.to_string();
            Some(
                (
                    StatusCode::OK,
                    [("content-type", "application/json")],
                    full[..full.len() / 2].to_string(),
                )
                    .into_response(),
            )
        }
        Fault::WrongContent => None,
    }
}

fn count_answer(shared: &Shared, route: &'static str) {
    *shared
        .stats
        .lock()
        .unwrap()
        .answered
        .entry(route)
        .or_default() += 1;
}

fn unauthorized(shared: &Shared) -> Response {
    shared.stats.lock().unwrap().unauthorized += 1;
    (StatusCode::UNAUTHORIZED, "missing or wrong API key").into_response()
}

/// The first user line of the transcript in a clusterwatch prompt.
fn first_user_line(prompt: &str) -> String {
    let inside = prompt
        .split("<conversation>")
        .nth(1)
        .and_then(|s| s.split("</conversation>").next())
        .unwrap_or(prompt);
    inside
        .lines()
        .find_map(|l| l.strip_prefix("User: "))
        .unwrap_or("help with something")
        .to_string()
}

/// A JSON string literal without its quotes.
fn json_inner(text: &str) -> String {
    let quoted = serde_json::to_string(text).unwrap();
    quoted[1..quoted.len() - 1].to_string()
}

/// Text that marks a label the mock auditor rates as identifying (2); anything with a digit too.
pub const AUDITOR_REFUSES: &str = "Zorblax";

/// The whole answer the mock model gives to a clusterwatch prompt, by the prompt's kind:
/// - a contrastive naming prompt: the first statement's first words as the name (leaky);
/// - a privacy audit: 2 for text with a digit or [`AUDITOR_REFUSES`], 4 otherwise;
/// - a summary: the user's first line, echoed (leaky).
///
/// `valid: false` gives an answer that parses but fails validation.
fn full_answer(prompt: &str, valid: bool) -> String {
    if let Some(statements) = prompt.split("<cluster_statements>").nth(1) {
        let first = statements
            .lines()
            .find_map(|l| l.strip_prefix("- "))
            .unwrap_or("do something");
        let words: Vec<&str> = first.split_whitespace().take(6).collect();
        let name = if valid {
            words.join(" ")
        } else {
            "x ".repeat(14)
        };
        return format!(
            "{{\"name\": \"{}\", \"description\": \"Users asked the assistant to {}. The requests were alike.\"}}",
            json_inner(name.trim()),
            json_inner(&words.join(" ").to_lowercase())
        );
    }
    if let Some(text) = prompt.split("<text>").nth(1) {
        let text = text.split("</text>").next().unwrap_or_default();
        let rating = if !valid {
            9
        } else if text.chars().any(|c| c.is_ascii_digit()) || text.contains(AUDITOR_REFUSES) {
            2
        } else {
            4
        };
        return format!("{{\"rating\": {rating}, \"reason\": \"mock\"}}");
    }
    // One sentence: sentence ends become commas, while dots inside tokens (e-mail addresses, IP
    // addresses, decimals) come back as the user wrote them, as a leaky model would repeat them.
    let echo: String = first_user_line(prompt)
        .replace(". ", ", ")
        .replace("! ", ", ")
        .replace("? ", ", ")
        .trim_end_matches(['.', '!', '?'])
        .split_whitespace()
        .scan(0usize, |len, word| {
            *len += word.len() + 1;
            (*len <= 400).then_some(word)
        })
        .collect::<Vec<_>>()
        .join(" ");
    let concern = if valid { 1 } else { 9 };
    format!(
        "{{\"request\": \"The user's overall request for the assistant is to {}.\", \"task\": \"other\", \"language\": \"en\", \"concern\": {concern}, \"refused\": false}}",
        json_inner(&echo.to_lowercase_first())
    )
}

/// The model's continuation of `prefill` (Anthropic prefill semantics).
fn continuation(full: &str, prefill: &str) -> String {
    full.strip_prefix(prefill).unwrap_or(full).to_string()
}

trait LowerFirst {
    fn to_lowercase_first(&self) -> String;
}

impl LowerFirst for String {
    fn to_lowercase_first(&self) -> String {
        let mut c = self.chars();
        match c.next() {
            Some(f) => f.to_lowercase().collect::<String>() + c.as_str(),
            None => String::new(),
        }
    }
}

async fn anthropic(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    const ROUTE: &str = "/v1/messages";
    if headers.get("x-api-key").and_then(|v| v.to_str().ok()) != Some(MOCK_KEY)
        || headers.get("anthropic-version").is_none()
    {
        return unauthorized(&shared);
    }
    let prompt = body["messages"][0]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let prefill = body["messages"][1]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    shared.prompts.lock().unwrap().push(prompt.clone());
    let (fault, slow) = roll(&shared, ROUTE);
    let continuation = continuation(
        &full_answer(&prompt, fault != Some(Fault::WrongContent)),
        &prefill,
    );
    let answer = json!({
        "id": "msg_mock", "type": "message", "role": "assistant", "model": body["model"],
        "content": [{"type": "text", "text": continuation}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": prompt.len() / 4, "output_tokens": continuation.len() / 4},
    });
    if let Some(f) = fault {
        if let Some(r) = status_fault(f, slow, &answer).await {
            return r;
        }
    }
    count_answer(&shared, ROUTE);
    Json(answer).into_response()
}

async fn openai_chat(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    const ROUTE: &str = "/v1/chat/completions";
    if headers.get("authorization").and_then(|v| v.to_str().ok())
        != Some(&format!("Bearer {MOCK_KEY}"))
    {
        return unauthorized(&shared);
    }
    let prompt = body["messages"][1]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    shared.prompts.lock().unwrap().push(prompt.clone());
    let (fault, slow) = roll(&shared, ROUTE);
    let content = full_answer(&prompt, fault != Some(Fault::WrongContent));
    let answer = json!({
        "id": "chatcmpl-mock", "object": "chat.completion", "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt.len() / 4, "completion_tokens": content.len() / 4, "total_tokens": 0},
    });
    if let Some(f) = fault {
        if let Some(r) = status_fault(f, slow, &answer).await {
            return r;
        }
    }
    count_answer(&shared, ROUTE);
    Json(answer).into_response()
}

/// Feature-hashed bag of words (and word pairs), so texts sharing words are close.
pub fn hashed_embedding(text: &str, dimension: usize) -> Vec<f32> {
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() > 1)
        .map(str::to_lowercase)
        .collect();
    let mut v = vec![0f32; dimension];
    let mut add = |token: &str, weight: f32| {
        let h = xxhash_rust::xxh3::xxh3_64(token.as_bytes());
        let sign = if h >> 63 == 0 { 1.0 } else { -1.0 };
        v[(h % dimension as u64) as usize] += sign * weight;
    };
    for w in &words {
        add(w, 1.0);
    }
    for pair in words.windows(2) {
        add(&format!("{} {}", pair[0], pair[1]), 0.5);
    }
    if v.iter().all(|x| *x == 0.0) {
        v[0] = 1.0;
    }
    v
}

fn embed_all(shared: &Shared, texts: &[String], wrong: bool) -> Vec<Vec<f32>> {
    let dimension = shared.plan.lock().unwrap().dimension + usize::from(wrong);
    texts
        .iter()
        .map(|t| hashed_embedding(t, dimension))
        .collect()
}

fn inputs(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .filter_map(|i| i.as_str().map(String::from))
            .collect(),
        _ => Vec::new(),
    }
}

/// Answers an embedding request: `answer` shapes the vectors into the protocol's body.
async fn embed_route(
    shared: Shared,
    route: &'static str,
    texts: Vec<String>,
    answer: impl FnOnce(Vec<Vec<f32>>) -> Value,
) -> Response {
    let (fault, slow) = roll(&shared, route);
    let answer = answer(embed_all(
        &shared,
        &texts,
        fault == Some(Fault::WrongContent),
    ));
    if let Some(f) = fault {
        if let Some(r) = status_fault(f, slow, &answer).await {
            return r;
        }
    }
    if fault.is_none() {
        shared.stats.lock().unwrap().texts_embedded += texts.len() as u64;
    }
    count_answer(&shared, route);
    Json(answer).into_response()
}

async fn openai_embeddings(State(shared): State<Shared>, Json(body): Json<Value>) -> Response {
    let texts = inputs(&body["input"]);
    embed_route(shared, "/v1/embeddings", texts, |vectors| {
        json!({
            "object": "list",
            "data": vectors.iter().enumerate().map(|(i, v)| json!({"object": "embedding", "index": i, "embedding": v})).collect::<Vec<_>>(),
            "model": body["model"],
            "usage": {"prompt_tokens": 0, "total_tokens": 0},
        })
    })
    .await
}

async fn tei_embed(State(shared): State<Shared>, Json(body): Json<Value>) -> Response {
    let texts = inputs(&body["inputs"]);
    embed_route(shared, "/embed", texts, |vectors| json!(vectors)).await
}

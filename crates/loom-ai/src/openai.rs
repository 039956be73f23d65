//! The client for OpenAI-compatible servers: sends `POST {base}/chat/completions` with
//! `stream: true`, retries what failed before the first token, and turns the body into
//! [`TokenEvent`]s through the [`SseParser`] and the [`ChunkDecoder`].
//!
//! There is no task and no channel between the socket and the caller: the caller's poll
//! reads the body, so dropping the stream drops the response, which closes the connection
//! at once (hyper cannot reuse a connection whose body was not read to the end).

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use serde::Serialize;

use crate::config::{AiConfig, ApiKey, RetryPolicy};
use crate::decode::{error_message, quote, ChunkDecoder};
use crate::error::AiError;
use crate::request::{CompletionRequest, Message};
use crate::sse::{SseError, SseParser};
use crate::stream::TokenStream;
use crate::tools::{Tool, ToolChoice};

/// How much of an answer that is not a stream (an error status's body) is read: enough for
/// any explanation, and a proxy that answers with gigabytes costs no more.
const ERROR_BODY_BYTES: usize = 64 * 1024;

/// A client for one OpenAI-compatible server; cheap to clone.
#[derive(Clone)]
pub(crate) struct OpenAiClient {
    http: reqwest::Client,
    url: String,
    api_key: Option<ApiKey>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    retry: RetryPolicy,
}

#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    messages: Vec<&'a Message>,
    stream: bool,
    stream_options: StreamOptions,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    tools: &'a [Tool],
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<&'a ToolChoice>,
    /// The request's [`PASSED_THROUGH`](crate::request::PASSED_THROUGH) fields, as they are.
    #[serde(flatten)]
    options: &'a serde_json::Map<String, serde_json::Value>,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

/// How long, after the finish reason, the usage and `[DONE]` are waited for (at most the idle
/// timeout).
const FINISH_GRACE: Duration = Duration::from_secs(2);

impl OpenAiClient {
    pub(crate) fn new(config: &AiConfig, base_url: &str) -> Result<Self, AiError> {
        let base = base_url.trim_end_matches('/');
        let url = format!("{base}/chat/completions");
        let parsed = reqwest::Url::parse(&url)
            .map_err(|e| AiError::Config(format!("base URL {base_url:?}: {e}")))?;
        // `localhost:11434/v1` parses, with `localhost` as its scheme.
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(AiError::Config(format!(
                "base URL {base_url:?}: it must start with http:// or https://"
            )));
        }
        // No `read_timeout`: reqwest's counts from the last data even while the caller is
        // not reading (a slow consumer is backpressure, not a silent server); the idle
        // timeout is applied around each read instead ([`Self::stream`]).
        // A key that cannot be a header (a newline pasted with it) is said now, not by every
        // run as it starts.
        if let Some(key) = &config.api_key {
            HeaderValue::from_str(&format!("Bearer {}", key.expose())).map_err(|_| {
                AiError::Config(
                    "the API key (OPENAI_API_KEY) is not a valid header value: it holds a \
                     control character (a newline pasted with it?)"
                        .into(),
                )
            })?;
        }
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .build()
            .map_err(|e| AiError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            http,
            url,
            api_key: config.api_key.clone(),
            connect_timeout: config.connect_timeout,
            idle_timeout: config.idle_timeout,
            retry: config.retry.clone(),
        })
    }

    /// Streams the answer to `request`; `model` is the default when it names none.
    pub(crate) fn stream(&self, request: CompletionRequest, model: &str) -> TokenStream {
        let client = self.clone();
        let body = body(&request, model);
        let secret = self.api_key.clone();
        let stream = async_stream::try_stream! {
            let body = body?;
            // A stream that breaks before its first event (a reset, a cut after the 200) is
            // sent again like a failed request: nothing was yielded to repeat.
            let mut retry = 0;
            loop {
                let mut response = client.open(body.clone()).await?;
                let mut parser = SseParser::new();
                let mut decoder = ChunkDecoder::default();
                let mut events = VecDeque::new();
                let mut yielded = false;
                let mut silent = false;
                let mut finished_at: Option<tokio::time::Instant> = None;
                let broke: Option<AiError> = 'read: loop {
                    // Only the time spent waiting for the server counts as its silence. After
                    // the finish reason only the usage and `[DONE]` can come: they are waited
                    // for [`FINISH_GRACE`] in all, keep-alives or not (a server that never
                    // sends them left a whole answer hanging for the idle timeout, or for
                    // good while it sent keep-alives).
                    let wait = match finished_at {
                        Some(at) => FINISH_GRACE.min(client.idle_timeout).saturating_sub(at.elapsed()),
                        None => client.idle_timeout,
                    };
                    let bytes = match tokio::time::timeout(wait, response.chunk()).await {
                        Ok(Ok(Some(bytes))) => bytes,
                        Ok(Ok(None)) => break 'read None,
                        // Cut after its finish reason (without `[DONE]`, maybe without the
                        // usage): the text is whole.
                        Ok(Err(_)) | Err(_) if decoder.is_finished() => break 'read None,
                        Ok(Err(e)) => break 'read Some(client.body_error(&e)),
                        Err(_) => {
                            silent = true;
                            // Once the response has started, a silent server is a broken
                            // stream (DESIGN §4: `upstream`), not the run's deadline.
                            break 'read Some(AiError::Interrupted {
                                message: format!("no data from the AI server for {:?}", client.idle_timeout),
                            });
                        }
                    };
                    if let Err(e) = parser.feed(&bytes) {
                        break 'read Some(sse_error(e));
                    }
                    while let Some(event) = parser.next_event() {
                        if let Err(e) = decoder.decode(&event, &mut events) {
                            break 'read Some(e);
                        }
                        while let Some(token) = events.pop_front() {
                            yielded = true;
                            yield token;
                        }
                        // Nothing but `[DONE]` can follow: a server that never sends it
                        // is not waited for.
                        if decoder.is_answered() {
                            break 'read None;
                        }
                        if finished_at.is_none() && decoder.is_finished() {
                            finished_at = Some(tokio::time::Instant::now());
                        }
                    }
                };
                let ended = match broke {
                    Some(err) => Err(err),
                    None => {
                        let finished = decoder.is_finished();
                        let last = if decoder.is_answered() { None } else { parser.finish() };
                        match last.map_or(Ok(()), |event| decoder.decode(&event, &mut events)) {
                            // After the finish reason a cut event is only the usage or
                            // `[DONE]`, lost with the connection.
                            Err(_) if finished => Ok(()),
                            decoded => decoded,
                        }
                        .and_then(|()| decoder.end(&mut events))
                    }
                };
                match ended {
                    // A server silent for the whole idle timeout is not asked again: it
                    // would only multiply the wait.
                    Err(err) if !yielded && !silent && client.retry.retries(&err, retry) => {
                        let delay = client.retry.delay(retry, err.retry_after());
                        tracing::warn!(retry = retry + 1, ?delay, "AI stream broke before its first token, retrying: {err}");
                        tokio::time::sleep(delay).await;
                        retry += 1;
                    }
                    ended => {
                        ended?;
                        while let Some(token) = events.pop_front() {
                            yield token;
                        }
                        break;
                    }
                }
            }
        };
        // Every error leaves through here, whatever produced it (the server's status, an
        // error event inside the stream, an undecodable event): none may carry the key.
        TokenStream::new(stream.map_err(move |err: AiError| match &secret {
            Some(key) => err.without_secret(key.expose()),
            None => err,
        }))
    }

    /// Sends the request until it gets a success status, retrying 429, 5xx and connection
    /// failures with capped exponential backoff — not a server that stayed silent for the
    /// idle timeout, which would only multiply the wait. Nothing has been yielded yet when
    /// this runs, so a retry can never repeat a token.
    async fn open(&self, body: Bytes) -> Result<reqwest::Response, AiError> {
        let mut retry = 0;
        loop {
            match self.send(body.clone()).await {
                Ok(response) => return Ok(response),
                Err(err)
                    if !matches!(err, AiError::Timeout { .. })
                        && self.retry.retries(&err, retry) =>
                {
                    let delay = self.retry.delay(retry, err.retry_after());
                    tracing::warn!(
                        retry = retry + 1,
                        ?delay,
                        "AI request failed, retrying: {err}"
                    );
                    tokio::time::sleep(delay).await;
                    retry += 1;
                }
                Err(err) => return Err(err),
            }
        }
    }

    async fn send(&self, body: Bytes) -> Result<reqwest::Response, AiError> {
        let mut request = self
            .http
            .post(&self.url)
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "text/event-stream")
            .body(body);
        // The upstream call joins the run's trace (a no-op without an OpenTelemetry layer).
        if let Some(traceparent) = loom_core::trace::current_traceparent() {
            request = request.header(loom_core::trace::TRACEPARENT, traceparent);
        }
        if let Some(key) = &self.api_key {
            let mut value = HeaderValue::from_str(&format!("Bearer {}", key.expose()))
                .map_err(|_| AiError::Config("the API key is not a valid header value".into()))?;
            value.set_sensitive(true);
            request = request.header(AUTHORIZATION, value);
        }
        // The connect timeout is reqwest's; this bounds the wait for the response headers.
        let response =
            tokio::time::timeout(self.connect_timeout + self.idle_timeout, request.send())
                .await
                .map_err(|_| AiError::Timeout {
                    phase: "waiting for the response",
                    after: self.connect_timeout + self.idle_timeout,
                })?
                .map_err(|e| self.send_error(&e))?;
        let status = response.status();
        if status.is_success() {
            // A server that ignored `stream: true` (or answers an error with 200), or a web
            // page at a wrong base URL: not a stream, and its words say why.
            let kind = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.split(';').next().unwrap_or(v).trim().to_ascii_lowercase());
            let Some(kind @ ("application/json" | "text/html")) = kind.as_deref() else {
                return Ok(response);
            };
            let text = self.error_body(response).await;
            return Err(AiError::Decode {
                message: format!(
                    "the AI server answered {kind}, not an event stream: {}",
                    error_message(&self.scrub(text))
                ),
            });
        }
        let retry_after = retry_after(response.headers());
        let text = self.error_body(response).await;
        let message = if text.trim().is_empty() {
            status.canonical_reason().unwrap_or("no message").to_owned()
        } else {
            // Scrubbed before it is quoted, so a cut cannot fall inside the key.
            error_message(&self.scrub(text))
        };
        // A 404 is a model the server does not have, or a base URL that is not the API's
        // (`/v1` left off): the URL says which.
        let message = if status == reqwest::StatusCode::NOT_FOUND {
            format!("{message} (at {})", self.url)
        } else {
            message
        };
        Err(AiError::Status {
            status: status.as_u16(),
            message: self.scrub(message),
            retry_after,
        })
    }

    /// The start of an answer that is not a stream (an error's explanation): at most
    /// [`ERROR_BODY_BYTES`], read within the idle timeout, empty when none arrived.
    async fn error_body(&self, mut response: reqwest::Response) -> String {
        let mut body = Vec::new();
        let read = async {
            while body.len() < ERROR_BODY_BYTES {
                match response.chunk().await {
                    Ok(Some(bytes)) => body.extend_from_slice(&bytes),
                    Ok(None) | Err(_) => break,
                }
            }
        };
        let _ = tokio::time::timeout(self.idle_timeout, read).await;
        body.truncate(ERROR_BODY_BYTES);
        String::from_utf8_lossy(&body).into_owned()
    }

    fn send_error(&self, err: &reqwest::Error) -> AiError {
        if err.is_timeout() {
            AiError::Timeout {
                phase: if err.is_connect() { "connect" } else { "idle" },
                after: if err.is_connect() {
                    self.connect_timeout
                } else {
                    self.idle_timeout
                },
            }
        } else {
            AiError::Connect {
                message: self.scrub(chain(err)),
            }
        }
    }

    fn body_error(&self, err: &reqwest::Error) -> AiError {
        AiError::Interrupted {
            message: self.scrub(chain(err)),
        }
    }

    /// Removes the API key from text that came from outside (a server may echo it).
    fn scrub(&self, text: String) -> String {
        match &self.api_key {
            Some(key) => crate::error::scrub(text, key.expose()),
            None => text,
        }
    }
}

/// The JSON body of a streaming `chat/completions` request.
fn body(request: &CompletionRequest, default_model: &str) -> Result<Bytes, AiError> {
    if request.messages.is_empty() {
        return Err(AiError::BadRequest("no messages to complete".into()));
    }
    let model = request.model.as_deref().unwrap_or(default_model);
    if model.trim().is_empty() {
        return Err(AiError::BadRequest("no model named".into()));
    }
    let system = request.system.as_ref().map(|s| Message::system(s.clone()));
    let body = Body {
        model,
        messages: system.iter().chain(&request.messages).collect(),
        stream: true,
        stream_options: StreamOptions {
            include_usage: true,
        },
        temperature: request.temperature,
        max_tokens: request.max_tokens,
        tools: &request.tools,
        tool_choice: request.tool_choice.as_ref(),
        options: &request.options,
    };
    serde_json::to_vec(&body)
        .map(Bytes::from)
        .map_err(|e| AiError::BadRequest(e.to_string()))
}

/// `Retry-After` in seconds (or OpenAI's `retry-after-ms`); an HTTP date is not honoured
/// and falls back to the backoff.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(ms) = header("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok()) {
        return Duration::try_from_secs_f64(ms / 1000.0).ok();
    }
    header("retry-after")
        .and_then(|v| v.trim().parse::<f64>().ok())
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
}

/// An error and its causes, joined: reqwest's own message rarely says what happened.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    quote(&text).to_owned()
}

fn sse_error(err: SseError) -> AiError {
    AiError::Decode {
        message: err.to_string(),
    }
}

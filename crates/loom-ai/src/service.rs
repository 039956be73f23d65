//! [`AiService`]: the one handle actors use to ask an LLM, whichever provider answers; it
//! hands each request to the OpenAI client or the offline provider and passes back their
//! [`TokenStream`].
//!
//! The service is configured once ([`AiConfig`]), shared through the runtime's
//! [`Extensions`](loom_core::Extensions) and cloned freely (it is an `Arc`).

use std::fmt;
use std::sync::Arc;

use crate::config::{AiConfig, Endpoint};
use crate::error::AiError;
use crate::event::Completion;
use crate::offline;
use crate::openai::OpenAiClient;
use crate::request::CompletionRequest;
use crate::stream::TokenStream;

enum Provider {
    OpenAi(OpenAiClient),
    Offline,
}

struct Inner {
    config: AiConfig,
    provider: Provider,
}

/// Completions from an OpenAI-compatible server or from the offline provider.
///
/// ```
/// use futures::StreamExt;
/// use loom_ai::{AiConfig, AiService, CompletionRequest, TokenEvent};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), loom_ai::AiError> {
/// let config = AiConfig::offline().with_offline_token_delay(std::time::Duration::ZERO);
/// let ai = AiService::new(config)?;
/// let mut tokens = ai.stream_completion(CompletionRequest::prompt("hi"));
/// let mut text = String::new();
/// while let Some(event) = tokens.next().await {
///     if let TokenEvent::Text(delta) = event? {
///         text.push_str(&delta);
///     }
/// }
/// assert!(!text.is_empty());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct AiService {
    inner: Arc<Inner>,
}

impl AiService {
    /// A service for `config`; fails only on an unusable base URL or HTTP client.
    pub fn new(config: AiConfig) -> Result<Self, AiError> {
        let provider = match &config.endpoint {
            Endpoint::OpenAi { base_url } => {
                Provider::OpenAi(OpenAiClient::new(&config, base_url)?)
            }
            Endpoint::Offline => Provider::Offline,
        };
        Ok(Self {
            inner: Arc::new(Inner { config, provider }),
        })
    }

    /// The service the environment describes ([`AiConfig::from_env`]): the offline provider
    /// when neither `OPENAI_BASE_URL` nor `OPENAI_API_KEY` is set.
    pub fn from_env() -> Result<Self, AiError> {
        Self::new(AiConfig::from_env()?)
    }

    /// The offline provider at its default pace.
    pub fn offline() -> Self {
        Self {
            inner: Arc::new(Inner {
                config: AiConfig::offline(),
                provider: Provider::Offline,
            }),
        }
    }

    /// Whether the offline provider answers (the CLI labels its output so).
    pub fn is_offline(&self) -> bool {
        matches!(self.inner.provider, Provider::Offline)
    }

    /// The configuration (its `Debug` hides the API key).
    pub fn config(&self) -> &AiConfig {
        &self.inner.config
    }

    /// The model used when a request names none.
    pub fn default_model(&self) -> &str {
        &self.inner.config.model
    }

    /// Streams the answer to `request`, token by token.
    ///
    /// Failures before the first token (429, 5xx, connection errors) are retried by the
    /// service's [`RetryPolicy`](crate::RetryPolicy); after it, a failure ends the stream
    /// with an error and the tokens already yielded stand.
    pub fn stream_completion(&self, request: CompletionRequest) -> TokenStream {
        let config = &self.inner.config;
        match &self.inner.provider {
            Provider::OpenAi(client) => client.stream(request, &config.model),
            Provider::Offline => offline::stream(request, config.offline_token_delay),
        }
    }

    /// The whole answer to `request` (streamed underneath, so timeouts apply per token).
    pub async fn complete(&self, request: CompletionRequest) -> Result<Completion, AiError> {
        self.stream_completion(request).collect_completion().await
    }
}

impl fmt::Debug for AiService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AiService")
            .field("config", &self.inner.config)
            .finish()
    }
}

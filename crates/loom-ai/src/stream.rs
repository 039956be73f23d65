//! [`TokenStream`]: what a provider (the OpenAI client, the offline provider) streams back
//! through [`AiService`](crate::AiService) to its caller.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};

use crate::error::AiError;
use crate::event::{Completion, TokenEvent};

/// A stream of [`TokenEvent`]s: `Send + 'static`, ended by the first error.
///
/// Dropping it aborts the request: the HTTP connection is closed at once.
pub struct TokenStream {
    inner: BoxStream<'static, Result<TokenEvent, AiError>>,
}

impl TokenStream {
    /// Wraps a stream of token events.
    pub fn new(inner: impl Stream<Item = Result<TokenEvent, AiError>> + Send + 'static) -> Self {
        Self {
            inner: Box::pin(inner),
        }
    }

    /// Reads the whole stream into one [`Completion`].
    pub async fn collect_completion(mut self) -> Result<Completion, AiError> {
        let mut completion = Completion::default();
        while let Some(event) = self.next().await {
            completion.push(event?);
        }
        Ok(completion)
    }
}

impl Stream for TokenStream {
    type Item = Result<TokenEvent, AiError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl fmt::Debug for TokenStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenStream").finish_non_exhaustive()
    }
}

//! A unary gRPC request's body that ends with its one message: the handler starts as soon as
//! the message is in, not when the client's end-of-stream arrives.
//!
//! Why: tonic's unary server reads the message and then waits for the request's trailers,
//! that is for the client's END_STREAM. A tonic (hyper) client sends that as an empty DATA
//! frame in a write of its own after the message, so every unary call waited for a second
//! packet and a second read of the connection (`strace` of a lone put: the journal's write
//! followed the second `recvfrom`, never the first). grpc-go's server calls the handler once
//! the message is read.
//!
//! The rest of the body (normally just that empty frame) is still read to its end, by a task
//! of its own if the handler is done first: a request body dropped unread would make h2 reset
//! the stream (RST_STREAM) after the response, and a client's late frames on reset streams are
//! what h2 bounds and penalises.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};

/// A gRPC message's prefix: a compression flag and a big-endian u32 length.
pub(crate) const MESSAGE_PREFIX_BYTES: usize = 5;

pub struct UnaryBody<B>
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
{
    /// None once handed to the draining task (only in `drop`).
    inner: Option<B>,
    /// The prefix's bytes seen so far (its first `MESSAGE_PREFIX_BYTES`).
    prefix: [u8; MESSAGE_PREFIX_BYTES],
    /// Body bytes seen so far.
    seen_bytes: usize,
    /// The message has been passed on whole: the body reports its end.
    message_done: bool,
    /// The inner body ended (END_STREAM, trailers or an error).
    inner_done: bool,
    /// Whether the body ends with its message; if false it passes the inner body through.
    end_with_message: bool,
}

impl<B> UnaryBody<B>
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
{
    /// `end_with_message`: end with the first message (else the inner body unchanged).
    pub fn new(inner: B, end_with_message: bool) -> UnaryBody<B> {
        let inner_done = inner.is_end_stream();
        UnaryBody {
            inner: Some(inner),
            prefix: [0; MESSAGE_PREFIX_BYTES],
            seen_bytes: 0,
            message_done: false,
            inner_done,
            end_with_message,
        }
    }

    /// Counts `data` into the message; true once the whole first message has been seen.
    fn note_data(&mut self, data: &Bytes) -> bool {
        let mut chunk = data.chunk();
        while self.seen_bytes < MESSAGE_PREFIX_BYTES && !chunk.is_empty() {
            self.prefix[self.seen_bytes] = chunk[0];
            self.seen_bytes += 1;
            chunk = &chunk[1..];
        }
        self.seen_bytes += chunk.len();
        if self.seen_bytes < MESSAGE_PREFIX_BYTES {
            return false;
        }
        let [_, a, b, c, d] = self.prefix;
        let message_bytes = u32::from_be_bytes([a, b, c, d]);
        let total_bytes = MESSAGE_PREFIX_BYTES
            .saturating_add(usize::try_from(message_bytes).unwrap_or(usize::MAX));
        self.seen_bytes >= total_bytes
    }
}

impl<B> Body for UnaryBody<B>
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        if this.message_done || this.inner_done {
            return Poll::Ready(None);
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && this.end_with_message
                {
                    this.message_done = this.note_data(data);
                }
                if frame.is_trailers() {
                    this.inner_done = true;
                }
            }
            Poll::Ready(Some(Err(_))) | Poll::Ready(None) => this.inner_done = true,
            Poll::Pending => {}
        }
        if this.message_done
            && let Some(inner) = this.inner.as_ref()
            && inner.is_end_stream()
        {
            this.inner_done = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.message_done || self.inner_done
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(inner) if !self.is_end_stream() => inner.size_hint(),
            _ => SizeHint::with_exact(0),
        }
    }
}

impl<B> Drop for UnaryBody<B>
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
{
    fn drop(&mut self) {
        if self.inner_done || !self.message_done {
            // Ended, or dropped before its message was in (the call failed or was cancelled):
            // nothing is owed to the stream.
            return;
        }
        let Some(mut inner) = self.inner.take() else {
            return;
        };
        if inner.is_end_stream() {
            return;
        }
        // The end has usually arrived by now (a write's handler outlasts the client's next
        // frame): read it here and spawn nothing.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        loop {
            match Pin::new(&mut inner).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(_))) => continue,
                Poll::Ready(Some(Err(_)) | None) => return,
                Poll::Pending => break,
            }
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            // Normally one empty frame with END_STREAM; a client that sends more after its
            // one message gets it read and dropped, up to its end or an error.
            while let Some(Ok(_)) =
                std::future::poll_fn(|cx| Pin::new(&mut inner).poll_frame(cx)).await
            {}
        });
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// A body of scripted frames; `Pending` where the script says so (the client's
    /// END_STREAM not here yet). Records whether it was read to its end.
    struct Scripted {
        steps: std::collections::VecDeque<Option<Bytes>>,
        ended: Arc<AtomicBool>,
    }

    impl Body for Scripted {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            match self.steps.pop_front() {
                Some(Some(data)) => Poll::Ready(Some(Ok(Frame::data(data)))),
                Some(None) => {
                    // "Not yet": the next poll goes on with the script.
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                None => {
                    self.ended.store(true, Ordering::SeqCst);
                    Poll::Ready(None)
                }
            }
        }
    }

    fn message(payload: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0u8];
        bytes.extend_from_slice(&u32::try_from(payload.len()).expect("small").to_be_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }

    async fn next(body: &mut UnaryBody<Scripted>) -> Option<Bytes> {
        std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx))
            .await
            .map(|frame| frame.expect("no error").into_data().expect("data"))
    }

    #[tokio::test]
    async fn the_body_ends_with_its_message_and_the_rest_is_drained() {
        let bytes = message(b"a put request");
        // The message split over three frames (the prefix itself split), then the client's
        // END_STREAM late.
        let (a, rest) = bytes.split_at(3);
        let (b, c) = rest.split_at(6);
        let ended = Arc::new(AtomicBool::new(false));
        let scripted = Scripted {
            steps: [Some(a), Some(b), Some(c), None, None]
                .into_iter()
                .map(|step| step.map(Bytes::copy_from_slice))
                .chain([Some(Bytes::new())])
                .collect(),
            ended: ended.clone(),
        };
        let mut body = UnaryBody::new(scripted, true);
        let mut read = Vec::new();
        while let Some(data) = next(&mut body).await {
            read.extend_from_slice(&data);
        }
        assert_eq!(
            read, bytes,
            "the whole message, and nothing waited for the end"
        );
        assert!(body.is_end_stream());
        assert!(
            !ended.load(Ordering::SeqCst),
            "the inner end was not awaited"
        );
        drop(body);
        for _ in 0..100 {
            if ended.load(Ordering::SeqCst) {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the rest of the body was never read to its end");
    }

    #[tokio::test]
    async fn an_end_already_there_is_read_when_the_body_is_dropped() {
        let bytes = message(b"x");
        let ended = Arc::new(AtomicBool::new(false));
        let scripted = Scripted {
            steps: [Some(Bytes::copy_from_slice(&bytes))].into_iter().collect(),
            ended: ended.clone(),
        };
        let mut body = UnaryBody::new(scripted, true);
        assert_eq!(next(&mut body).await.expect("data").len(), bytes.len());
        assert_eq!(next(&mut body).await, None);
        drop(body);
        assert!(ended.load(Ordering::SeqCst), "read in drop, no task needed");
    }

    #[tokio::test]
    async fn without_end_with_message_the_body_waits_for_its_inner_end() {
        let bytes = message(b"x");
        let ended = Arc::new(AtomicBool::new(false));
        let scripted = Scripted {
            steps: [
                Some(Bytes::copy_from_slice(&bytes)),
                None,
                Some(Bytes::new()),
            ]
            .into_iter()
            .collect(),
            ended: ended.clone(),
        };
        let mut body = UnaryBody::new(scripted, false);
        assert_eq!(next(&mut body).await.expect("data").len(), bytes.len());
        assert!(!body.is_end_stream());
        assert_eq!(next(&mut body).await.expect("the empty frame").len(), 0);
        assert_eq!(next(&mut body).await, None);
        assert!(ended.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_body_cut_short_ends_when_its_inner_body_does() {
        let bytes = message(b"0123456789");
        let ended = Arc::new(AtomicBool::new(false));
        let scripted = Scripted {
            steps: [Some(Bytes::copy_from_slice(&bytes[..7]))]
                .into_iter()
                .collect(),
            ended: ended.clone(),
        };
        let mut body = UnaryBody::new(scripted, true);
        assert_eq!(next(&mut body).await.expect("data").len(), 7);
        assert_eq!(next(&mut body).await, None, "the inner end passes through");
        assert!(ended.load(Ordering::SeqCst));
    }
}

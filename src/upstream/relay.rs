//! Relaying an upstream body to the client while recording it for the cache.

use std::future::Future;

use actix_web::error::PayloadError;
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt, stream};

/// Yields the upstream's chunks unchanged, as they arrive. If the upstream ends normally
/// and the whole body fit in `max` bytes, `on_complete` runs with it before the stream
/// reports its end, so the entry is stored before the client can see the response finish.
/// A transport error, an oversized body or a client that goes away (the stream is dropped)
/// means `on_complete` never runs.
pub fn recording_stream<S, F, Fut>(
    upstream: S,
    max: u64,
    on_complete: F,
) -> impl Stream<Item = Result<Bytes, PayloadError>>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + 'static,
    F: FnOnce(Bytes) -> Fut + 'static,
    Fut: Future<Output = ()>,
{
    struct State<S, F> {
        upstream: std::pin::Pin<Box<S>>,
        recorded: Option<BytesMut>,
        max: usize,
        on_complete: Option<F>,
    }
    let state = State {
        upstream: Box::pin(upstream),
        recorded: Some(BytesMut::new()),
        max: usize::try_from(max).unwrap_or(usize::MAX),
        on_complete: Some(on_complete),
    };
    stream::unfold(state, |mut st| async move {
        match st.upstream.next().await {
            Some(Ok(chunk)) => {
                if let Some(buf) = &mut st.recorded {
                    if buf.len() + chunk.len() > st.max {
                        st.recorded = None;
                    } else {
                        buf.extend_from_slice(&chunk);
                    }
                }
                Some((Ok(chunk), st))
            }
            Some(Err(e)) => {
                st.recorded = None;
                st.on_complete = None;
                Some((Err(e), st))
            }
            None => {
                if let (Some(buf), Some(done)) = (st.recorded.take(), st.on_complete.take()) {
                    done(buf.freeze()).await;
                }
                None
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    async fn run(chunks: Vec<Result<Bytes, PayloadError>>, max: u64) -> Option<Bytes> {
        let stored = Rc::new(RefCell::new(None));
        let sink = stored.clone();
        let s = recording_stream(stream::iter(chunks), max, move |b| {
            *sink.borrow_mut() = Some(b);
            async {}
        });
        let _: Vec<_> = s.collect().await;
        stored.borrow_mut().take()
    }

    #[actix_web::test]
    async fn a_complete_body_is_recorded() {
        let got = run(vec![Ok("ab".into()), Ok("cd".into())], 10).await;
        assert_eq!(got.as_deref(), Some(&b"abcd"[..]));
    }

    #[actix_web::test]
    async fn an_oversized_body_is_not_recorded() {
        assert_eq!(run(vec![Ok("abc".into()), Ok("def".into())], 5).await, None);
    }

    #[actix_web::test]
    async fn a_failed_body_is_not_recorded() {
        let chunks = vec![Ok("ab".into()), Err(PayloadError::Incomplete(None))];
        assert_eq!(run(chunks, 10).await, None);
    }
}

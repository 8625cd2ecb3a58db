//! `GET /api/v1/events`: the hub's changes as server-sent events, for the pages' live updates
//! (and any script of the owner's). Each event's name is its kind (`approval`, `payment`,
//! `channel`, `device`, `plugin`, `resync`) and its data the [`LiveEvent`] as JSON.
//!
//! Streams are few and bounded: at most [`MAX_STREAMS`] at once (a 503 beyond), each reading
//! the hub's bounded broadcast; a reader that falls behind gets `resync` instead of what it
//! missed. Every stream ends when the hub stops.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use tokio::sync::Semaphore;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt};

use crate::backend::Backend;
use crate::error::ApiError;
use crate::model::LiveEvent;

/// Live streams open at once (each open page holds one).
pub const MAX_STREAMS: usize = 32;
/// A comment line this often keeps idle connections (and proxies) from timing out.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The stream route's state: the backend and the permits that bound the streams.
#[derive(Debug)]
pub(crate) struct Streams<B> {
    pub(crate) backend: Arc<B>,
    pub(crate) permits: Arc<Semaphore>,
}

impl<B> Clone for Streams<B> {
    fn clone(&self) -> Self {
        Streams { backend: self.backend.clone(), permits: self.permits.clone() }
    }
}

impl<B> Streams<B> {
    pub(crate) fn new(backend: Arc<B>) -> Streams<B> {
        Streams { backend, permits: Arc::new(Semaphore::new(MAX_STREAMS)) }
    }
}

fn event(live: &LiveEvent) -> Event {
    // `LiveEvent` serializes without fail (strings, numbers and ids); an error would be a bug,
    // and the page then refreshes everything.
    Event::default().event(live.kind()).json_data(live).unwrap_or_else(|_| Event::default().event("resync").data("{}"))
}

pub(crate) async fn events<B: Backend>(
    State(streams): State<Streams<B>>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let permit = streams.permits.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("at most {MAX_STREAMS} live pages may be open at once; close some and reload"),
        )
    })?;
    let receiver = streams.backend.live_events()?;
    let stream = BroadcastStream::new(receiver).map(move |item| {
        // The permit is returned when the stream (the connection) ends.
        let _held = &permit;
        Ok(match item {
            Ok(live) => event(&live),
            Err(_lagged) => event(&LiveEvent::Resync),
        })
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

//! Live updates: a Server-Sent Events stream that says when the signed-in
//! user's queue changed. The page then fetches what it shows (queue rows, or
//! the item's state), so what is rendered always comes from one place.
//!
//! Each connection checks the newest `updated_at` of the tenant's items every
//! `console.live_poll_ms` (one indexed lookup), so a change made through any
//! replica is seen.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;

use super::session::ConsoleUser;
use crate::http::AppState;

pub async fn events(
    State(state): State<AppState>,
    user: ConsoleUser,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let every = Duration::from_millis(state.config.console.live_poll_ms);
    let tenant = user.tenant_id();
    // `None` until the first check, so the first event always goes out.
    let stream =
        futures::stream::unfold((state, None::<String>), move |(state, last)| async move {
            loop {
                if last.is_some() {
                    tokio::time::sleep(every).await;
                }
                let current = match state.store.queue_changed_at(tenant).await {
                    Ok(at) => at.map_or_else(|| "empty".to_string(), |t| t.to_rfc3339()),
                    Err(err) => {
                        tracing::warn!(error = %err, "live queue check failed");
                        tokio::time::sleep(every).await;
                        continue;
                    }
                };
                if last.as_deref() != Some(current.as_str()) {
                    let event = Event::default().event("queue").data(current.clone());
                    return Some((Ok(event), (state, Some(current))));
                }
            }
        });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

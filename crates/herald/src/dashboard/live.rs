//! The overview's data, and `/events`: the same data pushed as server-sent events whenever it changes, so
//! the overview follows the queue without reloading.

use std::{
    convert::Infallible,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use axum::{
    extract::State,
    http::{StatusCode, header},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use futures_util::Stream;
use serde::Serialize;

use crate::{
    app::AppState,
    clock::{Clock, SystemClock},
    delivery::RelaySnapshot,
    store::{MessageStatus, Millis, StoreError},
};

/// How often a stream looks for changes: a delivery shows on the overview within this (plus a round trip).
const POLL: Duration = Duration::from_millis(250);
/// A stream sends the chart again at least this often even when the counts stand still.
const REFRESH: Duration = Duration::from_secs(10);
const HOUR_BUCKET: i64 = 60_000;
const DAY_BUCKET: i64 = 15 * 60_000;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusCount {
    pub status: &'static str,
    pub count: u64,
}

/// One bar of the chart: what happened to messages in a span of time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bar {
    pub start: Millis,
    pub accepted: u64,
    pub delivered: u64,
    pub failed: u64,
    pub deferred: u64,
}

/// The part of the overview that is cheap to read: compared on every poll.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pulse {
    pub counts: Vec<StatusCount>,
    pub total: u64,
    pub relays: Vec<RelaySnapshot>,
}

/// Everything the overview shows.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub at: Millis,
    #[serde(flatten)]
    pub pulse: Pulse,
    pub hour: Vec<Bar>,
    pub day: Vec<Bar>,
}

pub async fn pulse(state: &AppState) -> Result<Pulse, StoreError> {
    let counts = state.service.counts().await?;
    let counts: Vec<StatusCount> = MessageStatus::ALL
        .iter()
        .map(|status| StatusCount {
            status: status.as_str(),
            count: counts.get(status).copied().unwrap_or(0),
        })
        .collect();
    Ok(Pulse {
        total: counts.iter().map(|c| c.count).sum(),
        counts,
        relays: state.relays.snapshot(),
    })
}

async fn bars(state: &AppState, since: Millis, bucket: i64) -> Result<Vec<Bar>, StoreError> {
    Ok(state
        .service
        .activity(since, bucket)
        .await?
        .into_iter()
        .map(|b| Bar {
            start: b.start,
            accepted: b.accepted,
            delivered: b.delivered,
            failed: b.failed,
            deferred: b.deferred,
        })
        .collect())
}

pub async fn snapshot(state: &AppState, pulse: Pulse) -> Result<Snapshot, StoreError> {
    // The chart is about real time, whatever clock the queue runs on.
    let now = SystemClock.now();
    Ok(Snapshot {
        at: now,
        pulse,
        hour: bars(state, now - 3_600_000, HOUR_BUCKET).await?,
        day: bars(state, now - 86_400_000, DAY_BUCKET).await?,
    })
}

/// Live streams open at once on this node: each looks at the store four times a second, so their number is
/// bounded like every other thing a client controls. A browser's EventSource retries by itself when refused.
const MAX_STREAMS: usize = 64;
static STREAMS: AtomicUsize = AtomicUsize::new(0);

/// One open stream, counted until it ends.
struct StreamSlot;

impl StreamSlot {
    fn take() -> Option<Self> {
        STREAMS
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < MAX_STREAMS).then_some(open + 1)
            })
            .ok()
            .map(|_| StreamSlot)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        STREAMS.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Follower {
    _slot: StreamSlot,
    state: AppState,
    last: Option<Pulse>,
    sent_at: Option<Instant>,
    /// Past the first look (which goes out at once).
    started: bool,
}

/// `GET /events`: an `overview` event with a [`Snapshot`] at once, then whenever the counts or the relays
/// change (looked at every 250 ms) and every 10 s for the chart. Ends when the server stops. A 503 when
/// [`MAX_STREAMS`] are open already.
pub async fn events(State(state): State<AppState>) -> Response {
    let Some(slot) = StreamSlot::take() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            "too many live streams are open on this node; retry later",
        )
            .into_response();
    };
    follow(state, slot).into_response()
}

fn follow(state: AppState, slot: StreamSlot) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let follower = Follower {
        _slot: slot,
        state,
        last: None,
        sent_at: None,
        started: false,
    };
    let stream = futures_util::stream::unfold(follower, |mut follower| async move {
        loop {
            if std::mem::replace(&mut follower.started, true) {
                let mut stopping = follower.state.stopping.clone();
                tokio::select! {
                    _ = tokio::time::sleep(POLL) => {}
                    _ = async {
                        match stopping.as_mut() {
                            Some(stopping) => { let _ = stopping.wait_for(|stop| *stop).await; }
                            None => std::future::pending::<()>().await,
                        }
                    } => return None,
                }
            }
            let Ok(pulse) = pulse(&follower.state).await else {
                continue;
            };
            let due = follower.sent_at.is_none_or(|at| at.elapsed() >= REFRESH);
            if !due && follower.last.as_ref() == Some(&pulse) {
                continue;
            }
            let Ok(snapshot) = snapshot(&follower.state, pulse.clone()).await else {
                continue;
            };
            follower.last = Some(pulse);
            follower.sent_at = Some(Instant::now());
            let event = Event::default()
                .event("overview")
                .json_data(&snapshot)
                .unwrap_or_else(|_| Event::default().comment("unserialisable snapshot"));
            return Some((Ok(event), follower));
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_streams_are_bounded_and_slots_come_back() {
        let slots: Vec<StreamSlot> = std::iter::from_fn(StreamSlot::take)
            .take(MAX_STREAMS + 1)
            .collect();
        assert!(slots.len() <= MAX_STREAMS, "never more than the bound");
        assert!(StreamSlot::take().is_none());
        drop(slots);
        assert!(
            StreamSlot::take().is_some(),
            "a closed stream frees its slot"
        );
    }
}

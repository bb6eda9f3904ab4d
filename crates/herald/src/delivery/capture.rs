//! The built-in capture inbox: with no relay configured, mail is "delivered" into Herald's own store.
//!
//! The message's exact bytes are already stored at accept time, so capturing is only the decision that every
//! recipient got it; the dashboard shows captured mail like a local mail catcher. A fresh install therefore
//! works end to end with nothing else running.

use super::{Delivery, Envelope, RecipientReply, Transport, Verdict};
use crate::store::RawSegment;

#[derive(Debug, Clone, Default)]
pub struct CaptureTransport;

impl Transport for CaptureTransport {
    async fn deliver(&self, envelope: Envelope, _body: Vec<RawSegment>) -> Delivery {
        Delivery::Replies(
            envelope
                .recipients
                .iter()
                .map(|_| RecipientReply {
                    verdict: Verdict::Accepted,
                    code: Some(250),
                    enhanced_status: Some("2.0.0".into()),
                    text: "captured in the built-in inbox".into(),
                })
                .collect(),
        )
    }

    fn describe(&self) -> String {
        "capture".into()
    }
}

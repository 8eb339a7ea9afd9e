//! Destinations for flash-sale alerts, fed from an outbox. The alert row is written in the
//! batch transaction with `notified_at` NULL; after the commit, housekeeping claims
//! undelivered rows (`FOR UPDATE SKIP LOCKED`, so two instances never deliver the same one
//! at once), hands them to every sink and marks them notified in the same transaction. A
//! crash between delivery and that commit delivers again on restart: at least once, never
//! lost. Adding a webhook never touches exactly-once state.

use crate::store::Alert;

/// Something that wants to hear about alerts.
pub trait AlertSink: Send {
    /// Called for each alert not yet delivered. An error leaves the alert undelivered; it
    /// is offered again (to every sink) on the next round.
    fn raise(&mut self, alert: &Alert) -> Result<(), String>;
}

/// Logs each alert at WARN level.
#[derive(Debug, Default)]
pub struct LogAlertSink;

impl AlertSink for LogAlertSink {
    fn raise(&mut self, a: &Alert) -> Result<(), String> {
        tracing::warn!(
            product = %a.product_id,
            window_start = %a.window_start,
            window_end = %a.window_end,
            views = a.views,
            purchases = a.purchases,
            "flash-sale alert: many views, few purchases"
        );
        Ok(())
    }
}

//! Destinations for flash-sale alerts. The alert table is written in the batch
//! transaction; sinks here run after the commit (at most once per alert per instance),
//! so a webhook can be added without touching exactly-once state.

use crate::store::Alert;

/// Something that wants to hear about alerts.
pub trait AlertSink: Send {
    /// Called once per newly raised alert, after it is committed.
    fn raise(&mut self, alert: &Alert);
}

/// Logs each alert at WARN level.
#[derive(Debug, Default)]
pub struct LogAlertSink;

impl AlertSink for LogAlertSink {
    fn raise(&mut self, a: &Alert) {
        tracing::warn!(
            product = %a.product_id,
            window_start = %a.window_start,
            window_end = %a.window_end,
            views = a.views,
            purchases = a.purchases,
            "flash-sale alert: many views, few purchases"
        );
    }
}

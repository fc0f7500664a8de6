//! Progress of work the MTA does in the background after answering: an
//! xfer binds its messages at once and hands them over one by one, so
//! `xfer --wait` follows the MTA's count of messages handed over
//! (`sluice_xfer_out_total` on `/metrics`, which counts an XferOut only once
//! the target has the message in its spool), saying how many are left as
//! that changes, until none is. Another xfer from the same MTA at the same
//! time is counted too.

use super::client::{CliError, Client};
use serde_json::Value;
use std::time::Duration;

/// How often the count is read while waiting.
const POLL: Duration = Duration::from_millis(500);

/// The counter in a Prometheus text exposition.
fn counter(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Messages the MTA has handed over so far.
pub async fn handed_over(client: &Client) -> Result<u64, CliError> {
    let metrics = client.get("/metrics").await?;
    Ok(counter(
        metrics.as_str().unwrap_or_default(),
        "sluice_xfer_out_total",
    ))
}

/// Wait until the messages the xfer `answer` bound have been handed over
/// (counted from `before`), printing what is left to stderr as it changes.
pub async fn wait_for_xfer(client: &Client, answer: &Value, before: u64) -> Result<(), CliError> {
    let total = answer["messages"].as_u64().unwrap_or(0);
    let mut last = None;
    loop {
        let moved = handed_over(client).await?.saturating_sub(before).min(total);
        if last != Some(moved) {
            eprintln!(
                "xfer: {moved} of {total} handed over, {} to go",
                total - moved
            );
            last = Some(moved);
        }
        if moved >= total {
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counter_is_read_from_the_exposition() {
        let text = "# HELP sluice_xfer_out_total x\n# TYPE sluice_xfer_out_total counter\n\
                    sluice_xfer_out_total 17\nsluice_xfer_out_total_other 3\n";
        assert_eq!(counter(text, "sluice_xfer_out_total"), 17);
        assert_eq!(counter("", "sluice_xfer_out_total"), 0);
    }
}

//! Runs flatsync inside this program with a sink that lives in this program too, against the
//! built-in Flatfile simulator: `cargo run -p flatsync-core --example embed`.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use flatfile_sim::{RunningSim, SimConfig};
use flatsync_core::{Config, DaemonBuilder, EventStatus, Secret, SecretSource};
use flatsync_plugin_sdk::{Batch, CreateContext, Sink, SinkError, serde_json};

static ROWS: AtomicU64 = AtomicU64::new(0);

/// An in-process sink: counts rows. A real one would write them to the program's own store,
/// keeping the last applied `seq` per stream so a re-delivered batch is skipped.
struct CountRows;

impl Sink for CountRows {
    fn create(_: &CreateContext<'_>, _: serde_json::Value) -> Result<Self, SinkError> {
        Ok(CountRows)
    }

    fn write_batch(&mut self, batch: &Batch<'_>) -> Result<(), SinkError> {
        ROWS.fetch_add(batch.row_count(), Ordering::Relaxed);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sim_config = SimConfig {
        rows: 5_000,
        ..SimConfig::default()
    };
    let sim = RunningSim::start(sim_config.clone(), ([127, 0, 0, 1], 0).into()).await?;
    let state = tempfile::tempdir()?;

    let text = format!(
        r#"
        [daemon]
        state_dir = "{state}"
        [flatfile]
        legacy_api_url = "{url}"
        api_url = "{url}"
        [webhook]
        listen = "127.0.0.1:0"
        [sinks.counter]
        plugin = "count-rows"
        [[routes]]
        topics = ["portalImportSubmitted", "job:ready"]
        sinks = ["counter"]
        "#,
        state = state.path().display(),
        url = sim.base_url(),
    );
    let mut config = Config::parse(&text, Path::new("<embedded>"))?;
    // An embedding program hands secrets over in code instead of naming env vars.
    config.flatfile.legacy_api_key = Some(SecretSource::Value(Secret::new(
        sim_config.legacy_api_key.clone(),
    )));

    let daemon = DaemonBuilder::new(config)
        .plugin(
            "count-rows",
            flatsync_plugin_sdk::in_process::<CountRows>("count-rows"),
        )
        .start()
        .await?;
    let url = format!(
        "http://{}/flatfile/webhook",
        daemon.webhook_addr().ok_or("no listener")?
    );
    flatfile_sim::post_webhook(
        &url,
        None,
        &flatfile_sim::legacy_webhook_body("batch-1", "event-1", 5_000),
    )
    .await?;

    while !daemon
        .state()
        .event("event-1")
        .await?
        .is_some_and(|e| e.status.is_final())
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = daemon.state().event("event-1").await?.map(|e| e.status);
    println!(
        "event-1: {status:?}, {} rows counted in-process",
        ROWS.load(Ordering::Relaxed)
    );
    daemon.shutdown().await;
    sim.shutdown().await;
    if status == Some(EventStatus::Done) {
        Ok(())
    } else {
        Err("event not delivered".into())
    }
}

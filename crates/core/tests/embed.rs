//! flatsync embedded in a Rust program: an in-process sink, rows from flatfile-sim, and
//! reloads applied (or refused) while it runs.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use flatfile_sim::{RunningSim, SimConfig};
use flatsync_core::{Config, DaemonBuilder, EventStatus, RunningDaemon, Secret, SecretSource};
use flatsync_plugin_sdk::{Batch, CreateContext, Sink, SinkError, serde_json};

/// Rows received, by `(sink instance, record id)`: the test reads what the sinks saw.
static RECEIVED: Mutex<BTreeMap<(String, String), u32>> = Mutex::new(BTreeMap::new());

/// Collects the ids of the rows it receives, skipping batches it already has (by stream and
/// seq), as a real sink would.
struct Collect {
    instance: String,
    applied: BTreeMap<String, u64>,
}

impl Sink for Collect {
    fn create(ctx: &CreateContext<'_>, _: serde_json::Value) -> Result<Self, SinkError> {
        Ok(Collect {
            instance: ctx.instance_name().to_owned(),
            applied: BTreeMap::new(),
        })
    }

    fn write_batch(&mut self, batch: &Batch<'_>) -> Result<(), SinkError> {
        if self
            .applied
            .get(batch.stream())
            .is_some_and(|&next| batch.seq() < next)
        {
            return Ok(());
        }
        let mut received = RECEIVED.lock().expect("lock");
        for row in batch.rows() {
            let id = row?.id.into_owned();
            *received.entry((self.instance.clone(), id)).or_default() += 1;
        }
        self.applied
            .insert(batch.stream().to_owned(), batch.seq() + 1);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

fn received_by(instance: &str) -> BTreeMap<String, u32> {
    RECEIVED
        .lock()
        .expect("lock")
        .iter()
        .filter(|((sink, _), _)| sink == instance)
        .map(|((_, id), n)| (id.clone(), *n))
        .collect()
}

fn config(state_dir: &Path, sim: &RunningSim, sim_config: &SimConfig, sinks: &[&str]) -> Config {
    let mut text = format!(
        "[daemon]\nstate_dir = \"{}\"\n[flatfile]\nlegacy_api_url = \"{url}\"\napi_url = \"{url}\"\n\
         [webhook]\nlisten = \"127.0.0.1:0\"\n",
        state_dir.display(),
        url = sim.base_url()
    );
    for sink in sinks {
        let plugin = if *sink == "broken" {
            "no-such-plugin"
        } else {
            "collect"
        };
        text.push_str(&format!("[sinks.{sink}]\nplugin = \"{plugin}\"\n"));
    }
    let list = sinks
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ");
    text.push_str(&format!("[[routes]]\ntopics = [\"*\"]\nsinks = [{list}]\n"));
    let mut config = Config::parse(&text, Path::new("<embedded>")).expect("valid config");
    config.flatfile.legacy_api_key = Some(SecretSource::Value(Secret::new(
        sim_config.legacy_api_key.clone(),
    )));
    config.flatfile.secret_key = Some(SecretSource::Value(Secret::new(
        sim_config.secret_key.clone(),
    )));
    config
}

async fn deliver(daemon: &RunningDaemon, body: serde_json::Value, event_id: &str) {
    let url = format!(
        "http://{}/flatfile/webhook",
        daemon.webhook_addr().expect("listener")
    );
    let status = flatfile_sim::post_webhook(&url, None, &body)
        .await
        .expect("webhook sent");
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let event = daemon
            .state()
            .event(event_id)
            .await
            .expect("state")
            .expect("stored");
        if event.status.is_final() {
            assert_eq!(event.status, EventStatus::Done, "{:?}", event.detail);
            return;
        }
        assert!(
            Instant::now() < deadline,
            "event {event_id} not delivered in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_once(got: &BTreeMap<String, u32>, expected: &[String]) {
    assert_eq!(got.len(), expected.len(), "distinct ids");
    for id in expected {
        assert_eq!(got.get(id), Some(&1), "record {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_daemon_delivers_to_in_process_sinks_and_reloads() {
    let sim_config = SimConfig {
        rows: 1234,
        ..SimConfig::default()
    };
    let sim = RunningSim::start(sim_config.clone(), ([127, 0, 0, 1], 0).into())
        .await
        .expect("sim");
    let dir = tempfile::tempdir().expect("tempdir");
    let collect = flatsync_plugin_sdk::in_process::<Collect>("collect");

    let daemon = DaemonBuilder::new(config(dir.path(), &sim, &sim_config, &["first"]))
        .plugin("collect", collect)
        .start()
        .await
        .expect("daemon starts");

    deliver(
        &daemon,
        flatfile_sim::legacy_webhook_body("b1", "e1", 1234),
        "e1",
    )
    .await;
    assert_once(
        &received_by("first"),
        &flatfile_sim::legacy_row_ids(&sim_config, "b1"),
    );

    // A sink added by a reload receives the next events; the unchanged one keeps its instance.
    let summary = daemon
        .reload(config(dir.path(), &sim, &sim_config, &["first", "second"]))
        .await
        .expect("reload applies");
    assert_eq!(summary.sinks_added, vec!["second".to_owned()]);
    assert!(
        summary.sinks_changed.is_empty() && summary.needs_restart.is_empty(),
        "{summary:?}"
    );
    let job = sim
        .workbook_job("us_wb_w1")
        .expect("the simulator creates the job");
    deliver(
        &daemon,
        flatfile_sim::submit_event_body("e2", "us_wb_w1", &job),
        "e2",
    )
    .await;
    let workbook: Vec<String> = flatfile_sim::workbook_sheets(&sim_config, "us_wb_w1")
        .iter()
        .flat_map(|(sheet, _, _)| flatfile_sim::record_ids(&sim_config, sheet))
        .collect();
    assert_once(&received_by("second"), &workbook);
    let mut both = flatfile_sim::legacy_row_ids(&sim_config, "b1");
    both.extend(workbook.iter().cloned());
    assert_once(&received_by("first"), &both);
    assert_eq!(sim.job(&job).map(|j| j.status), Some("complete".to_owned()));

    // A reload whose sink cannot start is refused, naming it; the running config goes on.
    let err = daemon
        .reload(config(dir.path(), &sim, &sim_config, &["first", "broken"]))
        .await
        .expect_err("a missing plugin is refused");
    assert!(err.to_string().contains("sink `broken`"), "{err}");
    assert_eq!(
        daemon.config().sinks.keys().collect::<Vec<_>>(),
        vec!["first", "second"]
    );
    deliver(
        &daemon,
        flatfile_sim::legacy_webhook_body("b3", "e3", 1234),
        "e3",
    )
    .await;
    assert_eq!(received_by("second").len(), workbook.len() + 1234);

    daemon.shutdown().await;
    sim.shutdown().await;
}

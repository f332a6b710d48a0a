//! Plugin log lines reach the host's `tracing` subscriber, attributed to the sink.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flatsync_plugin_host::{LoadedPlugin, SinkOptions, SinkWorker};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("capture lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("capture lock")).into_owned()
    }
}

#[tokio::test]
async fn plugin_logs_and_retries_are_logged_with_sink_and_plugin() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // Scoped to this thread; the worker thread and the plugin's own thread log through the
    // dispatcher captured at spawn.
    let _guard = tracing::subscriber::set_default(subscriber);

    let dir = tempfile::tempdir().expect("temp dir");
    let path = common::counter_sink(dir.path());
    let plugin = LoadedPlugin::load(&path, Some("counter")).expect("loads");
    let record = dir.path().join("log.record");
    let options = SinkOptions {
        retry_initial: Duration::from_millis(1),
        retry_max: Duration::from_millis(2),
        ..SinkOptions::default()
    };
    let worker = SinkWorker::spawn(
        plugin,
        "audit",
        format!(
            r#"{{"record": "{}", "flush_retries": 1}}"#,
            record.display()
        ),
        options,
    )
    .await
    .expect("sink starts");
    worker.flush().await.expect("flush ok after one retry");
    worker.shutdown().await;

    let logs = captured.text();
    let line_with = |needle: &str| {
        logs.lines()
            .find(|line| line.contains(needle))
            .unwrap_or_else(|| panic!("no log line with {needle:?} in:\n{logs}"))
            .to_owned()
    };
    let created = line_with("counter audit created");
    assert!(created.contains("INFO"), "{created}");
    assert!(created.contains("flatsync::plugin"), "{created}");
    assert!(created.contains("sink=audit"), "{created}");
    assert!(created.contains("plugin=counter"), "{created}");

    let from_thread = line_with("hello from a plugin thread");
    assert!(from_thread.contains("WARN"), "{from_thread}");
    assert!(from_thread.contains("sink=audit"), "{from_thread}");

    let retry = line_with("Sink asked to retry");
    assert!(
        retry.contains("call=\"flush\"") || retry.contains("call=flush"),
        "{retry}"
    );
    assert!(retry.contains("error=flush busy"), "{retry}");

    line_with("does not declare that its panics are caught");
}

//! `flatsync demo`: the whole pipeline against the built-in Flatfile simulator.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use flatfile_sim::{RunningSim, SimConfig};
use flatsync_core::{Config, EventStatus, RunningDaemon, Secret, SecretSource};

const DEMO_TOKEN: &str = "demo-webhook-token";

/// The config the demo runs with; also written next to the outputs so it can be read.
fn demo_config_text(out: &Path, sim_url: &str) -> String {
    let out = out.display();
    format!(
        r#"# Written by `flatsync demo`. Secrets come from the simulator's demo defaults.
[daemon]
state_dir = "{out}/state"

[flatfile]
legacy_api_url = "{sim_url}"
api_url = "{sim_url}"

[webhook]
listen = "127.0.0.1:0"
path = "/flatfile/webhook"

[fetch]
legacy_page_size = 1000
records_page_size = 1000
pages_in_flight = 4

[sinks.archive]
plugin = "csv-folder"
config = {{ dir = "{out}/csv" }}

[sinks.warehouse]
plugin = "sqlite"
config = {{ path = "{out}/warehouse.db" }}

[[routes]]
topics = ["portalImportSubmitted", "job:ready"]
sinks = ["archive", "warehouse"]
"#
    )
}

pub(crate) async fn run(rows: u64, out: PathBuf) -> anyhow::Result<()> {
    let started = Instant::now();
    let out = prepare_out_dir(out)?;
    let sim_config = SimConfig {
        rows,
        ..SimConfig::default()
    };
    let sim = RunningSim::start(sim_config.clone(), ([127, 0, 0, 1], 0).into())
        .await
        .context("cannot start the Flatfile simulator")?;
    let (config, config_path) = write_demo_config(&out, &sim, &sim_config)?;

    println!(
        "flatsync demo: {rows} legacy rows and {rows} Platform records into {}",
        out.display()
    );
    println!("  simulator: {}", sim.base_url());
    let daemon = RunningDaemon::start(config)
        .await
        .context("cannot start flatsync")?;
    let addr = daemon
        .webhook_addr()
        .context("the demo config has a webhook listener")?;
    let url = format!("http://{addr}/flatfile/webhook");
    println!("  webhook:   {url}");

    let sent = send_webhooks(&sim, &url, rows).await?;
    let events = [sent.legacy_event.as_str(), sent.platform_event.as_str()];
    let daemon = wait_until_done(daemon, &events, started).await?;
    let delivered_in = started.elapsed();
    daemon.shutdown().await;
    let job = sim.job(&sent.job_id);
    sim.shutdown().await;

    println!("delivered in {:.2} s", delivered_in.as_secs_f64());
    let csv_total = report_csv(&out.join("csv"))?;
    let sqlite_total = report_sqlite(&out.join("warehouse.db"))?;
    match job {
        Some(job) => println!(
            "Flatfile job {}: {}{}",
            job.id,
            job.status,
            job.outcome_message
                .map(|m| format!(" (\"{m}\")"))
                .unwrap_or_default()
        ),
        None => println!("Flatfile job {}: never seen by the simulator", sent.job_id),
    }
    println!("config used: {}", config_path.display());
    let expected = rows * 2;
    if csv_total != expected || sqlite_total != expected {
        bail!(
            "expected {expected} rows in each sink, found {csv_total} in CSV and {sqlite_total} in SQLite"
        );
    }
    Ok(())
}

/// Creates the output folder and clears what an earlier demo left in it, so the counts
/// printed are this run's. Returns the folder's absolute path.
fn prepare_out_dir(out: PathBuf) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let out = out
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", out.display()))?;
    for stale in ["csv", "state"] {
        let path = out.join(stale);
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("cannot clear {}", path.display()))?;
        }
    }
    for stale in ["warehouse.db", "warehouse.db-wal", "warehouse.db-shm"] {
        let _ = std::fs::remove_file(out.join(stale));
    }
    Ok(out)
}

/// Writes the demo config next to the outputs and parses it, with the simulator's keys and
/// the demo token set in code. Returns the config and where it was written.
fn write_demo_config(
    out: &Path,
    sim: &RunningSim,
    sim_config: &SimConfig,
) -> anyhow::Result<(Config, PathBuf)> {
    let text = demo_config_text(out, &sim.base_url());
    let config_path = out.join("demo-config.toml");
    std::fs::write(&config_path, &text)
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    let mut config = Config::parse(&text, &config_path)?;
    config.flatfile.legacy_api_key = Some(SecretSource::Value(Secret::new(
        sim_config.legacy_api_key.clone(),
    )));
    config.flatfile.secret_key = Some(SecretSource::Value(Secret::new(
        sim_config.secret_key.clone(),
    )));
    if let Some(webhook) = config.webhook.as_mut() {
        webhook.auth.token = Some(SecretSource::Value(Secret::new(DEMO_TOKEN.to_owned())));
    }
    Ok((config, config_path))
}

/// The demo's two events and the submit job of the Platform one.
struct Sent {
    legacy_event: String,
    platform_event: String,
    job_id: String,
}

/// Sends a legacy import and a workbook submit webhook, as Flatfile would.
async fn send_webhooks(sim: &RunningSim, url: &str, rows: u64) -> anyhow::Result<Sent> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let legacy_event = format!("demo-legacy-{stamp}");
    let batch_id = format!("demo-batch-{stamp}");
    let platform_event = format!("us_evt_demo{stamp}");
    let workbook_id = format!("us_wb_demo{stamp}");
    let job_id = sim
        .workbook_job(&workbook_id)
        .context("the simulator cannot create the demo's submit job")?;
    for (what, body) in [
        (
            "legacy import",
            flatfile_sim::legacy_webhook_body(&batch_id, &legacy_event, rows),
        ),
        (
            "workbook submit",
            flatfile_sim::submit_event_body(&platform_event, &workbook_id, &job_id),
        ),
    ] {
        let status = flatfile_sim::post_webhook(url, Some(DEMO_TOKEN), &body)
            .await
            .with_context(|| format!("cannot send the {what} webhook"))?;
        if !(200..300).contains(&status) {
            bail!("the {what} webhook was answered {status}");
        }
        println!("  sent {what} webhook: {status}");
    }
    Ok(Sent {
        legacy_event,
        platform_event,
        job_id,
    })
}

/// Waits until every event has a final status, saying so every 5 s, and hands the daemon
/// back; an event that did not end `done` stops the daemon and fails the demo.
async fn wait_until_done(
    daemon: RunningDaemon,
    events: &[&str],
    started: Instant,
) -> anyhow::Result<RunningDaemon> {
    let mut last_report = Instant::now();
    loop {
        let mut finished = Vec::new();
        for id in events {
            if let Some(event) = daemon.state().event(id).await?
                && event.status.is_final()
            {
                finished.push(event);
            }
        }
        if finished.len() == events.len() {
            for event in &finished {
                if event.status != EventStatus::Done {
                    daemon.shutdown().await;
                    bail!(
                        "event {} ended {}: {}",
                        event.event_id,
                        event.status.as_str(),
                        event.detail.as_deref().unwrap_or("no detail")
                    );
                }
            }
            return Ok(daemon);
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            println!(
                "  ... still delivering ({:.0} s)",
                started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn report_csv(dir: &Path) -> anyhow::Result<u64> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "csv"))
        .collect();
    files.sort();
    let mut total = 0;
    // 64-bit hashes instead of the id strings keep this count within a few MiB per million
    // rows; the chance of two of a few million ids sharing a hash is negligible.
    let mut id_hashes: Vec<u64> = Vec::new();
    let mut record = csv::StringRecord::new();
    println!("csv-folder sink `archive` ({}):", dir.display());
    for file in files {
        let mut reader = csv::Reader::from_path(&file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let id_column = reader.headers()?.iter().position(|h| h == "_id");
        let mut rows = 0u64;
        while reader
            .read_record(&mut record)
            .with_context(|| format!("{} is not valid CSV", file.display()))?
        {
            if let Some(id) = id_column.and_then(|i| record.get(i)) {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                std::hash::Hash::hash(id, &mut hasher);
                id_hashes.push(std::hash::Hasher::finish(&hasher));
            }
            rows += 1;
        }
        println!(
            "  {:>9} rows  {}",
            rows,
            file.file_name().unwrap_or_default().to_string_lossy()
        );
        total += rows;
    }
    id_hashes.sort_unstable();
    id_hashes.dedup();
    println!(
        "  {total:>9} rows in all, {} distinct record ids",
        id_hashes.len()
    );
    Ok(total)
}

fn report_sqlite(path: &Path) -> anyhow::Result<u64> {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("cannot open {}", path.display()))?;
    let mut stmt = conn.prepare(
        "SELECT name FROM sqlite_master WHERE type = 'table'
         AND name NOT LIKE '\\_flatsync%' ESCAPE '\\' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
    )?;
    let tables: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    println!("sqlite sink `warehouse` ({}):", path.display());
    let mut total = 0u64;
    for table in tables {
        let quoted = format!("\"{}\"", table.replace('"', "\"\""));
        let (rows, distinct): (i64, i64) = conn.query_row(
            &format!("SELECT COUNT(*), COUNT(DISTINCT _record_id) FROM {quoted}"),
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        println!("  {rows:>9} rows  table {table} ({distinct} distinct record ids)");
        total += rows as u64;
    }
    println!("  {total:>9} rows in all");
    Ok(total)
}

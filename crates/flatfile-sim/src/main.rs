//! `flatfile-sim`: runs the local Flatfile API simulator, or sends a webhook as Flatfile would.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{ArgGroup, Args, Parser, Subcommand};
use flatfile_sim::{
    AdminClient, DEFAULT_LEGACY_API_KEY, DEFAULT_SECRET_KEY, EventsOrder, Faults, JobRequest,
    RunningSim, SimConfig, SimEnvironment, WebhookReply, forwarded_event_body, legacy_webhook_body,
    portal2_upload_bodies, send_webhook, submit_event_body,
};

const LEGACY_KEY_ENV: &str = "FLATFILE_SIM_LEGACY_API_KEY";
const SECRET_KEY_ENV: &str = "FLATFILE_SIM_SECRET_KEY";
const ENVIRONMENTS_ENV: &str = "FLATFILE_SIM_ENVIRONMENTS";
const WEBHOOK_TOKEN_ENV: &str = "FLATSYNC_WEBHOOK_TOKEN";
/// The listener's own variable for its bearer token, which the forwarder copies into the body.
const FORWARDED_TOKEN_ENV: &str = "FLATFILE_BEARER_TOKEN";
/// The API root a Flatfile listener uses when nothing else is configured.
const LISTENER_API_URL: &str = "https://platform.flatfile.com/api";

#[derive(Debug, Parser)]
#[command(
    name = "flatfile-sim",
    version,
    about = "A local Flatfile API simulator for trying and testing flatsync without a Flatfile account",
    long_about = "A local Flatfile API simulator for trying and testing flatsync without a Flatfile \
account.\n\nWithout a subcommand it serves, on one address, the legacy Portal API \
(GET /rest/batch/{batchId}/rows, header X-Api-Key) and the Platform API (/v1 workbooks, sheets, \
counts, records, jobs and events, header Authorization: Bearer), and the legacy Workspaces \
records (GET /workspace/{workspaceId}/sheet/{sheetId}/records, header X-Api-Key). Every batch \
id, every (workspace, sheet) and every us_wb_<x> workbook id exists; rows are generated from \
the seed, so runs are repeatable. Jobs exist only once created; any other job id is answered \
404. Faults (5xx, 429 with Retry-After, cut connections) can be injected.\n\nThe admin API \
(no auth) drives and inspects it: POST /_sim/submit creates a workbook and a submit job with \
its job:ready event (\"parts\": N splits it into N part jobs, \"contextIds\": false leaves \
the workbook and sheet ids out of the job events); POST /_sim/jobs creates a job for a \
workbook or sheet without any event; POST, PATCH and DELETE /_sim/sheets/{sheetId}/records add, \
edit and delete records (with records:* and commit:* events; \"eventShape\" picks how they \
name the change: recordIds, count, dataUrl or versionId); POST /_sim/events emits any event of \
a Platform domain (\"allowUnknownDomain\": true for others); GET /_sim/events, /_sim/jobs, \
/_sim/jobs/{id}, /_sim/sheets/{sheetId}/records and /_sim/stats show what happened.\n\nKeys come from the environment: FLATFILE_SIM_LEGACY_API_KEY (default \
demo-key+demo-secret), FLATFILE_SIM_SECRET_KEY (key of environment us_env_demo, default sk_demo) \
and FLATFILE_SIM_ENVIRONMENTS (more environments, ID=KEY,ID=KEY). --environment ID=KEY adds one \
too, but puts its key where other local users can read it. Keys are never printed. Logs go to \
stderr; set RUST_LOG=debug to see every request.",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send a webhook as Flatfile would, print the answer, and exit 0 on a 2xx status.
    ///
    /// Sends a legacy Portal "Import submitted" notification (--legacy-batch), a Platform
    /// job:ready event of a workbook submit (--workbook with --job, or with --sim to create the
    /// job in the simulator first; --forwarded wraps it as
    /// @flatfile/plugin-webhook-event-forwarder does), or every request of a Portal 2.0
    /// batch.upload (--portal2-upload, stopping at the first non-2xx answer). The bearer token
    /// of the request, if any, comes from the environment variable FLATSYNC_WEBHOOK_TOKEN; the
    /// access token a forwarded body carries from FLATFILE_BEARER_TOKEN.
    SendWebhook(SendWebhookArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8788")]
    listen: SocketAddr,
    /// Rows of every legacy batch, and of every workbook in all (split over its sheets).
    #[arg(long, default_value_t = 1000)]
    rows: u64,
    /// Seed of the generated data and of fault injection.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Sheets per workbook, 1 to 4: contacts, companies, deals, tickets.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=4))]
    sheets: u8,
    /// Delay added to every data request (legacy rows, Platform records), in milliseconds.
    #[arg(long, default_value_t = 0)]
    page_latency_ms: u64,
    /// Fraction of API requests answered 500 or 503.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    error_rate: f64,
    /// Fraction of API requests answered 429 with Retry-After.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    rate_limit_rate: f64,
    /// Seconds announced in Retry-After on 429 answers.
    #[arg(long, default_value_t = 1)]
    retry_after_secs: u64,
    /// Fraction of API requests whose connection is cut in the middle of the body.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    drop_rate: f64,
    /// Largest page served, whatever take or pageSize asks for.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    max_page_size: u64,
    /// Order of GET /v1/events listings: oldest or newest first.
    #[arg(long, value_enum, default_value_t = EventsOrderArg::Oldest)]
    events_order: EventsOrderArg,
    /// Another environment and its secret key (repeatable). The key ends up in the process list:
    /// prefer FLATFILE_SIM_ENVIRONMENTS=ID=KEY,ID=KEY outside throwaway setups.
    #[arg(long = "environment", value_name = "ID=KEY")]
    environments: Vec<String>,
    /// Keep every data page rendered in memory after its first request and serve the same
    /// bytes again (for benchmarks: the page server then costs next to nothing; memory grows
    /// with the pages read).
    #[arg(long)]
    prerender: bool,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("kind").required(true).args(["legacy_batch", "workbook", "portal2_upload"])))]
struct SendWebhookArgs {
    /// URL of the receiving webhook endpoint, the daemon's [webhook] path, e.g.
    /// http://127.0.0.1:8787/flatfile/webhook.
    #[arg(long, value_name = "URL")]
    to: String,
    /// Send a legacy Portal "Import submitted" notification for this batch id.
    #[arg(long, value_name = "ID")]
    legacy_batch: Option<String>,
    /// Rows: announced in the legacy notification (the simulator's --rows), or uploaded by
    /// --portal2-upload [default: 1000].
    #[arg(long)]
    rows: Option<u64>,
    /// Send a Platform job:ready event for a submit of this workbook (us_wb_...).
    #[arg(long, value_name = "ID")]
    workbook: Option<String>,
    /// Job id of the Platform submit event (us_jb_...): a job that exists in the simulator the
    /// receiver reads from (POST /_sim/jobs creates one).
    #[arg(long, value_name = "ID", requires = "workbook", conflicts_with = "sim")]
    job: Option<String>,
    /// Base URL of the simulator the receiver reads from: create the job there first
    /// (POST /_sim/jobs) and send the job:ready of that job.
    #[arg(long, value_name = "URL", requires = "workbook")]
    sim: Option<String>,
    /// Wrap the job:ready event as @flatfile/plugin-webhook-event-forwarder POSTs it: the
    /// listener's FlatfileEvent with the access token from FLATFILE_BEARER_TOKEN (as the
    /// listener, "..." when unset) and --api-url in the body.
    #[arg(long, requires = "workbook")]
    forwarded: bool,
    /// The listener's API root carried in a forwarded body [default: --sim's URL, else
    /// https://platform.flatfile.com/api].
    #[arg(long, value_name = "URL", requires = "forwarded")]
    api_url: Option<String>,
    /// Send every request of a Portal 2.0 batch.upload of this batch id (--rows rows).
    #[arg(long, value_name = "BATCH")]
    portal2_upload: Option<String>,
    /// Rows per request of a Portal 2.0 upload.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    per_request: u64,
    /// Seed of the uploaded rows (the simulator's --seed).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Event id to send [default: a random one].
    #[arg(long, value_name = "ID", conflicts_with = "portal2_upload")]
    event_id: Option<String>,
}

/// `--events-order`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum EventsOrderArg {
    /// Ascending createdAt.
    Oldest,
    /// Descending createdAt.
    Newest,
}

fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!("{rate} is not a fraction between 0 and 1"))
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let outcome = match cli.command {
        Some(Command::SendWebhook(args)) => send(args).await,
        None => serve(cli.serve).await,
    };
    match outcome {
        Ok(code) => code,
        Err(err) => {
            eprintln!("flatfile-sim: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// A key from the environment, or the demo default; the flag says which.
fn key_from_env(name: &str, default: &str) -> anyhow::Result<(String, bool)> {
    match std::env::var(name) {
        Ok(value) if value.is_empty() => bail!("{name} is set but empty"),
        Ok(value) => Ok((value, true)),
        Err(std::env::VarError::NotPresent) => Ok((default.to_owned(), false)),
        Err(std::env::VarError::NotUnicode(_)) => bail!("{name} is not valid UTF-8"),
    }
}

/// `ID=KEY`; the error never repeats the text, which holds a key.
fn parse_environment(text: &str, source: &str) -> anyhow::Result<SimEnvironment> {
    match text.trim().split_once('=') {
        Some((id, key)) if !id.trim().is_empty() && !key.trim().is_empty() => {
            Ok(SimEnvironment::new(id.trim(), key.trim()))
        }
        _ => bail!("{source}: each environment must be ID=KEY with both parts non-empty"),
    }
}

/// Environments from FLATFILE_SIM_ENVIRONMENTS, then from --environment.
fn environments(flags: &[String]) -> anyhow::Result<Vec<SimEnvironment>> {
    let mut environments = Vec::new();
    match std::env::var(ENVIRONMENTS_ENV) {
        Ok(list) => {
            for item in list.split(',').filter(|item| !item.trim().is_empty()) {
                environments.push(parse_environment(item, ENVIRONMENTS_ENV)?);
            }
        }
        Err(std::env::VarError::NotPresent) => {}
        Err(std::env::VarError::NotUnicode(_)) => bail!("{ENVIRONMENTS_ENV} is not valid UTF-8"),
    }
    for flag in flags {
        environments.push(parse_environment(flag, "--environment")?);
    }
    Ok(environments)
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let (legacy_api_key, legacy_from_env) = key_from_env(LEGACY_KEY_ENV, DEFAULT_LEGACY_API_KEY)?;
    let (secret_key, secret_from_env) = key_from_env(SECRET_KEY_ENV, DEFAULT_SECRET_KEY)?;
    let environments = environments(&args.environments)?;
    let config = SimConfig {
        rows: args.rows,
        seed: args.seed,
        sheets_per_workbook: usize::from(args.sheets),
        page_latency: Duration::from_millis(args.page_latency_ms),
        faults: Faults {
            error_rate: args.error_rate,
            rate_limit_rate: args.rate_limit_rate,
            retry_after_secs: args.retry_after_secs,
            drop_rate: args.drop_rate,
        },
        legacy_api_key,
        secret_key,
        environments,
        max_page_size: args.max_page_size,
        events_order: match args.events_order {
            EventsOrderArg::Oldest => EventsOrder::Oldest,
            EventsOrderArg::Newest => EventsOrder::Newest,
        },
        prerender: args.prerender,
    };
    let sim = RunningSim::start(config, args.listen)
        .await
        .with_context(|| format!("cannot serve on {}", args.listen))?;
    let keys = match (legacy_from_env, secret_from_env) {
        (true, true) => format!("{LEGACY_KEY_ENV} and {SECRET_KEY_ENV}"),
        (false, false) => {
            format!("the demo defaults; set {LEGACY_KEY_ENV} and {SECRET_KEY_ENV} to change them")
        }
        (true, false) => format!("{LEGACY_KEY_ENV} and the demo default"),
        (false, true) => format!("the demo default and {SECRET_KEY_ENV}"),
    };
    println!(
        "flatfile-sim listening on {} (legacy key and secret key from {keys}; environments {})",
        sim.base_url(),
        sim.config().environment_ids().join(", ")
    );
    // Scripts read this line through a pipe, where stdout is block-buffered.
    std::io::stdout()
        .flush()
        .context("cannot write to stdout")?;
    wait_for_stop_signal().await?;
    tracing::info!("Stopping");
    sim.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_stop_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("cannot listen for SIGTERM")?;
        tokio::select! {
            interrupted = tokio::signal::ctrl_c() => interrupted.context("cannot listen for Ctrl-C")?,
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("cannot listen for Ctrl-C")?;
    Ok(())
}

fn random_hex(len: usize) -> String {
    (0..len)
        .map(|_| char::from_digit(fastrand::u32(0..16), 16).expect("a digit below 16"))
        .collect()
}

fn env_token(name: &str) -> anyhow::Result<Option<String>> {
    match std::env::var(name) {
        Ok(token) if !token.is_empty() => Ok(Some(token)),
        Ok(_) | Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => bail!("{name} is not valid UTF-8"),
    }
}

/// Creates a job for the workbook in the simulator at `sim_url`.
async fn create_job(sim_url: &str, workbook_id: &str) -> anyhow::Result<String> {
    let (sim_url, workbook_id) = (sim_url.to_owned(), workbook_id.to_owned());
    // The admin client blocks on a runtime of its own, which must not run inside this one.
    let created = tokio::task::spawn_blocking(move || {
        AdminClient::new(&sim_url)?.create_job(&JobRequest::workbook(workbook_id))
    })
    .await
    .context("the job creation did not finish")?
    .context("cannot create the job in the simulator")?;
    Ok(created.job_id)
}

async fn send(args: SendWebhookArgs) -> anyhow::Result<ExitCode> {
    let token = env_token(WEBHOOK_TOKEN_ENV)?;
    if let Some(batch_id) = &args.portal2_upload {
        return send_upload(&args, batch_id, token.as_deref()).await;
    }
    if args.rows.is_some() && args.workbook.is_some() {
        bail!("--rows goes with --legacy-batch or --portal2-upload, not --workbook");
    }
    let (event_id, body) = event_body(&args).await?;
    let reply = send_webhook(&args.to, token.as_deref(), &body)
        .await
        .context("cannot send the webhook")?;
    eprintln!("flatfile-sim: sent event {event_id}");
    print_reply(&reply, "");
    Ok(if is_success(&reply) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Sends every request of a Portal 2.0 upload, stopping at the first answer that is not 2xx.
async fn send_upload(
    args: &SendWebhookArgs,
    batch_id: &str,
    token: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let config = SimConfig {
        seed: args.seed,
        ..SimConfig::default()
    };
    let bodies = portal2_upload_bodies(
        &config,
        batch_id,
        args.rows.unwrap_or(1000),
        args.per_request,
    );
    let count = bodies.len();
    for (at, body) in bodies.iter().enumerate() {
        let reply = send_webhook(&args.to, token, body)
            .await
            .with_context(|| format!("cannot send request {} of {count}", at + 1))?;
        print_reply(&reply, &format!(" (request {} of {count})", at + 1));
        if !is_success(&reply) {
            eprintln!(
                "flatfile-sim: stopped the upload at request {} of {count}",
                at + 1
            );
            return Ok(ExitCode::FAILURE);
        }
    }
    eprintln!(
        "flatfile-sim: sent upload {} in {count} requests",
        bodies[0]["event"]["id"].as_str().unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

/// The event id and body of a legacy notification or of a workbook submit's `job:ready`.
async fn event_body(args: &SendWebhookArgs) -> anyhow::Result<(String, serde_json::Value)> {
    match (&args.legacy_batch, &args.workbook) {
        (Some(batch_id), _) => {
            let event_id = args.event_id.clone().unwrap_or_else(|| {
                format!(
                    "{}-{}-4{}-a{}-{}",
                    random_hex(8),
                    random_hex(4),
                    random_hex(3),
                    random_hex(3),
                    random_hex(12)
                )
            });
            let body = legacy_webhook_body(batch_id, &event_id, args.rows.unwrap_or(1000));
            Ok((event_id, body))
        }
        (None, Some(workbook_id)) => {
            let job_id = match (&args.job, &args.sim) {
                (Some(job_id), _) => job_id.clone(),
                (None, Some(sim_url)) => create_job(sim_url, workbook_id).await?,
                (None, None) => bail!("--workbook needs --job ID or --sim URL"),
            };
            let event_id = args
                .event_id
                .clone()
                .unwrap_or_else(|| format!("us_evt_{}", random_hex(16)));
            let mut body = submit_event_body(&event_id, workbook_id, &job_id);
            if args.forwarded {
                let access_token =
                    env_token(FORWARDED_TOKEN_ENV)?.unwrap_or_else(|| "...".to_owned());
                let api_url = args
                    .api_url
                    .clone()
                    .or_else(|| args.sim.clone())
                    .unwrap_or_else(|| LISTENER_API_URL.to_owned());
                body = forwarded_event_body(&body, &access_token, &api_url);
            }
            eprintln!("flatfile-sim: job {job_id}");
            Ok((event_id, body))
        }
        _ => bail!("pass --legacy-batch ID, --workbook ID or --portal2-upload BATCH"),
    }
}

/// Prints the status line (with `note` after it) and the body, if any.
fn print_reply(reply: &WebhookReply, note: &str) {
    println!("HTTP {}{note}", reply.status);
    if !reply.body.is_empty() {
        println!("{}", reply.body);
    }
}

fn is_success(reply: &WebhookReply) -> bool {
    (200..300).contains(&reply.status)
}

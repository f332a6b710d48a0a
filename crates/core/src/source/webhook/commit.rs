//! Group commit of the webhook intake: concurrent webhooks share one transaction and one sync.
//!
//! Each handler puts its write on a bounded queue and waits for its own answer; one committer
//! task takes whatever is waiting (at most [`MAX_GROUP`]) into one transaction
//! ([`StateDb::write_group`]) and answers every waiter once the group committed. While it
//! commits, the next group gathers in the queue, so the busier the intake, the larger the
//! groups and the fewer the syncs per webhook; a lone webhook is committed at once, alone.
//!
//! Memory and tasks stay flat: the queue holds at most [`QUEUE_CAPACITY`] writes, a handler
//! waits for room at most [`INBOX_WAIT`] and is then answered 503, and there is one committer
//! task per webhook listener, never one per request.

use std::sync::Arc;
#[cfg(test)]
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::pipeline::dispatch::{Accepted, AcceptedTx};
use crate::state::{InboxOutcome, InboxWrite, PartOutcome, StateDb, StateError};

/// Writes waiting for the committer at most. A few groups' worth, so a burst waits in the
/// queue rather than at the door, and few enough that the bodies held stay small.
pub(crate) const QUEUE_CAPACITY: usize = 512;

/// Writes committed in one transaction at most: a larger group would hold the state
/// database's one connection longer than the dispatcher should wait for it.
pub(crate) const MAX_GROUP: usize = 256;

/// How long a webhook waits for its write to start before it is answered 503: a few busy
/// timeouts of the state database, so a burst of senders on a slow disk is served, and one
/// that cannot be is told to retry while it still waits for an answer.
pub(crate) const INBOX_WAIT: Duration = Duration::from_secs(5);

/// Why a write was not stored. Nothing of it is in the inbox either way.
#[derive(Debug)]
pub(crate) enum Unstored {
    /// It did not get its turn within [`INBOX_WAIT`]; nothing was tried.
    Busy,
    /// The state database refused it, or the group it was in.
    Failed(Arc<StateError>),
}

type Answer = oneshot::Sender<Result<InboxOutcome, Unstored>>;

/// A write on its way to the committer.
struct Job {
    write: InboxWrite,
    answer: Answer,
    /// When it was queued: one that waited past [`INBOX_WAIT`] is answered busy, not written.
    queued: Instant,
}

/// The handlers' end of the commit queue; cheap to clone.
#[derive(Clone)]
pub(crate) struct InboxQueue {
    jobs: mpsc::Sender<Job>,
    #[cfg(test)]
    commits: Arc<AtomicU64>,
}

/// The committer's end: [`Committer::run`] commits groups until every [`InboxQueue`] is gone.
pub(crate) struct Committer {
    jobs: mpsc::Receiver<Job>,
    db: StateDb,
    accepted: AcceptedTx,
    #[cfg(test)]
    commits: Arc<AtomicU64>,
}

/// A queue whose committer is not running yet; tests start it when they have queued what they
/// want committed together.
pub(crate) fn queue(db: StateDb, accepted: AcceptedTx) -> (InboxQueue, Committer) {
    let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
    #[cfg(test)]
    let commits = Arc::new(AtomicU64::new(0));
    let queue = InboxQueue {
        jobs: tx,
        #[cfg(test)]
        commits: Arc::clone(&commits),
    };
    let committer = Committer {
        jobs: rx,
        db,
        accepted,
        #[cfg(test)]
        commits,
    };
    (queue, committer)
}

/// A queue with its committer running on the current runtime.
pub(crate) fn start(db: StateDb, accepted: AcceptedTx) -> InboxQueue {
    let (queue, committer) = queue(db, accepted);
    tokio::spawn(committer.run());
    queue
}

impl InboxQueue {
    /// Stores an event; whether it was new. Returns once the group it went in committed, so an
    /// `Ok` is durable.
    pub(crate) async fn event(&self, write: InboxWrite) -> Result<bool, Unstored> {
        match self.write(write).await? {
            InboxOutcome::Event(new) => Ok(new),
            InboxOutcome::Part(_) => Err(mismatch()),
        }
    }

    /// Stores a part of a carried upload; see [`PartOutcome`].
    pub(crate) async fn part(&self, write: InboxWrite) -> Result<PartOutcome, Unstored> {
        match self.write(write).await? {
            InboxOutcome::Part(outcome) => Ok(outcome),
            InboxOutcome::Event(_) => Err(mismatch()),
        }
    }

    /// Queues the write, waiting for room at most [`INBOX_WAIT`], then waits for its answer.
    /// A handler dropped while it waits (the sender hung up) leaves a queued write to be
    /// skipped, and one already in a group to be committed with it.
    async fn write(&self, write: InboxWrite) -> Result<InboxOutcome, Unstored> {
        let (answer, answered) = oneshot::channel();
        let job = Job {
            write,
            answer,
            queued: Instant::now(),
        };
        // Room is the common case: taken without arming a timer.
        let job = match self.jobs.try_send(job) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(job)) => Some(job),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(Unstored::Busy),
        };
        if let Some(job) = job {
            match tokio::time::timeout(INBOX_WAIT, self.jobs.send(job)).await {
                Ok(Ok(())) => {}
                // The committer is gone (the daemon stops): nothing was written.
                Ok(Err(_)) | Err(_) => return Err(Unstored::Busy),
            }
        }
        answered.await.unwrap_or(Err(Unstored::Busy))
    }

    /// Transactions the committer ran so far.
    #[cfg(test)]
    pub(crate) fn commits(&self) -> u64 {
        self.commits.load(Ordering::SeqCst)
    }

    /// Writes waiting in the queue.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.jobs.max_capacity() - self.jobs.capacity()
    }
}

/// An answer of the wrong kind would be a bug in [`StateDb::write_group`]; it is a failure to
/// store, answered 503, never a 2xx.
fn mismatch() -> Unstored {
    Unstored::Failed(Arc::new(StateError::Task(
        "the inbox answered a write with another kind's outcome".to_owned(),
    )))
}

impl Committer {
    /// Commits whatever is waiting, group after group, until the queue is closed.
    pub(crate) async fn run(mut self) {
        let mut taken = Vec::with_capacity(MAX_GROUP);
        while self.jobs.recv_many(&mut taken, MAX_GROUP).await > 0 {
            self.commit(&mut taken).await;
        }
    }

    /// Commits one group and answers each of its waiters.
    async fn commit(&self, taken: &mut Vec<Job>) {
        let mut writes = Vec::with_capacity(taken.len());
        let mut answers = Vec::with_capacity(taken.len());
        for job in taken.drain(..) {
            if job.answer.is_closed() {
                // Nobody waits for it (the sender hung up): it was never answered, so the
                // sender retries.
                continue;
            }
            if job.queued.elapsed() > INBOX_WAIT {
                let _ = job.answer.send(Err(Unstored::Busy));
                continue;
            }
            let hint = match &job.write {
                InboxWrite::Event {
                    event_id,
                    kind,
                    topic,
                    ..
                } => Some(Accepted::of(event_id.clone(), kind, topic)),
                InboxWrite::Part { .. } => None,
            };
            writes.push(job.write);
            answers.push((job.answer, hint));
        }
        if writes.is_empty() {
            return;
        }
        let rows = writes.len();
        let committed = self.db.write_group(writes).await;
        #[cfg(test)]
        self.commits.fetch_add(1, Ordering::SeqCst);
        match committed {
            Ok(outcomes) => {
                tracing::trace!(rows, "Inbox group committed");
                for ((answer, hint), outcome) in answers.into_iter().zip(outcomes) {
                    if let Ok(outcome) = &outcome {
                        self.hint(hint, outcome);
                    }
                    let _ = answer.send(outcome.map_err(|e| Unstored::Failed(Arc::new(e))));
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for (answer, _) in answers {
                    let _ = answer.send(Err(Unstored::Failed(Arc::clone(&e))));
                }
            }
        }
    }

    /// Tells the dispatcher about a committed new event (one written, or the upload a part
    /// completed), whether or not its sender still waits for the answer.
    fn hint(&self, event: Option<Accepted>, outcome: &InboxOutcome) {
        match (event, outcome) {
            (Some(event), InboxOutcome::Event(true)) => self.accepted.send(event),
            (
                _,
                InboxOutcome::Part(PartOutcome::Stored {
                    completed: Some(event_id),
                    ..
                }),
            ) => self.accepted.notify_unknown(event_id.clone()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::RwLock;

    use axum::body::Body;
    use axum::extract::State;
    use axum::http::{HeaderMap, Method, StatusCode, Uri};
    use tokio::task::JoinSet;

    use super::*;
    use crate::health::Health;
    use crate::source::webhook::auth::WebhookAuth;
    use crate::source::webhook::{WebhookState, receive};
    use crate::state::testing::TestBackend;

    struct Intake {
        backend: TestBackend,
        db: StateDb,
        state: Arc<WebhookState>,
        committer: Option<Committer>,
        hints: mpsc::Receiver<Accepted>,
    }

    /// A webhook endpoint without credentials on `backend`'s state, whose committer waits for
    /// [`Intake::start`].
    fn intake(backend: TestBackend) -> Intake {
        let db = backend.state();
        let config = crate::Config::parse("[webhook]\n", std::path::Path::new("/c.toml"))
            .expect("valid config");
        let auth = WebhookAuth::from_config(&config).expect("no credentials");
        let (accepted, hints) = AcceptedTx::channel();
        let (inbox, committer) = queue(db.clone(), accepted);
        let state = Arc::new(WebhookState {
            path: "/flatfile/webhook".to_owned(),
            auth: Arc::new(RwLock::new(Arc::new(auth))),
            max_body_bytes: 1 << 20,
            body_timeout: Duration::from_secs(30),
            health: Arc::new(Health::default()),
            inbox,
        });
        Intake {
            backend,
            db,
            state,
            committer: Some(committer),
            hints,
        }
    }

    /// A webhook's answer: status, `Retry-After`, body.
    type Reply = (StatusCode, Option<String>, serde_json::Value);

    impl Intake {
        /// Posts a Platform event with this id, as a sender would.
        fn post(&self, event_id: &str) -> impl Future<Output = Reply> + Send + use<> {
            let state = Arc::clone(&self.state);
            let body = serde_json::json!({ "id": event_id, "topic": "job:ready" }).to_string();
            async move {
                let response = receive(
                    State(state),
                    Method::POST,
                    Uri::from_static("/flatfile/webhook"),
                    HeaderMap::new(),
                    Body::from(body),
                )
                .await;
                let status = response.status();
                let retry_after = response
                    .headers()
                    .get(axum::http::header::RETRY_AFTER)
                    .map(|v| v.to_str().expect("ASCII").to_owned());
                let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
                    .await
                    .expect("body");
                (
                    status,
                    retry_after,
                    serde_json::from_slice(&bytes).expect("JSON"),
                )
            }
        }

        /// Waits until `n` writes wait in the queue.
        async fn queued(&self, n: usize) {
            while self.state.inbox.queued() < n {
                tokio::task::yield_now().await;
            }
        }

        fn start(&mut self) {
            tokio::spawn(self.committer.take().expect("not started").run());
        }

        fn commits(&self) -> u64 {
            self.state.inbox.commits()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_webhooks_are_each_stored_once_in_shared_commits() {
        for backend in TestBackend::both("webhook_concurrent_webhooks_are") {
            const POSTS: usize = 200;
            const SENDERS: usize = 32;
            let mut intake = intake(backend);
            let mut senders = JoinSet::new();
            for sender in 0..SENDERS {
                let posts: Vec<_> = (sender..POSTS)
                    .step_by(SENDERS)
                    .map(|n| (n, intake.post(&format!("us_evt_{n}"))))
                    .collect();
                senders.spawn(async move {
                    let mut replies = Vec::new();
                    for (n, post) in posts {
                        replies.push((n, post.await));
                    }
                    replies
                });
            }
            // Every sender's first post waits in the queue before anything is committed.
            intake.queued(SENDERS).await;
            assert_eq!(intake.commits(), 0);
            intake.start();
            let mut answered = Vec::new();
            while let Some(replies) = senders.join_next().await {
                answered.extend(replies.expect("sender"));
            }
            answered.sort_by_key(|(n, _)| *n);
            assert_eq!(answered.len(), POSTS);
            for (n, (status, _, body)) in &answered {
                assert_eq!(*status, StatusCode::OK, "{body}");
                assert_eq!(body["status"], "accepted", "{body}");
                assert_eq!(body["eventId"], format!("us_evt_{n}"), "{body}");
            }
            let mut pending = intake.db.pending_events().await.expect("read");
            pending.sort();
            let mut expected: Vec<_> = (0..POSTS).map(|n| format!("us_evt_{n}")).collect();
            expected.sort();
            assert_eq!(
                pending, expected,
                "{:?}: each event in the inbox exactly once",
                intake.backend
            );
            // The first 32 went in one transaction, so at most one commit per later post.
            let commits = intake.commits();
            assert!(
                commits <= (POSTS - SENDERS + 1) as u64,
                "{commits} commits for {POSTS} posts"
            );
            println!("{POSTS} posts from {SENDERS} senders took {commits} commits");
        }
    }

    #[tokio::test]
    async fn posts_waiting_together_take_one_commit() {
        for backend in TestBackend::both("webhook_posts_waiting_together") {
            let mut intake = intake(backend);
            let posts: Vec<_> = (0..200)
                .map(|n| tokio::spawn(intake.post(&format!("us_evt_{n}"))))
                .collect();
            intake.queued(200).await;
            intake.start();
            for post in posts {
                let (status, _, body) = post.await.expect("post");
                assert_eq!(
                    (status, body["status"].as_str()),
                    (StatusCode::OK, Some("accepted"))
                );
            }
            assert_eq!(intake.commits(), 1, "{:?}", intake.backend);
            assert_eq!(
                intake.db.pending_events().await.expect("read").len(),
                200,
                "{:?}",
                intake.backend
            );
        }
    }

    #[tokio::test]
    async fn a_repeat_inside_one_group_is_answered_as_a_duplicate() {
        for backend in TestBackend::both("webhook_a_repeat_inside") {
            let mut intake = intake(backend);
            let mut posts = Vec::new();
            for (n, event_id) in ["us_evt_a", "us_evt_a", "us_evt_b"].into_iter().enumerate() {
                posts.push(tokio::spawn(intake.post(event_id)));
                // Queued in this order, so the first of the two is the one stored.
                intake.queued(n + 1).await;
            }
            intake.start();
            let mut replies = Vec::new();
            for post in posts {
                let (status, _, body) = post.await.expect("post");
                assert_eq!(status, StatusCode::OK, "{body}");
                replies.push((body["eventId"].clone(), body["status"].clone()));
            }
            assert_eq!(
                replies,
                [
                    ("us_evt_a", "accepted"),
                    ("us_evt_a", "duplicate"),
                    ("us_evt_b", "accepted")
                ]
                .map(|(id, status)| (id.into(), status.into()))
            );
            assert_eq!(intake.commits(), 1, "{:?}", intake.backend);
            assert_eq!(
                intake.db.pending_events().await.expect("read"),
                ["us_evt_a", "us_evt_b"]
            );
        }
    }

    #[tokio::test]
    async fn a_failed_commit_answers_every_waiter_503_and_stores_none_of_them() {
        for backend in TestBackend::both("webhook_a_failed_commit") {
            let mut intake = intake(backend);
            intake.db.fail_commits_on_any_backend_for_tests().await;
            let posts: Vec<_> = (0..5)
                .map(|n| tokio::spawn(intake.post(&format!("us_evt_{n}"))))
                .collect();
            intake.queued(5).await;
            intake.start();
            for post in posts {
                let (status, retry_after, body) = post.await.expect("post");
                assert_eq!(
                    status,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "{:?}: {body}",
                    intake.backend
                );
                assert!(retry_after.is_some_and(|s| s.parse::<u64>().is_ok_and(|s| s > 0)));
                assert_eq!(body["error"], "could not store the event; retry later");
            }
            assert_eq!(intake.commits(), 1, "{:?}", intake.backend);
            for n in 0..5 {
                let id = format!("us_evt_{n}");
                assert!(intake.db.event(&id).await.expect("read").is_none(), "{id}");
            }
        }
    }

    #[tokio::test]
    async fn a_refused_write_is_answered_503_and_the_rest_of_its_group_200() {
        for backend in TestBackend::both("webhook_a_refused_write") {
            let mut intake = intake(backend);
            intake
                .db
                .refuse_event_on_any_backend_for_tests("us_evt_bad")
                .await;
            let mut posts = Vec::new();
            for (n, event_id) in ["us_evt_1", "us_evt_bad", "us_evt_2"]
                .into_iter()
                .enumerate()
            {
                posts.push(tokio::spawn(intake.post(event_id)));
                intake.queued(n + 1).await;
            }
            intake.start();
            let statuses: Vec<_> = futures_util::future::join_all(posts)
                .await
                .into_iter()
                .map(|reply| reply.expect("post").0)
                .collect();
            assert_eq!(
                statuses,
                [
                    StatusCode::OK,
                    StatusCode::SERVICE_UNAVAILABLE,
                    StatusCode::OK
                ],
                "{:?}",
                intake.backend
            );
            assert_eq!(intake.commits(), 1, "{:?}", intake.backend);
            assert_eq!(
                intake.db.pending_events().await.expect("read"),
                ["us_evt_1", "us_evt_2"]
            );
        }
    }

    #[tokio::test]
    async fn a_write_whose_sender_left_before_its_turn_is_not_stored() {
        for backend in TestBackend::both("webhook_a_write_whose") {
            let mut intake = intake(backend);
            let left = tokio::spawn(intake.post("us_evt_left"));
            intake.queued(1).await;
            left.abort();
            assert!(left.await.expect_err("aborted").is_cancelled());
            let stays = tokio::spawn(intake.post("us_evt_stays"));
            intake.queued(2).await;
            intake.start();
            assert_eq!(stays.await.expect("post").0, StatusCode::OK);
            assert_eq!(
                intake.db.pending_events().await.expect("read"),
                ["us_evt_stays"]
            );
        }
    }

    #[tokio::test]
    async fn the_dispatcher_hears_of_new_events_only() {
        for backend in TestBackend::both("webhook_the_dispatcher_hears") {
            let mut intake = intake(backend);
            for (n, event_id) in ["us_evt_a", "us_evt_a", "us_evt_b"].into_iter().enumerate() {
                drop(tokio::spawn(intake.post(event_id)));
                intake.queued(n + 1).await;
            }
            intake.start();
            let hints = &mut intake.hints;
            // job:ready: the per-event engine's, whatever `[events] streams` says.
            let hint = |event_id: &str| Accepted {
                event_id: event_id.to_owned(),
                per_event: true,
            };
            assert_eq!(hints.recv().await, Some(hint("us_evt_a")));
            assert_eq!(hints.recv().await, Some(hint("us_evt_b")));
            assert!(hints.try_recv().is_err(), "no hint for the repeat");
        }
    }
}

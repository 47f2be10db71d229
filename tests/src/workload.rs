//! A write workload through the API that remembers what it was told: every acknowledged change
//! as `(article id, version)`, which is exactly the set of events the topic must hold once each.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;

use crate::api_client::ApiClient;

/// What a workload did.
#[derive(Debug, Default, Clone)]
pub struct WorkloadReport {
    /// Changes the API acknowledged (2xx).
    pub acknowledged: usize,
    /// Requests that failed (non-2xx, or no answer).
    pub errors: usize,
    /// The first few error messages.
    pub error_samples: Vec<String>,
    /// When each error happened.
    pub error_times: Vec<std::time::Instant>,
    /// `(article id, version)` of every acknowledged change.
    pub expected: BTreeSet<(i64, i64)>,
}

impl WorkloadReport {
    fn merge(&mut self, other: WorkloadReport) {
        self.acknowledged += other.acknowledged;
        self.errors += other.errors;
        self.error_samples.extend(other.error_samples);
        self.error_samples.truncate(10);
        self.error_times.extend(other.error_times);
        self.expected.extend(other.expected);
    }

    fn record_error(&mut self, error: anyhow::Error) {
        self.errors += 1;
        self.error_times.push(std::time::Instant::now());
        if self.error_samples.len() < 10 {
            self.error_samples.push(format!("{error:#}"));
        }
    }
}

/// How long each worker of a workload keeps writing.
#[derive(Debug, Clone)]
enum Length {
    /// This many changes.
    Changes(usize),
    /// Until the flag is raised (see [`Unbounded`]).
    UntilStopped(Arc<AtomicBool>),
}

impl Length {
    fn goes_on_after(&self, changes_done: usize) -> bool {
        match self {
            Length::Changes(changes) => changes_done < *changes,
            Length::UntilStopped(stop) => !stop.load(Ordering::Relaxed),
        }
    }
}

/// `workers` clients, each performing `changes_per_worker` changes with `pause` between them:
/// creates, updates, publishes and deletes of its own articles.
pub async fn run(api: &ApiClient, workers: u64, changes_per_worker: usize, pause: Duration) -> WorkloadReport {
    run_for(api, workers, Length::Changes(changes_per_worker), pause).await
}

/// A workload that writes until [`Unbounded::finish`]: for tests whose faults must all land while
/// changes still flow, however slowly the machine runs them.
#[derive(Debug)]
pub struct Unbounded {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<WorkloadReport>,
}

impl Unbounded {
    /// Starts `workers` clients writing with `pause` between changes.
    pub fn start(api: &ApiClient, workers: u64, pause: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let length = Length::UntilStopped(Arc::clone(&stop));
        let api = api.clone();
        let task = tokio::spawn(async move { run_for(&api, workers, length, pause).await });
        Self { stop, task }
    }

    /// Stops the writers after their change in hand and reports what they did.
    pub async fn finish(self) -> anyhow::Result<WorkloadReport> {
        self.stop.store(true, Ordering::Relaxed);
        Ok(self.task.await?)
    }
}

async fn run_for(api: &ApiClient, workers: u64, length: Length, pause: Duration) -> WorkloadReport {
    let tasks: Vec<_> = (0..workers)
        .map(|worker| {
            let api = api.clone();
            let length = length.clone();
            tokio::spawn(async move { run_worker(&api, worker, &length, pause).await })
        })
        .collect();
    let mut report = WorkloadReport::default();
    for task in tasks {
        match task.await {
            Ok(worker_report) => report.merge(worker_report),
            Err(error) => report.record_error(error.into()),
        }
    }
    report
}

/// One live article of a worker and its last acknowledged version.
struct Live {
    id: i64,
    version: i64,
    published: bool,
}

async fn run_worker(api: &ApiClient, worker: u64, length: &Length, pause: Duration) -> WorkloadReport {
    let mut report = WorkloadReport::default();
    let mut rng = fastrand::Rng::with_seed(worker);
    let mut live: Vec<Live> = Vec::new();
    let mut change = 0;
    while length.goes_on_after(change) {
        let roll = rng.u8(..100);
        let result = if live.len() < 3 || roll < 30 {
            let body = json!({"title": format!("w{worker} #{change}"), "content": "chaos", "author": format!("worker-{worker}")});
            api.create(&body).await.map(|article| {
                live.push(Live { id: article.id, version: article.version, published: false });
                (article.id, article.version)
            })
        } else {
            let index = rng.usize(..live.len());
            let target = &mut live[index];
            match roll {
                30..=69 => api
                    .patch(target.id, &json!({"content": format!("change {change}")}))
                    .await
                    .map(|article| (article.id, article.version)),
                70..=84 if !target.published => api.publish(target.id).await.map(|article| {
                    target.published = true;
                    (article.id, article.version)
                }),
                _ => {
                    let (id, version) = (target.id, target.version + 1);
                    api.delete(id).await.map(|()| {
                        live.swap_remove(index);
                        (id, version)
                    })
                }
            }
        };
        match result {
            Ok((id, version)) => {
                report.acknowledged += 1;
                report.expected.insert((id, version));
                if let Some(article) = live.iter_mut().find(|article| article.id == id) {
                    article.version = version;
                }
            }
            Err(error) => report.record_error(error),
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        change += 1;
    }
    report
}

//! Fail points: named places in the relay's windows where a test makes the process crash or stop,
//! to prove that each window is reached and survived (docs/guarantees.md, "Fault injection").
//!
//! Compiled only with the `failpoints` feature, which nothing but `scripts/test.sh` enables, into
//! a binary of its own (`outbox-relay-failpoints`): the relay that `scripts/stack.sh`, the bench
//! and a release build run has none (each [`hit`] is an empty inline function there). The test
//! names one in `RELAY_FAILPOINT=<name>:<action>[:<nth hit>]`; `action` is `crash` (abort, like
//! SIGKILL: no clean-up runs) or `stop` (SIGSTOP to itself, until the test sends SIGCONT). A fail
//! point fires once, and says so on stderr first (`failpoint <name> fired`), so the test can show
//! that its window was hit.

/// Between the lease check and handing a record to the producer.
pub(crate) const BEFORE_SEND: &str = "before-send";
/// After a batch was handed to the producer, before its acknowledgements are awaited.
pub(crate) const AFTER_SEND: &str = "after-send";
/// After the batch's transaction committed, before its rows are settled.
pub(crate) const AFTER_COMMIT: &str = "after-commit";
/// After the read-back read the log, before its findings are settled.
pub(crate) const IN_READ_BACK: &str = "in-read-back";

#[cfg(feature = "failpoints")]
mod armed {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// The armed fail point: its name, action and the hit it fires on.
    struct Armed {
        name: String,
        action: String,
        nth: u64,
        hits: AtomicU64,
    }

    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();

    fn parse(spec: &str) -> Option<Armed> {
        let mut parts = spec.split(':');
        let name = parts.next()?.to_owned();
        let action = parts.next()?.to_owned();
        let nth = parts.next().map_or(Some(1), |nth| nth.parse().ok())?;
        Some(Armed { name, action, nth, hits: AtomicU64::new(0) })
    }

    pub(crate) fn hit(name: &str) {
        let armed = ARMED.get_or_init(|| std::env::var("RELAY_FAILPOINT").ok().as_deref().and_then(parse));
        let Some(point) = armed.as_ref().filter(|point| point.name == name) else {
            return;
        };
        if point.hits.fetch_add(1, Ordering::Relaxed) + 1 != point.nth {
            return;
        }
        let action = point.action.as_str();
        eprintln!("failpoint {name} fired: {action}");
        tracing::error!(failpoint = name, action, "failpoint fired");
        match action {
            "crash" => std::process::abort(),
            "stop" => {
                let _ = std::process::Command::new("kill").args(["-STOP", &std::process::id().to_string()]).status();
                eprintln!("failpoint {name}: resumed");
            }
            other => eprintln!("failpoint {name}: unknown action {other}"),
        }
    }
}

/// Fires the fail point `name` if the test armed it.
#[cfg(feature = "failpoints")]
pub(crate) fn hit(name: &str) {
    armed::hit(name);
}

/// Fail points are compiled out of every build but the tests'.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) fn hit(_name: &str) {}

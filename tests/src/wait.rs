//! Waiting for something the cluster does in its own time: [`wait_until`].
//!
//! Why polling: nothing a test starts here finishes when the call that started
//! it returns. The fake API server acknowledges a write before any controller
//! has seen it; watch events reach the operator late (on purpose, with a watch
//! delay); the simulated deployment controller and kubelet act on their own
//! resync and probe periods; pods are real processes that start, become ready
//! and exit when they do. So a test states the condition it expects and looks
//! again until it holds, as a client of a real cluster would (`kubectl wait`).
//!
//! Timeouts are generous ceilings, not timed assertions: they only turn a hang
//! into a failure that says what never happened, and are set far above the
//! usual time so a loaded two-core CI machine passes. A test that asserts how
//! fast something happens measures the time itself and asserts on that.
//!
//! ```text
//! use macp_auth_e2e::wait::wait_until;
//! use std::ops::ControlFlow::{Break, Continue};
//!
//! // A condition: returns once it holds.
//! wait_until("the Deployment", TIMEOUT, POLL, async || h.deployment("h").is_some()).await;
//! // A value: returns what `Some` carries.
//! let pod = wait_until("a pod", TIMEOUT, POLL, async || cluster.pods().pop()).await;
//! // A value and, while waiting, what was seen instead (in the timeout message).
//! let status = wait_until("Ready", TIMEOUT, POLL, async || {
//!     let s = env.status(name).await;
//!     if ready(&s) { Break(s) } else { Continue(s) }
//! })
//! .await;
//! ```

use std::fmt::{self, Debug, Display};
use std::future::Future;
use std::ops::ControlFlow;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// Runs `check` until it reports done and returns the value it was done with;
/// between two checks, [`Pause::pause`] (a [`Duration`]: sleeps that long).
///
/// `what` names what is awaited ("the Deployment", `format!("kubectl to print
/// {needle:?}")`; not `format_args!`, which would make the wait not `Send`).
/// `check` is an async closure (`async || ...`; a synchronous condition is
/// written the same way) that may borrow and change what it captures. What it
/// returns is an [`Outcome`]: `bool`, `Option<T>`, `ControlFlow<T, Seen>`
/// (`Continue` carries what the check saw, for the timeout message), or a
/// `Result` of one of these (an error is a look that failed, and is retried).
///
/// # Panics
/// When `check` is still not done after `timeout` (the module documentation
/// says why that is a ceiling, not an assertion), with [`TimedOut`]'s message:
/// what was awaited, how long, how often it was checked, and what the last
/// check saw.
pub async fn wait_until<O: Outcome>(
    what: impl Display,
    timeout: Duration,
    every: impl Pause,
    check: impl AsyncFnMut() -> O,
) -> O::Value {
    match try_wait_until(what, timeout, every, check).await {
        Ok(value) => value,
        Err(timed_out) => panic!("{timed_out}"),
    }
}

/// [`wait_until`] for callers that handle the timeout themselves: the same
/// loop, with the timeout as an error instead of a panic.
pub async fn try_wait_until<O: Outcome>(
    what: impl Display,
    timeout: Duration,
    mut every: impl Pause,
    mut check: impl AsyncFnMut() -> O,
) -> Result<O::Value, TimedOut> {
    let start = Instant::now();
    let mut checks = 0;
    loop {
        checks += 1;
        let seen = match check().await.into_flow() {
            ControlFlow::Break(value) => return Ok(value),
            ControlFlow::Continue(seen) => seen,
        };
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(TimedOut {
                what: what.to_string(),
                waited,
                timeout,
                checks,
                every: format!("{every:?}"),
                last: O::describe(&seen),
            });
        }
        every.pause().await;
    }
}

/// A [`wait_until`] that ran out of time.
#[derive(Debug, Clone)]
pub struct TimedOut {
    /// What was awaited, as the caller described it.
    pub what: String,
    /// How long it was awaited (at least `timeout`; more when a check is slow).
    pub waited: Duration,
    pub timeout: Duration,
    /// How many times it was checked.
    pub checks: u64,
    /// The pause between checks, as text.
    pub every: String,
    /// What the last check saw, when its outcome says (pretty `Debug`).
    pub last: Option<String>,
}

impl Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "timed out waiting for {}: not done after {:.1?} (timeout {:?}, {} checks, every {})",
            self.what, self.waited, self.timeout, self.checks, self.every
        )?;
        match &self.last {
            // Several lines (pretty `Debug`, log lines) start on a line of their own.
            Some(last) if last.contains('\n') => write!(f, "; last observed:\n{last}"),
            Some(last) => write!(f, "; last observed: {last}"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for TimedOut {}

/// What one check of a [`wait_until`] found: done, with the value the wait
/// returns, or not yet, with what it saw instead.
pub trait Outcome {
    /// What [`wait_until`] returns once the check is done.
    type Value;
    /// What a check that is not done saw.
    type Seen;
    fn into_flow(self) -> ControlFlow<Self::Value, Self::Seen>;
    /// `seen` for the timeout message; `None` when there is nothing to say.
    fn describe(seen: &Self::Seen) -> Option<String>;
}

/// A condition: done when true.
impl Outcome for bool {
    type Value = ();
    type Seen = ();
    fn into_flow(self) -> ControlFlow<(), ()> {
        if self {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
    fn describe(_: &()) -> Option<String> {
        None
    }
}

/// Done with the value, once there is one.
impl<T> Outcome for Option<T> {
    type Value = T;
    type Seen = ();
    fn into_flow(self) -> ControlFlow<T, ()> {
        match self {
            Some(value) => ControlFlow::Break(value),
            None => ControlFlow::Continue(()),
        }
    }
    fn describe(_: &()) -> Option<String> {
        None
    }
}

/// `Break(value)`: done; `Continue(seen)`: not yet, and the last `seen` is
/// printed on timeout.
impl<T, S: Debug> Outcome for ControlFlow<T, S> {
    type Value = T;
    type Seen = S;
    fn into_flow(self) -> Self {
        self
    }
    fn describe(seen: &S) -> Option<String> {
        Some(format!("{seen:#?}"))
    }
}

/// `Continue(Displayed(seen))` prints `seen` with `Display` in the timeout
/// message, where `Debug` would quote and escape it: JSON (pretty, through the
/// alternate flag), log lines.
pub struct Displayed<T>(pub T);

impl<T: Display> Debug for Displayed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Display::fmt(&self.0, f)
    }
}

/// A check that can fail (say, a request to the API server): an error is not
/// done yet, and is retried like any other; the last one is printed on timeout.
impl<O: Outcome, E: Debug> Outcome for Result<O, E> {
    type Value = O::Value;
    type Seen = Result<O::Seen, E>;
    fn into_flow(self) -> ControlFlow<O::Value, Self::Seen> {
        match self {
            Ok(outcome) => match outcome.into_flow() {
                ControlFlow::Break(value) => ControlFlow::Break(value),
                ControlFlow::Continue(seen) => ControlFlow::Continue(Ok(seen)),
            },
            Err(e) => ControlFlow::Continue(Err(e)),
        }
    }
    fn describe(seen: &Self::Seen) -> Option<String> {
        match seen {
            Ok(seen) => O::describe(seen),
            Err(e) => Some(format!("error {e:#?}")),
        }
    }
}

/// How [`wait_until`] waits between two checks (its `Debug` is printed on timeout).
pub trait Pause: Debug {
    fn pause(&mut self) -> impl Future<Output = ()> + Send;
}

/// Polling: sleeps this long.
impl Pause for Duration {
    fn pause(&mut self) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(*self)
    }
}

/// Until the next change of the fake API server's store
/// ([`ApiHandle::changes`](crate::apiserver::ApiHandle::changes)), but no
/// longer than `at_most`: a check of the store that reacts at once, and still
/// looks again while the store is quiet (a process that exits changes no object).
pub struct OnChange {
    pub changes: watch::Receiver<u64>,
    pub at_most: Duration,
}

impl Debug for OnChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "store change or {:?}", self.at_most)
    }
}

impl Pause for OnChange {
    fn pause(&mut self) -> impl Future<Output = ()> + Send {
        let at_most = self.at_most;
        let changed = self.changes.changed();
        async move {
            let _ = tokio::time::timeout(at_most, changed).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ops::ControlFlow::{Break, Continue};

    const SHORT: Duration = Duration::from_millis(200);
    const POLL: Duration = Duration::from_millis(5);

    #[tokio::test]
    async fn returns_what_the_check_was_done_with() {
        let mut n = 0;
        let got = wait_until("the third look", SHORT * 10, POLL, async || {
            n += 1;
            (n == 3).then_some(n * 10)
        })
        .await;
        assert_eq!((got, n), (30, 3));
        let mut left = 2;
        wait_until("a condition", SHORT * 10, POLL, async || {
            left -= 1;
            left == 0
        })
        .await;
    }

    #[tokio::test]
    async fn a_timeout_says_what_how_long_and_what_was_seen_last() {
        let mut n = 0;
        let e = try_wait_until("the answer", SHORT, POLL, async || {
            n += 1;
            ControlFlow::<(), _>::Continue(format!("look {n}"))
        })
        .await
        .unwrap_err();
        assert!(e.waited >= SHORT, "{e:?}");
        assert_eq!(e.checks, n);
        let message = e.to_string();
        assert!(
            message.starts_with("timed out waiting for the answer: not done after "),
            "{message}"
        );
        assert!(message.contains("(timeout 200ms, "), "{message}");
        assert!(message.contains("every 5ms"), "{message}");
        assert!(
            message.ends_with(&format!("last observed: \"look {n}\"")),
            "{message}"
        );

        let e = try_wait_until("never", SHORT, POLL, async || false)
            .await
            .unwrap_err();
        assert_eq!(e.last, None);
        assert!(!e.to_string().contains("last observed"), "{e}");
    }

    #[tokio::test]
    #[should_panic(expected = "timed out waiting for a panic: not done after")]
    async fn wait_until_panics_with_the_message() {
        wait_until("a panic", SHORT, POLL, async || None::<()>).await;
    }

    #[tokio::test]
    async fn errors_are_retried_and_the_last_one_is_reported() {
        let mut n = 0;
        let got = wait_until("an answer after two errors", SHORT * 10, POLL, async || {
            n += 1;
            if n < 3 { Err("busy") } else { Ok(Some(n)) }
        })
        .await;
        assert_eq!(got, 3);
        let e = try_wait_until("an answer", SHORT, POLL, async || {
            Err::<ControlFlow<(), u8>, _>("refused")
        })
        .await
        .unwrap_err();
        assert_eq!(e.last.as_deref(), Some("error \"refused\""));
        let e = try_wait_until("an answer", SHORT, POLL, async || {
            Ok::<_, &str>(if n > 0 { Continue(7u8) } else { Break(()) })
        })
        .await
        .unwrap_err();
        assert_eq!(e.last.as_deref(), Some("7"));
    }

    #[tokio::test]
    async fn displayed_prints_json_and_lines_as_they_are() {
        let e = try_wait_until("a status", SHORT, POLL, async || {
            Continue::<(), _>(Displayed(serde_json::json!({"ready": 1})))
        })
        .await
        .unwrap_err();
        assert_eq!(e.last.as_deref(), Some("{\n  \"ready\": 1\n}"));
        let e = try_wait_until("a line", SHORT, POLL, async || {
            Continue::<(), _>(Displayed("one\ntwo"))
        })
        .await
        .unwrap_err();
        assert_eq!(e.last.as_deref(), Some("one\ntwo"));
        assert!(e.to_string().ends_with("; last observed:\none\ntwo"), "{e}");
    }

    #[tokio::test]
    async fn on_change_wakes_at_a_change_and_looks_again_after_at_most() {
        let (tx, rx) = watch::channel(0u64);
        let mut pause = OnChange {
            changes: rx,
            at_most: Duration::from_secs(60),
        };
        let start = Instant::now();
        let changer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            tx.send_replace(1);
            tx
        });
        pause.pause().await;
        assert!(start.elapsed() < Duration::from_secs(30));
        let _tx = changer.await.unwrap();
        pause.at_most = Duration::from_millis(20);
        let start = Instant::now();
        pause.pause().await;
        assert!(start.elapsed() >= Duration::from_millis(20));
        assert_eq!(format!("{pause:?}"), "store change or 20ms");
    }
}

//! A mesh node that netsim runs beside the yard's own (the corrupt peer, the attackers): on a
//! thread of its own with a single-threaded runtime, so that it takes at most one core from the
//! honest nodes, until its handle is dropped.

use std::future::Future;
use std::time::Duration;

use anyhow::Context as _;

/// How long an actor may take to get to work (its first connection to the depot).
const START_WAIT: Duration = Duration::from_secs(30);

/// An actor's thread, stopped and joined when dropped.
#[derive(Debug)]
pub(crate) struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Runs `work` on a thread of its own until the returned handle is dropped. `work` is given
    /// a [`Started`] to call once it is at work (connected to the depot); this returns then, or
    /// with `work`'s error if it ended before.
    pub(crate) fn start<F, Fut>(name: &str, work: F) -> anyhow::Result<Self>
    where
        F: FnOnce(Started) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready, started) = std::sync::mpsc::channel();
        let thread_name = name.to_owned();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = ready.send(Err(anyhow::anyhow!("runtime: {error}")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let errors = ready.clone();
                    tokio::select! {
                        ended = work(Started(ready)) => {
                            if let Err(error) = ended {
                                tracing::warn!(actor = thread_name, "stopped: {error:#}");
                                let _ = errors.send(Err(error));
                            }
                        }
                        _ = stopped => {}
                    }
                });
            })
            .with_context(|| format!("starting the {name}'s thread"))?;
        let running = Self {
            stop: Some(stop),
            thread: Some(thread),
        };
        match started.recv_timeout(START_WAIT) {
            Ok(Ok(())) => Ok(running),
            Ok(Err(error)) => Err(error.context(format!("starting the {name}"))),
            Err(_) => anyhow::bail!("the {name} did not reach the depot in {START_WAIT:?}"),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Handed to an actor's work: says, once, that it is at work.
pub(crate) struct Started(std::sync::mpsc::Sender<anyhow::Result<()>>);

impl Started {
    /// The actor is at work: [`Running::start`] returns.
    pub(crate) fn now(&self) {
        let _ = self.0.send(Ok(()));
    }
}

//! The per-core runtimes (`runtime = "per-core"`): one thread per worker, each running a
//! current-thread tokio runtime; client sessions are handed to them in turn and run on that one
//! thread for their whole life, so the hot path has no work-stealing and no cross-thread wake-ups.

use std::cell::Cell;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::runtime::Handle;

thread_local! {
    /// The per-core worker this thread runs (1-based), or 0 on any other thread.
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// Which per-core worker the calling thread is (1-based), or 0 when it is none (the shared
/// runtime, the thread that accepts, a blocking-pool thread). A server records it when its
/// socket is registered, so a session on another worker knows to move the registration.
#[inline]
pub(crate) fn current() -> usize {
    INDEX.with(Cell::get)
}

/// How long a stopping worker waits for its blocking tasks before leaving them.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// The handles of the per-core runtimes, shared by the accept loops that hand them sessions.
#[derive(Debug)]
pub(crate) struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
}

impl Workers {
    /// Spawns `future` (a client's session) on the next worker in turn.
    pub(crate) fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        // A stopped runtime drops the task at once: nothing runs after the pooler stopped.
        drop(self.handles[i].spawn(future));
    }
}

/// Owns the worker threads: dropping it (or [`WorkerThreads::stop`]) ends their runtimes,
/// and with them every task left on them.
#[derive(Debug)]
pub(crate) struct WorkerThreads {
    workers: Arc<Workers>,
    threads: Vec<(tokio::sync::oneshot::Sender<()>, std::thread::JoinHandle<()>)>,
}

impl WorkerThreads {
    /// Starts `n` (at least 1) worker threads, each with its own current-thread runtime.
    pub(crate) fn start(n: usize) -> std::io::Result<WorkerThreads> {
        let mut handles = Vec::with_capacity(n.max(1));
        let mut threads = Vec::with_capacity(n.max(1));
        for i in 1..=n.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("sluice-worker-{i}"))
                .spawn(move || {
                    INDEX.with(|c| c.set(i));
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                    runtime.shutdown_timeout(STOP_GRACE);
                })?;
            threads.push((stop, thread));
        }
        Ok(WorkerThreads {
            workers: Arc::new(Workers {
                handles,
                next: AtomicUsize::new(0),
            }),
            threads,
        })
    }

    /// The handles, for the accept loops.
    pub(crate) fn workers(&self) -> &Arc<Workers> {
        &self.workers
    }

    /// Ends the runtimes and waits for their threads (off the async threads).
    pub(crate) async fn stop(mut self) {
        let mut threads = Vec::with_capacity(self.threads.len());
        for (stop, thread) in self.threads.drain(..) {
            let _ = stop.send(());
            threads.push(thread);
        }
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}

impl Drop for WorkerThreads {
    /// Tells the threads to end (without waiting: this may run on an async thread).
    fn drop(&mut self) {
        for (stop, _) in self.threads.drain(..) {
            let _ = stop.send(());
        }
    }
}

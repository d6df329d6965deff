//! A task handle that aborts its task when dropped, so helper tasks (stream
//! readers) never outlive the task that owns them, even when that one is
//! aborted itself.

use tokio::task::JoinHandle;

/// Aborts the task on drop.
#[derive(Debug)]
pub struct AbortOnDrop<T>(pub JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

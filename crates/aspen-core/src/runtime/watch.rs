//! openraft's watch channel with a deterministic wake-up order.
//!
//! tokio's watch spreads waiting receivers over eight internal `Notify`s picked at random (to
//! cut contention), so the order in which one send wakes its receivers, and so the order in
//! which tasks then run, changes from run to run. This channel keeps tokio's watch for the
//! value, its versions and its closing, and wakes receivers through one `Notify` of its own,
//! in the order they started waiting. The semantics are tokio's; only the wake-up order is
//! now fixed, which a seeded simulation needs to replay.

use std::pin::pin;
use std::sync::Arc;

use openraft::rt::watch::{self, RecvError, SendError};
use openraft::rt::{OptionalSend, OptionalSync};
use tokio::sync::Notify;
use tokio::sync::watch as tokio_watch;

pub struct AspenWatch;

pub struct AspenWatchSender<T> {
    /// `None` only inside `drop`.
    inner: Option<tokio_watch::Sender<T>>,
    notify: Arc<Notify>,
}

pub struct AspenWatchReceiver<T> {
    inner: tokio_watch::Receiver<T>,
    notify: Arc<Notify>,
}

impl<T> AspenWatchSender<T> {
    fn sender(&self) -> &tokio_watch::Sender<T> {
        let Some(sender) = self.inner.as_ref() else {
            unreachable!("a sender holds its channel until dropped");
        };
        sender
    }
}

impl<T> Clone for AspenWatchSender<T> {
    fn clone(&self) -> Self {
        AspenWatchSender {
            inner: Some(self.sender().clone()),
            notify: self.notify.clone(),
        }
    }
}

impl<T> Drop for AspenWatchSender<T> {
    /// The last sender closes the channel: drop it first, then wake every receiver, so a
    /// woken receiver always finds the channel closed.
    fn drop(&mut self) {
        let Some(sender) = self.inner.take() else {
            return;
        };
        let last = sender.sender_count() == 1;
        drop(sender);
        if last {
            self.notify.notify_waiters();
        }
    }
}

impl<T> Clone for AspenWatchReceiver<T> {
    fn clone(&self) -> Self {
        AspenWatchReceiver {
            inner: self.inner.clone(),
            notify: self.notify.clone(),
        }
    }
}

impl watch::Watch for AspenWatch {
    type Sender<T: OptionalSend + OptionalSync> = AspenWatchSender<T>;
    type Receiver<T: OptionalSend + OptionalSync> = AspenWatchReceiver<T>;
    type Ref<'a, T: OptionalSend + 'a> = tokio_watch::Ref<'a, T>;

    fn channel<T: OptionalSend + OptionalSync>(init: T) -> (Self::Sender<T>, Self::Receiver<T>) {
        let (sender, receiver) = tokio_watch::channel(init);
        let notify = Arc::new(Notify::new());
        let sender = AspenWatchSender {
            inner: Some(sender),
            notify: notify.clone(),
        };
        let receiver = AspenWatchReceiver {
            inner: receiver,
            notify,
        };
        (sender, receiver)
    }
}

impl<T> watch::WatchSender<AspenWatch, T> for AspenWatchSender<T>
where
    T: OptionalSend + OptionalSync,
{
    fn send(&self, value: T) -> Result<(), SendError<T>> {
        self.sender().send(value).map_err(|e| SendError(e.0))?;
        self.notify.notify_waiters();
        Ok(())
    }

    fn send_if_modified<F>(&self, modify: F) -> bool
    where
        F: FnOnce(&mut T) -> bool,
    {
        let modified = self.sender().send_if_modified(modify);
        if modified {
            self.notify.notify_waiters();
        }
        modified
    }

    fn borrow_watched(&self) -> tokio_watch::Ref<'_, T> {
        self.sender().borrow()
    }

    fn subscribe(&self) -> AspenWatchReceiver<T> {
        AspenWatchReceiver {
            inner: self.sender().subscribe(),
            notify: self.notify.clone(),
        }
    }
}

impl<T> watch::WatchReceiver<AspenWatch, T> for AspenWatchReceiver<T>
where
    T: OptionalSend + OptionalSync,
{
    /// As tokio's `changed`: an unseen value returns at once (even once closed); otherwise
    /// waits for the next send, or fails when every sender is gone.
    async fn changed(&mut self) -> Result<(), RecvError> {
        loop {
            // Register before looking, so that a send between the look and the wait is not
            // missed.
            let mut notified = pin!(self.notify.notified());
            notified.as_mut().enable();
            if self.inner.borrow_and_update().has_changed() {
                return Ok(());
            }
            if self.inner.is_closed() {
                return Err(RecvError(()));
            }
            notified.await;
        }
    }

    fn borrow_watched(&self) -> tokio_watch::Ref<'_, T> {
        self.inner.borrow()
    }

    fn borrow_and_update(&mut self) -> tokio_watch::Ref<'_, T> {
        self.inner.borrow_and_update()
    }
}

#[cfg(test)]
mod tests {
    use openraft::rt::watch::{Watch, WatchReceiver, WatchSender};

    use super::*;

    #[tokio::test]
    async fn receivers_see_sends_and_closing() {
        let (tx, mut rx) = AspenWatch::channel(0u64);
        let mut second = tx.subscribe();
        let waiter = tokio::spawn(async move {
            second.changed().await.unwrap();
            *second.borrow_watched()
        });
        tokio::task::yield_now().await;
        tx.send(7).unwrap();
        assert_eq!(waiter.await.unwrap(), 7);
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow_watched(), 7);
        assert!(!tx.send_if_modified(|_| false));
        assert!(tx.send_if_modified(|v| {
            *v = 8;
            true
        }));
        let tx2 = tx.clone();
        drop(tx);
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow_watched(), 8);
        let closing = tokio::spawn(async move { rx.changed().await });
        tokio::task::yield_now().await;
        drop(tx2);
        assert_eq!(closing.await.unwrap(), Err(RecvError(())));
    }
}

//! Pause points for tests that must reach a race: code calls `hit(name, key)` where the other
//! side of a race can run; a test `arm`s the point for one key (a repository name or a digest,
//! so tests running in parallel do not meet each other's pauses), waits until the code
//! `reached` it, runs the other side, and `release`s it. Compiled out of release builds: there
//! `hit` is an empty inline function.

#[cfg(debug_assertions)]
mod imp {
    use std::sync::Mutex;

    use tokio::sync::oneshot;

    struct Armed {
        name: &'static str,
        key: String,
        reached: oneshot::Sender<()>,
        release: oneshot::Receiver<()>,
    }

    static ARMED: Mutex<Vec<Armed>> = Mutex::new(Vec::new());

    /// A pause armed by a test: the first `hit` of its point and key waits until `release`.
    pub struct Pause {
        reached: Option<oneshot::Receiver<()>>,
        release: Option<oneshot::Sender<()>>,
    }

    pub fn arm(name: &'static str, key: &str) -> Pause {
        let (reached_tx, reached_rx) = oneshot::channel();
        let (release_tx, release_rx) = oneshot::channel();
        ARMED.lock().unwrap().push(Armed {
            name,
            key: key.to_owned(),
            reached: reached_tx,
            release: release_rx,
        });
        Pause {
            reached: Some(reached_rx),
            release: Some(release_tx),
        }
    }

    impl Pause {
        /// Waits until the code is paused at the point.
        pub async fn reached(&mut self) {
            if let Some(r) = self.reached.take() {
                r.await.expect("the paused code went away");
            }
        }

        /// Lets the paused code go on.
        pub fn release(mut self) {
            if let Some(r) = self.release.take() {
                let _ = r.send(());
            }
        }
    }

    impl Drop for Pause {
        fn drop(&mut self) {
            if let Some(r) = self.release.take() {
                let _ = r.send(());
            }
        }
    }

    pub async fn hit(name: &'static str, key: &str) {
        let armed = {
            let mut all = ARMED.lock().unwrap();
            let i = all.iter().position(|a| a.name == name && a.key == key);
            i.map(|i| all.swap_remove(i))
        };
        if let Some(a) = armed {
            tracing::debug!(point = name, key, "paused at a fail point");
            let _ = a.reached.send(());
            let _ = a.release.await;
        }
    }
}

#[cfg(debug_assertions)]
pub use imp::{Pause, arm, hit};

#[cfg(not(debug_assertions))]
#[inline(always)]
pub async fn hit(_name: &'static str, _key: &str) {}

//! Hashing an upload's bytes as the storage driver pulls them. SHA-256 runs at about 1.6 GB/s
//! on one core, the largest cost of receiving a large body; past the first [`INLINE`] bytes it
//! moves to a thread of its own, so that it runs beside the receiving and the writing instead
//! of between them. The thread is at most [`DEPTH`] chunks behind: the body waits for it.

use std::io;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::oci::Sha256Hasher;

/// Bodies up to this size are hashed inline: below it, handing chunks to a thread (a wake-up
/// per chunk) gains less than it costs on a request that waits for every step.
const INLINE: u64 = 4 << 20;
/// Chunks the hashing thread may lag behind.
const DEPTH: usize = 16;

/// Where the hashing is: inline, or handed to a thread.
struct Tap {
    hasher: Option<Sha256Hasher>,
    seen: u64,
    pipe: Option<(mpsc::Sender<Bytes>, JoinHandle<Sha256Hasher>)>,
}

/// A running hash over a body's bytes.
pub(crate) struct Hashing(Arc<Mutex<Tap>>);

impl Hashing {
    pub fn new(hasher: Sha256Hasher) -> Self {
        Hashing(Arc::new(Mutex::new(Tap {
            hasher: Some(hasher),
            seen: 0,
            pipe: None,
        })))
    }

    /// `body`, hashing every chunk that passes.
    pub fn tap<'a, S>(&self, body: S) -> impl Stream<Item = io::Result<Bytes>> + Unpin + 'a
    where
        S: Stream<Item = io::Result<Bytes>> + Unpin + 'a,
    {
        let tap = self.0.clone();
        Box::pin(body.then(move |r| {
            let sender = match &r {
                Ok(b) => tap.lock().expect("hash tap").take(b),
                Err(_) => None,
            };
            async move {
                if let (Some(tx), Ok(b)) = (sender, &r) {
                    // The thread ends only when every sender is gone; a send cannot fail
                    // while this one lives, unless the thread panicked (then `finish` says so).
                    let _ = tx.send(b.clone()).await;
                }
                r
            }
        }))
    }

    /// The hash state after every byte that passed. Call once the tapped body is dropped.
    pub async fn finish(self) -> io::Result<Sha256Hasher> {
        let (hasher, pipe) = {
            let mut t = self.0.lock().expect("hash tap");
            (t.hasher.take(), t.pipe.take())
        };
        match (hasher, pipe) {
            (Some(h), None) => Ok(h),
            (None, Some((tx, thread))) => {
                drop(tx);
                thread.await.map_err(io::Error::other)
            }
            _ => Err(io::Error::other("hash state lost")),
        }
    }
}

impl Tap {
    /// Hashes `b` inline, or returns the sender that takes it to the thread (starting the
    /// thread once the body is past [`INLINE`]).
    fn take(&mut self, b: &Bytes) -> Option<mpsc::Sender<Bytes>> {
        self.seen += b.len() as u64;
        if self.pipe.is_none()
            && self.seen > INLINE
            && let Some(mut hasher) = self.hasher.take()
        {
            let (tx, mut rx) = mpsc::channel::<Bytes>(DEPTH);
            let thread = tokio::task::spawn_blocking(move || {
                while let Some(b) = rx.blocking_recv() {
                    hasher.update(&b);
                }
                hasher
            });
            self.pipe = Some((tx, thread));
        }
        match (&mut self.hasher, &self.pipe) {
            (_, Some((tx, _))) => Some(tx.clone()),
            (Some(h), None) => {
                h.update(b);
                None
            }
            (None, None) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Digest;

    /// Bodies below and far past the inline limit hash to their digest, in any chunking.
    #[tokio::test]
    async fn hashes_every_byte_in_order() {
        for (len, chunk) in [
            (0usize, 1usize),
            (1000, 7),
            (3 << 20, 65536),
            (5 << 20, 100_003),
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let chunks: Vec<io::Result<Bytes>> = data
                .chunks(chunk)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            let hashing = Hashing::new(Sha256Hasher::new());
            let mut body = hashing.tap(futures_util::stream::iter(chunks));
            let mut n = 0;
            while let Some(b) = body.next().await {
                n += b.unwrap().len();
            }
            drop(body);
            assert_eq!(n, len);
            let h = hashing.finish().await.unwrap();
            assert_eq!(h.digest(), Digest::of(&data), "{len} bytes in {chunk}");
        }
    }
}

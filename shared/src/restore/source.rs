//! Reading a stored artifact back as tar entries, in one streaming pass:
//! destination → (age) → gzip/zstd → tar. Nothing is held in memory beyond
//! a few chunks in flight.
//!
//! The destination is async (OpenDAL) and tar is blocking: a task on the
//! runtime pulls the object's bytes and hands them over a bounded channel to
//! a [`ChannelReader`] that the blocking side reads.

use std::io::{self, Read};
use std::sync::mpsc;

use bytes::Bytes;
use futures::StreamExt;

use crate::artifact::Compression;
use crate::destinations::Destination;

/// How many pieces may wait between the download and the reader. The
/// destination reads in chunks of its `chunk_bytes` (8 MiB by default);
/// they are handed over in pieces of [`PIECE`], so that what waits is
/// bounded by bytes, not by chunks: 8 waiting 8 MiB chunks were most of a
/// restore's peak RSS (measured, `bench-restore`).
const IN_FLIGHT: usize = 4;
/// The size of a handed-over piece (a zero-copy slice of its chunk).
const PIECE: usize = 1024 * 1024;

/// The blocking end of a download.
pub struct ChannelReader {
    receiver: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
    /// Bytes handed out so far.
    pub read: u64,
    /// The destination's error, once one came: the layers above (age,
    /// gzip, tar) report it as their own, but it says nothing about the
    /// artifact, and trying again may well work.
    failed: DownloadFailure,
}

/// Where a download's failure is kept for whoever reads the error.
#[derive(Clone, Default)]
pub struct DownloadFailure(std::sync::Arc<std::sync::Mutex<Option<String>>>);

impl DownloadFailure {
    /// The destination's error, if the download failed.
    pub fn get(&self) -> Option<String> {
        self.0.lock().expect("not poisoned").clone()
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.receiver.recv() {
                Ok(Ok(chunk)) => self.current = chunk,
                Ok(Err(e)) => {
                    *self.failed.0.lock().expect("not poisoned") = Some(e.to_string());
                    return Err(e);
                }
                // The download ended (it sends its error before it ends).
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        self.read += n as u64;
        Ok(n)
    }
}

/// Starts reading `key` (`size` bytes) from `destination`; the returned
/// reader gets its bytes, and the [`DownloadFailure`] says whether an error
/// was the destination's. Dropping the reader stops the download.
pub fn download(
    destination: Destination,
    key: String,
    size: u64,
) -> (tokio::task::JoinHandle<()>, ChannelReader, DownloadFailure) {
    let (sender, receiver) = mpsc::sync_channel::<io::Result<Bytes>>(IN_FLIGHT);
    let task = tokio::spawn(async move {
        let stream = match destination.reader(&key).await {
            Ok(reader) => reader
                .into_bytes_stream(0..size)
                .await
                .map_err(|e| io::Error::other(e.to_string())),
            Err(e) => Err(io::Error::other(e.to_string())),
        };
        let mut stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                let _ = blocking_send(&sender, Err(e)).await;
                return;
            }
        };
        while let Some(chunk) = stream.next().await {
            let mut chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    let _ = blocking_send(&sender, Err(io::Error::other(e.to_string()))).await;
                    return;
                }
            };
            while !chunk.is_empty() {
                let piece = chunk.split_to(PIECE.min(chunk.len()));
                if blocking_send(&sender, Ok(piece)).await.is_err() {
                    return;
                }
            }
        }
    });
    let failed = DownloadFailure::default();
    (
        task,
        ChannelReader {
            receiver,
            current: Bytes::new(),
            read: 0,
            failed: failed.clone(),
        },
        failed,
    )
}

/// `SyncSender::send` blocks while the reader is behind: do that off the
/// runtime's threads.
async fn blocking_send(
    sender: &mpsc::SyncSender<io::Result<Bytes>>,
    item: io::Result<Bytes>,
) -> Result<(), ()> {
    match sender.try_send(item) {
        Ok(()) => Ok(()),
        Err(mpsc::TrySendError::Disconnected(_)) => Err(()),
        Err(mpsc::TrySendError::Full(item)) => {
            let sender = sender.clone();
            tokio::task::spawn_blocking(move || sender.send(item).map_err(|_| ()))
                .await
                .map_err(|_| ())?
        }
    }
}

/// Why an artifact cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("Backup is encrypted and no decryption key is configured")]
    NoIdentity,
    #[error(
        "the configured decryption key does not open this backup (it was encrypted for other recipients)"
    )]
    WrongKey,
    #[error("the artifact is not a valid age file: {0}")]
    NotAge(String),
    #[error("cannot read the artifact: {0}")]
    Io(#[from] io::Error),
}

/// The decoded tar stream of an artifact read from `raw`.
pub fn open(
    raw: impl Read + Send + 'static,
    compression: Compression,
    encrypted: bool,
    identities: &[age::x25519::Identity],
) -> Result<Box<dyn Read + Send>, OpenError> {
    let compressed: Box<dyn Read + Send> = if encrypted {
        if identities.is_empty() {
            return Err(OpenError::NoIdentity);
        }
        let decryptor = age::Decryptor::new(raw).map_err(|e| match e {
            age::DecryptError::Io(e) => OpenError::Io(e),
            other => OpenError::NotAge(other.to_string()),
        })?;
        let stream = decryptor
            .decrypt(identities.iter().map(|i| i as &dyn age::Identity))
            .map_err(|e| match e {
                age::DecryptError::NoMatchingKeys => OpenError::WrongKey,
                age::DecryptError::Io(e) => OpenError::Io(e),
                other => OpenError::NotAge(other.to_string()),
            })?;
        Box::new(stream)
    } else {
        Box::new(raw)
    };
    Ok(match compression {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(compressed)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(compressed)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A destination error in the middle of a gzip stream comes out of the
    /// decoder as the decoder's error; the failure handle still says it was
    /// the download's.
    #[test]
    fn a_download_error_under_the_decoder_is_known_as_such() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let text: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        gz.write_all(&text).unwrap();
        let gz = gz.finish().unwrap();
        let (sender, receiver) = mpsc::sync_channel(4);
        let failed = DownloadFailure::default();
        let reader = ChannelReader {
            receiver,
            current: Bytes::new(),
            read: 0,
            failed: failed.clone(),
        };
        let half = gz.len() / 2;
        std::thread::spawn(move || {
            sender.send(Ok(Bytes::from(gz[..half].to_vec()))).unwrap();
            sender
                .send(Err(io::Error::other("connection reset by peer")))
                .unwrap();
        });
        let mut decoded = Vec::new();
        let error = flate2::read::MultiGzDecoder::new(reader)
            .read_to_end(&mut decoded)
            .unwrap_err();
        assert!(error.to_string().contains("connection reset"), "{error}");
        assert_eq!(failed.get().as_deref(), Some("connection reset by peer"));

        // A stream that is merely cut (a truncated artifact) is not the
        // destination's failure.
        let (sender, receiver) = mpsc::sync_channel(4);
        let clean = DownloadFailure::default();
        let reader = ChannelReader {
            receiver,
            current: Bytes::new(),
            read: 0,
            failed: clean.clone(),
        };
        sender
            .send(Ok(Bytes::from_static(b"\x1f\x8b\x08\x00")))
            .unwrap();
        drop(sender);
        assert!(
            flate2::read::MultiGzDecoder::new(reader)
                .read_to_end(&mut Vec::new())
                .is_err()
        );
        assert_eq!(clean.get(), None);
    }
}

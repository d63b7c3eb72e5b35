//! The backup artifact: one standard tar stream, compressed with gzip or
//! zstd, holding the project's components and, as its last entry,
//! `manifest.json` with the size and SHA-256 of every entry.
//!
//! Standard tools open it: `tar -xzf` (or `tar --zstd -xf`), with
//! `--xattrs --xattrs-include='user.*'` to bring back the storage backend's
//! `user.supabase.*` attributes, which travel as PAX `SCHILY.xattr.*`
//! records. Symlinks are stored as links and never followed; empty folders,
//! modes, owners and mtimes are kept.
//!
//! [`ArtifactBuilder`] is synchronous (it runs on a blocking thread) and
//! streams: no file is held in memory, whatever its size.

mod builder;
mod compress;
mod manifest;
mod naming;
mod pargz;

pub use builder::{ArtifactBuilder, ArtifactSummary};
pub use compress::{Compression, Compressor, Precompressed, compress_stream};
pub use manifest::{Manifest, ManifestEntry, ManifestMeta};
pub use naming::{artifact_key, artifact_of};
pub use pargz::ParallelGzip;

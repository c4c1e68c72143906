//! A remote copy of the store that others push to and pull from: an S3-compatible bucket or a
//! folder (shared or local), through `object_store`.
//!
//! Layout under the remote's root, the local model in blobs and records:
//! - `blobs/<blake3>`: one object per distinct file content, named by its digest, so an
//!   interrupted push leaves only whole blobs and a rerun uploads only what is missing;
//! - `entries/<key>.json`: an entry's [`Manifest`](crate::Manifest), written last and only if absent (a
//!   conditional create: `If-None-Match: *` on S3, a hard link on a folder), so two pushers of
//!   one key never clobber each other and an entry is visible only once every blob is there.
//!
//! The remote is never trusted more than the local cache: a manifest must hash to its own key
//! and list its own output digest, file names must stay inside the entry, and every pulled file
//! is hashed while it streams in and refused by name when it does not match.
mod client;
mod profile;
mod transfer;

pub use client::{printable, Remote, RemoteError, RemoteOptions};
pub use profile::Profile;
pub use transfer::{GcReport, PushOptions, PushOutcome, TransferProgress};

#![forbid(unsafe_code)]
//! Content-addressed artifact store. Knows nothing of stages or recipes.
//!
//! An entry is the output directory of one computation, addressed by a [`CacheKey`]: the
//! blake3 hash of a canonical JSON encoding of [`KeyInputs`]. What goes into a key:
//!
//! | field      | what it holds                                                        |
//! |------------|----------------------------------------------------------------------|
//! | `format`   | [`KEY_FORMAT_VERSION`], bumped when the encoding itself changes      |
//! | `kind`     | the kind of computation (a stage kind, for the engine)               |
//! | `version`  | the implementation version of that kind                              |
//! | `params`   | its parameters, defaults filled in, as JSON (object keys sorted)     |
//! | `seed`     | the seed it draws its randomness from                                |
//! | `upstream` | name → output digest of every entry it reads                         |
//! | `inputs`   | name → fingerprint of every external input (dataset files)           |
//!
//! Layout under the store's root:
//! - `objects/<key>/out/`: the outputs; `objects/<key>/manifest.json`: the record, written last.
//!   An entry without a manifest is incomplete and counts as a miss.
//! - `tmp/<key>.<pid>.<n>/`: staging directories; outputs are renamed into place when complete.
//! - `locks/<key>.lock`: one lock file per key, locked with the operating system's advisory
//!   lock, so a crashed process never leaves a key locked.
//! - `refs/<namespace>/<name>.json`: the key inputs last used under a name, so a caller can say
//!   which field changed since.
//! - `fingerprints.json`: memo of file content hashes by path, size and modification time.
//!
//! A [`remote::Remote`] (an S3 bucket or a folder) holds the same entries as blobs and
//! manifests, for `pipeline push`, `pull` and `run --remote`.

mod digest;
mod error;
pub mod json;
mod key;
pub mod remote;
mod store;

pub use digest::{hash_file, FingerprintMemo};
pub use error::CacheError;
pub use key::{CacheKey, KeyInputs, KEY_FORMAT_VERSION};
pub use store::{
    CommitStamp, Entry, FileRecord, KeyLock, Manifest, ReadHold, Staging, Store, UnusedLock, Verification,
};

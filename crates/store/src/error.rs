//! Errors of the storage layer. Corruption is kept apart from ordinary I/O failures: a
//! corrupt store must refuse to start and say so, never limp on.

use std::path::PathBuf;

use sealpost_core::codec::CodecError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store's bytes are damaged or inconsistent. Fatal: the node must not start on it.
    #[error(
        "the store at {path} is corrupt and this node refuses to start on it: {detail}. \
         Move the folder aside and rejoin this node as a new learner id; its replicas hold the data"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error("RocksDB at {path}: {source}")]
    Rocks {
        path: PathBuf,
        #[source]
        source: rocksdb::Error,
    },
    #[error("file system at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("stored record {what} does not decode: {source}")]
    Codec {
        what: String,
        #[source]
        source: CodecError,
    },
    #[error("invalid request to the store: {0}")]
    Invalid(String),
    /// A long operation stopped because one of its own threads did (not the caller's
    /// doing).
    #[error("the store operation stopped: {0}")]
    Stopped(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    /// Classifies a RocksDB error: corruption is fatal and reported as such.
    pub(crate) fn rocks(path: impl Into<PathBuf>) -> impl FnOnce(rocksdb::Error) -> Error {
        let path = path.into();
        move |source| match source.kind() {
            rocksdb::ErrorKind::Corruption => Error::Corrupt {
                path,
                detail: source.to_string(),
            },
            _ => Error::Rocks { path, source },
        }
    }

    pub fn is_corrupt(&self) -> bool {
        matches!(self, Error::Corrupt { .. })
    }
}

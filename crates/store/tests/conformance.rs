//! openraft's storage conformance suite run against the RocksDB log store and state
//! machine: every test of `openraft::testing::Suite` on fresh folders.

use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use sealpost_store::{LogStore, StateMachine, StoreOptions, TypeConfig};
use tempfile::TempDir;

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, sm) =
            sealpost_store::open(dir.path(), &StoreOptions::default()).expect("fresh stores open");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes() {
    if let Err(e) = Suite::test_all(RocksBuilder) {
        panic!("storage conformance failed: {e}");
    }
}

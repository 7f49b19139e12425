//! openraft's storage conformance suite, every case, on both backends.

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

use aspen_core::TypeConfig;
use aspen_core::limits::Limits;
use aspen_storage::{LogStore, StateMachine, StorageBackend, open_storage};
use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};

struct RedbBuilder;
struct MemoryBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for RedbBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let backend = StorageBackend::Redb {
            dir: dir.path().join("node.redb"),
        };
        let (log, sm) = open_storage(&backend, Limits::default()).expect("open redb storage");
        Ok((dir, log, sm))
    }
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, ()> for MemoryBuilder {
    async fn build(&self) -> Result<((), LogStore, StateMachine), StorageError<TypeConfig>> {
        let (log, sm) = open_storage(&StorageBackend::InMemory, Limits::default())
            .expect("open memory storage");
        Ok(((), log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_suite_redb() {
    Suite::test_all(RedbBuilder)
        .await
        .expect("openraft storage suite on redb");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_suite_memory() {
    Suite::test_all(MemoryBuilder)
        .await
        .expect("openraft storage suite in memory");
}

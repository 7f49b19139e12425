//! etcd's Maintenance service: Status, Alarm, Defragment, Hash, HashKV, Snapshot, MoveLeader.
//!
//! Work that reads the whole store or holds it exclusively (hashing, defragmenting, exporting a
//! snapshot) runs on blocking threads, never on the async executor.

use std::io::Read;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use aspen_core::command::{AlarmAction, AlarmType};
use aspen_core::convert::{usize_from, wire_i64};
use aspen_core::limits::SNAPSHOT_CHUNK_BYTES_MAX;
use aspen_core::{ApplyError, ApplyResponse, Command, CommandResult};
use aspen_node::{ForwardRequest, Node, NodeError};
use aspen_proto::etcdserverpb::{self as pb, maintenance_server::Maintenance};
use aspen_storage::StorageError;
use aspen_storage::snapshot::SnapshotExport;
use aspen_storage::state_machine::export_etcd_snapshot;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tonic::{Code, Request, Response, Status};

use crate::access::Access;
use crate::cluster::current_header;
use crate::header::header;
use crate::status::{self, from_apply, from_node, invalid};

/// The etcd server version Aspen reports; etcd clients gate features on it.
pub const ETCD_VERSION: &str = "3.5.0";
pub const BAD_LEADER_TRANSFEREE: &str = "etcdserver: bad leader transferee";
pub const LEADER_TRANSFER_TIMEOUT: &str =
    "etcdserver: request timed out, leader transfer took too long";
pub const UNKNOWN_ALARM_ACTION: &str = "etcdserver: unknown alarm action";
/// How long MoveLeader waits for the target to take over.
pub const LEADER_TRANSFER_WAIT_MS_MAX: u64 = 5_000;
/// Snapshot chunks queued ahead of a slow client; bounds memory per Snapshot stream.
pub const SNAPSHOT_STREAM_CHUNKS_BUFFERED_MAX: usize = 4;
/// `etcdctl snapshot save` accepts a stream whose length is a multiple of this plus the 32-byte
/// SHA-256 trailer (its `hasChecksum`), so the body is zero-padded to it.
pub const SNAPSHOT_ALIGN_BYTES: u64 = 512;

#[derive(Clone)]
pub struct MaintenanceService {
    node: Node,
    access: Access,
}

impl MaintenanceService {
    pub fn new(node: Node, access: Access) -> MaintenanceService {
        MaintenanceService { node, access }
    }

    /// etcd 3.4's `authMaintenanceServer`: Defragment, Hash, HashKV, Snapshot and MoveLeader
    /// need a root user while auth is enabled, refused with the auth store's raw error.
    fn check_admin<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let caller = self
            .access
            .caller(request)
            .map_err(|_| status::maintenance_auth(&ApplyError::InvalidAuthToken))?;
        caller.admin().map_err(|e| status::maintenance_auth(&e))
    }

    async fn propose_alarm(
        &self,
        action: AlarmAction,
        member_id: u64,
        alarm: AlarmType,
    ) -> Result<(Vec<(u64, AlarmType)>, u64), Status> {
        let command = Command::Alarm {
            action,
            member_id,
            alarm,
        };
        let ApplyResponse { revision, result } =
            self.node.write(command).await.map_err(from_node)?;
        match result.map_err(|e| from_apply(&e))? {
            CommandResult::Alarm { active } => Ok((active, revision)),
            other => Err(Status::internal(format!(
                "unexpected apply result {other:?}"
            ))),
        }
    }
}

fn storage_status(error: StorageError) -> Status {
    from_node(NodeError::from(error))
}

/// Runs storage work that blocks (whole-store scans, exclusive locks) off the executor.
async fn blocking<T, F>(work: F) -> Result<T, Status>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StorageError> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Status::internal(format!("storage task failed: {e}")))?
        .map_err(storage_status)
}

/// etcd's alarm type on the wire; `None` is NONE ("any alarm" in a query).
pub fn alarm_type(value: i32) -> Result<Option<AlarmType>, Status> {
    match pb::AlarmType::try_from(value) {
        Ok(pb::AlarmType::None) => Ok(None),
        Ok(pb::AlarmType::Nospace) => Ok(Some(AlarmType::NoSpace)),
        Ok(pb::AlarmType::Corrupt) => Ok(Some(AlarmType::Corrupt)),
        Err(_) => Err(invalid("etcdserver: unknown alarm type")),
    }
}

pub fn alarm_type_pb(alarm: AlarmType) -> pb::AlarmType {
    match alarm {
        AlarmType::NoSpace => pb::AlarmType::Nospace,
        AlarmType::Corrupt => pb::AlarmType::Corrupt,
    }
}

pub fn alarm_member(member_id: u64, alarm: AlarmType) -> pb::AlarmMember {
    pb::AlarmMember {
        member_id,
        alarm: alarm_type_pb(alarm) as i32,
    }
}

/// An alarm as etcd lists it in Status errors: the AlarmMember's compact text form.
pub fn alarm_error(member_id: u64, alarm: AlarmType) -> String {
    format!(
        "memberID:{member_id} alarm:{} ",
        alarm_type_pb(alarm).as_str_name()
    )
}

/// The alarms a GET returns: all of them for NONE, else those of one type.
pub fn alarms_matching(
    active: &[(u64, AlarmType)],
    wanted: Option<AlarmType>,
) -> Vec<pb::AlarmMember> {
    active
        .iter()
        .filter(|(_, alarm)| wanted.is_none_or(|w| w == *alarm))
        .map(|(member, alarm)| alarm_member(*member, *alarm))
        .collect()
}

/// Bytes of zero padding after a snapshot body of `body_bytes`.
pub fn snapshot_padding_bytes(body_bytes: u64) -> u64 {
    (SNAPSHOT_ALIGN_BYTES - body_bytes % SNAPSHOT_ALIGN_BYTES) % SNAPSHOT_ALIGN_BYTES
}

/// A server stream fed by a bounded channel.
pub struct SnapshotChunks {
    receiver: mpsc::Receiver<Result<pb::SnapshotResponse, Status>>,
}

impl futures_util::Stream for SnapshotChunks {
    type Item = Result<pb::SnapshotResponse, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().receiver.poll_recv(cx)
    }
}

/// Sends the export as etcd's Snapshot does: body chunks with the bytes still to come, then one
/// message with the SHA-256 of everything sent. The body is an etcd 3.4 backend (a bbolt file,
/// `export_etcd_snapshot`), whose size is a multiple of its page size and so of
/// `SNAPSHOT_ALIGN_BYTES` (zero padding would be added otherwise).
fn stream_export(
    export: SnapshotExport,
    mut header: Option<pb::ResponseHeader>,
    sender: &mpsc::Sender<Result<pb::SnapshotResponse, Status>>,
) -> Result<(), Status> {
    let data = export.data();
    let body_bytes = data.len_bytes();
    let total_bytes = body_bytes + snapshot_padding_bytes(body_bytes);
    let mut reader = data.reader();
    let mut sha = Sha256::new();
    let mut sent_bytes: u64 = 0;
    // Bounded: each pass sends at least one byte of a finite export.
    while sent_bytes < total_bytes {
        let chunk_bytes = SNAPSHOT_CHUNK_BYTES_MAX.min(total_bytes - sent_bytes);
        let mut chunk = vec![0u8; usize_from(chunk_bytes)];
        let from_body = chunk_bytes.min(body_bytes.saturating_sub(sent_bytes));
        reader
            .read_exact(&mut chunk[..usize_from(from_body)])
            .map_err(|e| storage_status(StorageError::Snapshot(format!("reading export: {e}"))))?;
        sha.update(&chunk);
        sent_bytes += chunk_bytes;
        let response = pb::SnapshotResponse {
            header: header.take(),
            remaining_bytes: total_bytes - sent_bytes,
            blob: chunk,
        };
        if sender.blocking_send(Ok(response)).is_err() {
            return Ok(()); // The client went away.
        }
    }
    let digest = pb::SnapshotResponse {
        header: header.take(),
        remaining_bytes: 0,
        blob: sha.finalize().to_vec(),
    };
    let _ = sender.blocking_send(Ok(digest));
    Ok(())
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        request: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        // Raising or clearing an alarm is administration: root only while auth is enabled
        // (etcd 3.4 checks neither; listing stays open, as there).
        let caller = self.access.caller(&request)?;
        let request = request.into_inner();
        let wanted = alarm_type(request.alarm)?;
        let action = pb::alarm_request::AlarmAction::try_from(request.action)
            .map_err(|_| invalid(UNKNOWN_ALARM_ACTION))?;
        // etcd answers every action through Raft; a GET reads after a barrier instead.
        if action == pb::alarm_request::AlarmAction::Get {
            self.node.read_barrier().await.map_err(from_node)?;
        } else {
            caller.check_admin()?;
        }
        let before = self.node.applied_state().map_err(from_node)?;
        let alarms = match (action, wanted) {
            (pb::alarm_request::AlarmAction::Get, _) => alarms_matching(&before.alarms, wanted),
            // As etcd: NONE names no alarm to raise or clear.
            (_, None) => Vec::new(),
            (pb::alarm_request::AlarmAction::Activate, Some(alarm)) => {
                let (active, _) = self
                    .propose_alarm(AlarmAction::Activate, request.member_id, alarm)
                    .await?;
                let entry = (request.member_id, alarm);
                let raised = active
                    .contains(&entry)
                    .then(|| alarm_member(entry.0, alarm));
                raised.into_iter().collect()
            }
            (pb::alarm_request::AlarmAction::Deactivate, Some(alarm)) => {
                // etcd returns the alarm it cleared, or nothing if it was not raised.
                self.node.read_barrier().await.map_err(from_node)?;
                let was_raised = self
                    .node
                    .applied_state()
                    .map_err(from_node)?
                    .alarms
                    .contains(&(request.member_id, alarm));
                self.propose_alarm(AlarmAction::Deactivate, request.member_id, alarm)
                    .await?;
                let cleared = was_raised.then(|| alarm_member(request.member_id, alarm));
                cleared.into_iter().collect()
            }
        };
        // etcd 3.4 answers Alarm without a header (its maintenance server returns the
        // applier's response as is).
        Ok(Response::new(pb::AlarmResponse {
            header: None,
            alarms,
        }))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let metrics = self.node.raft_metrics();
        let db_size_bytes = self.node.store().db_size_bytes();
        let db_size_in_use_bytes = self.node.db_size_in_use_bytes().await;
        let state = self.node.applied_state().map_err(from_node)?;
        let mut errors = Vec::new();
        if metrics.current_leader.is_none() {
            errors.push(NodeError::NoLeader.to_string());
        }
        errors.extend(
            state
                .alarms
                .iter()
                .map(|(member, alarm)| alarm_error(*member, *alarm)),
        );
        Ok(Response::new(pb::StatusResponse {
            header: header(&self.node, state.revision),
            version: ETCD_VERSION.to_string(),
            db_size: wire_i64(db_size_bytes),
            leader: metrics.current_leader.unwrap_or(0),
            raft_index: metrics.last_log_index.unwrap_or(0),
            raft_term: metrics.current_term,
            raft_applied_index: metrics.last_applied.as_ref().map_or(0, |id| id.index),
            errors,
            db_size_in_use: wire_i64(db_size_in_use_bytes),
            is_learner: self.node.is_learner(),
        }))
    }

    async fn defragment(
        &self,
        request: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        self.check_admin(&request)?;
        let store = self.node.store().clone();
        blocking(move || store.defragment()).await?;
        // etcd answers an empty DefragmentResponse, without a header.
        Ok(Response::new(pb::DefragmentResponse { header: None }))
    }

    async fn hash(
        &self,
        request: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        self.check_admin(&request)?;
        let reader = self.node.reader().clone();
        let hashed = blocking(move || reader.hash_kv(0))
            .await?
            .map_err(|e| from_apply(&e))?;
        Ok(Response::new(pb::HashResponse {
            header: header(&self.node, hashed.current_revision),
            hash: hashed.hash,
        }))
    }

    async fn hash_kv(
        &self,
        request: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        self.check_admin(&request)?;
        let revision = request.into_inner().revision.max(0) as u64;
        let reader = self.node.reader().clone();
        let hashed = blocking(move || reader.hash_kv(revision))
            .await?
            .map_err(|e| from_apply(&e))?;
        Ok(Response::new(pb::HashKvResponse {
            header: header(&self.node, hashed.current_revision),
            hash: hashed.hash,
            compact_revision: wire_i64(hashed.compact_revision),
        }))
    }

    type SnapshotStream = SnapshotChunks;

    async fn snapshot(
        &self,
        request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.check_admin(&request)?;
        let store = self.node.store().clone();
        let export = blocking(move || export_etcd_snapshot(&store)).await?;
        let header = current_header(&self.node)?;
        let (sender, receiver) = mpsc::channel(SNAPSHOT_STREAM_CHUNKS_BUFFERED_MAX);
        tokio::task::spawn_blocking(move || {
            if let Err(status) = stream_export(export, header, &sender) {
                tracing::warn!(%status, "snapshot stream failed");
                let _ = sender.blocking_send(Err(status));
            }
        });
        Ok(Response::new(SnapshotChunks { receiver }))
    }

    async fn move_leader(
        &self,
        request: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        self.check_admin(&request)?;
        let to = request.into_inner().target_id;
        let is_voter = self
            .node
            .members()
            .iter()
            .any(|m| m.id == to && !m.is_learner);
        if !is_voter {
            return Err(Status::new(Code::FailedPrecondition, BAD_LEADER_TRANSFEREE));
        }
        if self.node.leader_id() != Some(to) {
            self.node
                .change_membership(ForwardRequest::TransferLeader { to })
                .await
                .map_err(from_node)?;
            // As etcd: answer once the target leads, or fail after a bounded wait.
            self.node
                .raft()
                .wait(Some(Duration::from_millis(LEADER_TRANSFER_WAIT_MS_MAX)))
                .current_leader(to, "move leader")
                .await
                .map_err(|_| Status::new(Code::Unavailable, LEADER_TRANSFER_TIMEOUT))?;
        }
        Ok(Response::new(pb::MoveLeaderResponse {
            header: current_header(&self.node)?,
        }))
    }

    async fn downgrade(
        &self,
        _request: Request<pb::DowngradeRequest>,
    ) -> Result<Response<pb::DowngradeResponse>, Status> {
        Err(Status::unimplemented(
            "etcdserver: downgrade is not supported",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarm_types_map_both_ways() {
        assert_eq!(alarm_type(0).expect("none"), None);
        assert_eq!(alarm_type(1).expect("nospace"), Some(AlarmType::NoSpace));
        assert_eq!(alarm_type(2).expect("corrupt"), Some(AlarmType::Corrupt));
        assert_eq!(
            alarm_type(3).expect_err("unknown").code(),
            Code::InvalidArgument
        );
        assert_eq!(alarm_type_pb(AlarmType::NoSpace) as i32, 1);
        assert_eq!(alarm_type_pb(AlarmType::Corrupt) as i32, 2);
        let member = alarm_member(9, AlarmType::NoSpace);
        assert_eq!((member.member_id, member.alarm), (9, 1));
    }

    #[test]
    fn alarm_get_filters_by_type() {
        let active = [
            (1, AlarmType::NoSpace),
            (2, AlarmType::Corrupt),
            (3, AlarmType::NoSpace),
        ];
        assert_eq!(alarms_matching(&active, None).len(), 3);
        let nospace = alarms_matching(&active, Some(AlarmType::NoSpace));
        let ids: Vec<u64> = nospace.iter().map(|a| a.member_id).collect();
        assert_eq!(ids, [1, 3]);
        assert!(alarms_matching(&[], None).is_empty());
    }

    #[test]
    fn status_errors_name_alarms_as_etcd_does() {
        assert_eq!(
            alarm_error(10, AlarmType::NoSpace),
            "memberID:10 alarm:NOSPACE "
        );
        assert_eq!(
            alarm_error(11, AlarmType::Corrupt),
            "memberID:11 alarm:CORRUPT "
        );
    }

    #[test]
    fn snapshot_body_pads_to_etcd_alignment() {
        assert_eq!(snapshot_padding_bytes(0), 0);
        assert_eq!(snapshot_padding_bytes(1), 511);
        assert_eq!(snapshot_padding_bytes(512), 0);
        assert_eq!(snapshot_padding_bytes(1000), 24);
        for body in [1u64, 100, 511, 512, 513, 4096 + 7] {
            let total = body + snapshot_padding_bytes(body) + 32;
            assert_eq!(total % SNAPSHOT_ALIGN_BYTES, 32, "{body}");
        }
    }

    fn collect(
        receiver: &mut mpsc::Receiver<Result<pb::SnapshotResponse, Status>>,
    ) -> Vec<pb::SnapshotResponse> {
        let mut out = Vec::new();
        while let Ok(message) = receiver.try_recv() {
            out.push(message.expect("chunk"));
        }
        out
    }

    #[test]
    fn snapshot_stream_ends_with_sha256_of_everything_sent() {
        let (_log, state_machine) = aspen_storage::open_storage(
            &aspen_storage::StorageBackend::InMemory,
            aspen_core::limits::Limits::default(),
        )
        .expect("open");
        let export = export_etcd_snapshot(state_machine.store()).expect("export");
        let mut body = Vec::new();
        export
            .data()
            .reader()
            .read_to_end(&mut body)
            .expect("read export");
        let (sender, mut receiver) = mpsc::channel(64);
        let header = Some(pb::ResponseHeader::default());
        stream_export(export, header, &sender).expect("stream");
        let messages = collect(&mut receiver);
        assert!(messages.len() >= 2);
        assert!(messages[0].header.is_some());
        assert!(messages[1..].iter().all(|m| m.header.is_none()));
        let (digest, chunks) = messages.split_last().expect("messages");
        assert_eq!(digest.remaining_bytes, 0);
        let streamed: Vec<u8> = chunks.iter().flat_map(|m| m.blob.clone()).collect();
        assert_eq!(streamed.len() as u64 % SNAPSHOT_ALIGN_BYTES, 0);
        assert_eq!(&streamed[..body.len()], body.as_slice());
        assert!(streamed[body.len()..].iter().all(|b| *b == 0));
        assert_eq!(digest.blob, Sha256::digest(&streamed).to_vec());
        let mut remaining = streamed.len() as u64;
        for chunk in chunks {
            assert!(chunk.blob.len() as u64 <= SNAPSHOT_CHUNK_BYTES_MAX);
            remaining -= chunk.blob.len() as u64;
            assert_eq!(chunk.remaining_bytes, remaining);
        }
    }
}

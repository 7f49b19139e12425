//! Starting a member: storage, Raft, the peer and client gRPC listeners, the metrics
//! listener, cluster formation on first boot, and an orderly stop.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aspen_core::NodeInfo;
use aspen_node::{ForwardRequest, Node, NodeError, NodeOptions, RaftTiming, TestingOptions};
use aspen_raft::{PeerClients, PeerIdentity, PeerNetworkFactory};
use aspen_storage::force_new_cluster::{ForceOutcome, force_new_cluster};
use aspen_tls::ServerTls;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{ClusterBootstrapConfig, ClusterState};
use crate::serve::{self, Http2Settings, Protocols};
use crate::tls::{self, ListenerKind, TlsConfig};

/// How long in-flight requests get to finish after a stop signal.
pub const SHUTDOWN_GRACE_MS: u64 = 5_000;
/// `aspen`'s exit code when its data dir's disk filled (ENOSPC, EDQUOT), at start-up or while
/// serving (sysexits' EX_TEMPFAIL: try again later). Raft and the databases cannot continue
/// after a failed write, so the process exits instead of staying up unable to serve; a
/// supervisor restarts it, and once there is room it serves again with every acknowledged write.
pub const EXIT_DISK_FULL: u8 = 75;
/// `aspen`'s exit code when Raft stopped for any other reason: a storage failure (an I/O error
/// such as a failed fsync; sysexits' EX_IOERR), or its core ending otherwise (a panic).
/// Restarting recovers from what is durable.
pub const EXIT_STORAGE_FAILED: u8 = 74;

/// How often a member checks that the cluster knows its name and client URLs.
pub const SELF_PUBLISH_INTERVAL_MS: u64 = 200;

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("{0}")]
    Node(#[from] NodeError),
    #[error("{what} TLS: {source}")]
    Tls {
        what: &'static str,
        source: aspen_tls::TlsError,
    },
    #[error("--force-new-cluster: {0}")]
    ForceNewCluster(String),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Listen {
        addr: SocketAddr,
        what: &'static str,
        source: std::io::Error,
    },
}

/// A running member: its node and the tasks serving it.
pub struct NodeHandle {
    pub node: Node,
    /// The member's auth checks and tokens, shared by its client services.
    pub access: aspen_api::Access,
    pub client_addrs: Vec<SocketAddr>,
    pub peer_addrs: Vec<SocketAddr>,
    pub metrics_addrs: Vec<SocketAddr>,
    stop: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
}

/// Starts a member as `config` describes and returns once it is serving.
pub async fn bootstrap_node(config: &ClusterBootstrapConfig) -> Result<NodeHandle, BootstrapError> {
    let member_id = config.member_id();
    let info = NodeInfo {
        name: config.name.clone(),
        peer_urls: config.initial_advertise_peer_urls.clone(),
        client_urls: config.advertise_client_urls.clone(),
    };
    // Bind first: a port in use is reported before anything else starts.
    let peer_listeners = bind_all(&config.listen_peer_addrs, "peer").await?;
    let client_listeners = bind_all(&config.listen_client_addrs, "client").await?;
    let metrics_listeners = bind_all(&config.listen_metrics_addrs, "metrics").await?;

    let listener_tls = ListenerTls::build(config)?;
    let identity = Arc::new(PeerIdentity::new(member_id));
    if config.initial_cluster_state == ClusterState::New {
        identity.set_cluster_id(config.initial_cluster_id());
    }
    let clients = PeerClients::new(
        config.limits.request_bytes_max,
        identity.clone(),
        listener_tls.peer_client.clone(),
    );
    let options = NodeOptions {
        id: member_id,
        info: info.clone(),
        cluster_id: config.initial_cluster_id(),
        cluster_name: config.initial_cluster_token.clone(),
        timing: RaftTiming {
            heartbeat_interval_ms: config.heartbeat_interval_ms,
            election_timeout_ms: config.election_timeout_ms,
            snapshot_count: config.snapshot_count,
        },
        backend: config.storage_backend.clone(),
        limits: config.limits,
    };
    let node = start_node(config, options, clients).await?;
    tracing::info!(member = format!("{member_id:x}"), name = %config.name, "storage open, raft started");

    let access = aspen_api::Access::new(&node, config.auth.clone());
    let (stop, stop_rx) = watch::channel(false);
    let mut handle = NodeHandle {
        node: node.clone(),
        access: access.clone(),
        client_addrs: local_addrs(&client_listeners),
        peer_addrs: local_addrs(&peer_listeners),
        metrics_addrs: local_addrs(&metrics_listeners),
        stop,
        servers: Vec::new(),
    };
    let message_bytes_max =
        aspen_raft::wire::peer_message_bytes_max(config.limits.request_bytes_max);
    let peer_router = crate::services::peer_router(&node, identity.clone(), message_bytes_max);
    for (i, listener) in peer_listeners.into_iter().enumerate() {
        handle.servers.push(serve::spawn(
            listener,
            serve::App::Router(peer_router.clone()),
            Protocols::Http2Only,
            Http2Settings::PEER,
            listener_tls.for_listener(ListenerKind::Peer, i, &config.tls),
            stop_rx.clone(),
            "peer",
        ));
    }
    let client_service = crate::services::client_service(&node, &access, stop_rx.clone()).await;
    for (i, listener) in client_listeners.into_iter().enumerate() {
        handle.servers.push(serve::spawn(
            listener,
            serve::App::Client(client_service.clone()),
            Protocols::Http1AndHttp2,
            Http2Settings::CLIENT,
            listener_tls.for_listener(ListenerKind::Client, i, &config.tls),
            stop_rx.clone(),
            "client",
        ));
    }
    let metrics_router = crate::http::router(node.clone());
    for (i, listener) in metrics_listeners.into_iter().enumerate() {
        handle.servers.push(serve::spawn(
            listener,
            serve::App::Router(metrics_router.clone()),
            Protocols::Http1AndHttp2,
            Http2Settings::CLIENT,
            listener_tls.for_listener(ListenerKind::Metrics, i, &config.tls),
            stop_rx.clone(),
            "metrics",
        ));
    }

    if config.initial_cluster_state == ClusterState::New {
        let members: BTreeMap<u64, NodeInfo> = config
            .initial_cluster
            .iter()
            .map(|m| {
                // Every founder must write the same initial membership entry (Raft assumes an
                // entry is the same wherever its index and term are), so it holds only what
                // all of them know: names and peer URLs. Client URLs are published after.
                let info = NodeInfo {
                    name: m.name.clone(),
                    peer_urls: m.peer_urls.clone(),
                    client_urls: Vec::new(),
                };
                (m.member_id(&config.initial_cluster_token), info)
            })
            .collect();
        if node.initialize(members).await? {
            tracing::info!("initialized a new cluster");
        }
    }
    if config.initial_cluster_state == ClusterState::Existing {
        handle.servers.push(spawn_adopt_cluster_id(
            node.clone(),
            identity.clone(),
            stop_rx.clone(),
        ));
    }
    if let Some(policy) = config.auto_compaction {
        handle.servers.push(crate::auto_compaction::spawn(
            node.clone(),
            policy,
            stop_rx.clone(),
        ));
    }
    handle
        .servers
        .push(spawn_self_publish(node.clone(), info, stop_rx));
    Ok(handle)
}

/// Opens the member's storage, rewrites it first when `--force-new-cluster` asks, and starts
/// Raft on it.
async fn start_node(
    config: &ClusterBootstrapConfig,
    options: NodeOptions,
    clients: PeerClients,
) -> Result<Node, BootstrapError> {
    let (mut log_store, mut state_machine) =
        aspen_storage::open_storage(&options.backend, options.limits).map_err(NodeError::from)?;
    let mut forced = false;
    if config.force_new_cluster {
        let outcome = force_new_cluster(
            &mut log_store,
            &mut state_machine,
            options.id,
            options.info.clone(),
        )
        .await
        .map_err(NodeError::from)?;
        forced = report_forced(options.id, outcome)?;
    }
    let node = Node::start_with_storage(
        options,
        log_store,
        state_machine,
        PeerNetworkFactory::new(clients.clone()),
        Arc::new(clients),
        TestingOptions::default(),
    )
    .await?;
    if forced {
        // openraft re-applied the log up to the forced entry, committed, before `start`
        // returned.
        let applied = node.applied_state()?;
        let voters: Vec<u64> = applied.membership.voter_ids().collect();
        let members = applied.membership.membership().nodes().count();
        assert!(
            voters == [node.id()] && members == 1,
            "a forced member started with voters {voters:?} of {members} members"
        );
    }
    Ok(node)
}

/// Logs what `--force-new-cluster` did, as loudly as etcd; refuses a member its data dir does
/// not list. Returns whether the membership was rewritten (and committed) just now.
fn report_forced(member_id: u64, outcome: ForceOutcome) -> Result<bool, BootstrapError> {
    let member = format!("{member_id:x}");
    match outcome {
        ForceOutcome::NoState => {
            tracing::warn!(
                %member,
                "--force-new-cluster: the data dir holds no cluster state; starting as the \
                 other flags say"
            );
            Ok(false)
        }
        ForceOutcome::AlreadyAlone => {
            tracing::warn!(
                %member,
                "--force-new-cluster: this member is already the only member; nothing \
                 changed. Remove the flag: left on, a later restart removes every member \
                 added since"
            );
            // Committed or not (a crash may have come between the entry and the committed
            // index), the sole voter commits it once it elects itself.
            Ok(false)
        }
        ForceOutcome::NotAMember { members } => {
            let members: Vec<String> = members.iter().map(|id| format!("{id:x}")).collect();
            Err(BootstrapError::ForceNewCluster(format!(
                "member {member} (from --initial-advertise-peer-urls and \
                 --initial-cluster-token) is not a member of the cluster in this data dir \
                 (members {}); start it with the flags it was started with before",
                members.join(",")
            )))
        }
        ForceOutcome::Forced(forced) => {
            for removed in &forced.removed {
                tracing::warn!(
                    %member,
                    removed = format!("{removed:x}"),
                    "--force-new-cluster: removed member from the cluster"
                );
            }
            tracing::warn!(
                %member,
                term = forced.term,
                membership_index = forced.membership_log_id.index,
                committed_index_before = forced.committed_index_before,
                uncommitted_entries_kept = forced.uncommitted_entries_kept,
                "--force-new-cluster: this member is now the only member of its cluster, with \
                 all its data; add members back with `member add`, and remove the flag before \
                 the next restart"
            );
            Ok(true)
        }
    }
}

async fn bind_all(
    addrs: &[SocketAddr],
    what: &'static str,
) -> Result<Vec<TcpListener>, BootstrapError> {
    let mut listeners = Vec::with_capacity(addrs.len());
    for addr in addrs {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| BootstrapError::Listen {
                addr: *addr,
                what,
                source,
            })?;
        listeners.push(listener);
    }
    Ok(listeners)
}

fn local_addrs(listeners: &[TcpListener]) -> Vec<SocketAddr> {
    listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect()
}

/// The TLS each kind of listener serves with, read once at start-up (the certificate files
/// are re-read on change by `aspen_tls`), and how this member dials https peers.
struct ListenerTls {
    client: Option<ServerTls>,
    metrics: Option<ServerTls>,
    peer: Option<ServerTls>,
    peer_client: Option<aspen_tls::ClientTls>,
}

impl ListenerTls {
    fn build(config: &ClusterBootstrapConfig) -> Result<ListenerTls, BootstrapError> {
        let client_hosts = tls::url_hosts(&config.advertise_client_urls);
        let peer_hosts = tls::url_hosts(&config.initial_advertise_peer_urls);
        let dir = &config.data_dir;
        let server = |kind, hosts: &[String], what| {
            tls::build_server(&config.tls, kind, dir, hosts)
                .map_err(|source| BootstrapError::Tls { what, source })
        };
        Ok(ListenerTls {
            client: server(ListenerKind::Client, &client_hosts, "client")?,
            metrics: server(ListenerKind::Metrics, &client_hosts, "metrics")?,
            peer: server(ListenerKind::Peer, &peer_hosts, "peer")?,
            peer_client: tls::build_peer_client(&config.tls, dir, &peer_hosts).map_err(
                |source| BootstrapError::Tls {
                    what: "peer client",
                    source,
                },
            )?,
        })
    }

    /// The TLS of the `index`th listener of `kind`: `None` when that URL is http://.
    fn for_listener(
        &self,
        kind: ListenerKind,
        index: usize,
        config: &TlsConfig,
    ) -> Option<ServerTls> {
        let (server, https) = match kind {
            ListenerKind::Client => (&self.client, &config.client_https),
            ListenerKind::Metrics => (&self.metrics, &config.metrics_https),
            ListenerKind::Peer => (&self.peer, &config.peer_https),
        };
        if https.get(index).copied().unwrap_or(false) {
            server.clone()
        } else {
            None
        }
    }
}

/// A member that joins an existing cluster takes the founders' cluster id from the leader,
/// retrying until it has it or the member stops.
fn spawn_adopt_cluster_id(
    node: Node,
    identity: Arc<PeerIdentity>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match node.adopt_cluster_id_from_leader().await {
                Ok(id) => {
                    identity.set_cluster_id(id);
                    tracing::info!(cluster = format!("{id:x}"), "adopted the cluster id");
                    return;
                }
                Err(error) => {
                    tracing::debug!(%error, "asking the leader for the cluster id; will retry")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(SELF_PUBLISH_INTERVAL_MS)) => {}
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
        }
    })
}

/// etcd members publish their name and client URLs once they run; so do we, through a
/// membership update, until the cluster's record matches what this member advertises.
fn spawn_self_publish(
    node: Node,
    info: NodeInfo,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let published = node
                .members()
                .iter()
                .any(|m| m.id == node.id() && m.info == info);
            if published {
                return;
            }
            let in_cluster = node.members().iter().any(|m| m.id == node.id());
            if in_cluster {
                let request = ForwardRequest::UpdateMember {
                    id: node.id(),
                    info: info.clone(),
                };
                if let Err(error) = node.change_membership(request).await {
                    tracing::debug!(%error, "publishing member attributes; will retry");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(SELF_PUBLISH_INTERVAL_MS)) => {}
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
        }
    })
}

impl NodeHandle {
    /// Stops accepting, lets in-flight requests finish within `SHUTDOWN_GRACE_MS`, stops Raft.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let grace = Duration::from_millis(SHUTDOWN_GRACE_MS);
        for server in self.servers {
            if tokio::time::timeout(grace, server).await.is_err() {
                tracing::warn!("a listener did not stop within the grace period");
            }
        }
        if let Err(error) = self.node.shutdown().await {
            tracing::warn!(%error, "raft shutdown");
        }
    }
}

//! Endpoints and gRPC channels: parse `--endpoints`, connect with explicit timeouts, and run
//! one unary call under `--command-timeout`.

use std::future::Future;
use std::time::Duration;

use aspen_proto::etcdserverpb::auth_client::AuthClient;
use aspen_proto::etcdserverpb::cluster_client::ClusterClient;
use aspen_proto::etcdserverpb::kv_client::KvClient;
use aspen_proto::etcdserverpb::lease_client::LeaseClient;
use aspen_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use aspen_proto::etcdserverpb::watch_client::WatchClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::error::CliError;
use crate::limits::{ENDPOINTS_MAX, RESPONSE_BYTES_MAX};

/// HTTP/2 keepalive: notice a dead server during a long watch or snapshot.
const KEEPALIVE_INTERVAL_S: u64 = 30;
const KEEPALIVE_TIMEOUT_S: u64 = 10;

/// Turns "127.0.0.1:2379", "http://127.0.0.1:2379" or "https://127.0.0.1:2379" into a URL
/// tonic accepts. A bare host:port is https when `tls` (any TLS flag given), as in etcdctl.
pub fn endpoint_url(endpoint: &str, tls: bool) -> Result<String, CliError> {
    let endpoint = endpoint.trim();
    if endpoint.is_empty() {
        return Err(CliError::usage("--endpoints: empty endpoint"));
    }
    let url = if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        endpoint.to_string()
    } else if endpoint.contains("://") {
        return Err(CliError::usage(format!(
            "--endpoints: {endpoint}: unsupported scheme; use host:port, http://host:port or \
             https://host:port"
        )));
    } else if tls {
        format!("https://{endpoint}")
    } else {
        format!("http://{endpoint}")
    };
    Endpoint::from_shared(url.clone())
        .map_err(|e| CliError::usage(format!("--endpoints: {endpoint}: {e}")))?;
    Ok(url)
}

/// The endpoint list, checked: at least one, at most `ENDPOINTS_MAX`, each parseable.
pub fn endpoint_list(endpoints: &[String], tls: bool) -> Result<Vec<String>, CliError> {
    let endpoints: Vec<&String> = endpoints.iter().filter(|e| !e.trim().is_empty()).collect();
    if endpoints.is_empty() {
        return Err(CliError::usage("--endpoints: no endpoint given"));
    }
    if endpoints.len() > ENDPOINTS_MAX {
        return Err(CliError::usage(format!(
            "--endpoints: {} endpoints, at most {ENDPOINTS_MAX}",
            endpoints.len()
        )));
    }
    endpoints.iter().map(|e| endpoint_url(e, tls)).collect()
}

/// How to reach the servers, shared by every command.
#[derive(Debug, Clone)]
pub struct Dial {
    pub dial_timeout: Duration,
    pub command_timeout: Duration,
    /// For https:// endpoints: `--cacert`, `--cert`, `--key`, `--insecure-skip-tls-verify`.
    pub tls: TlsFlags,
    /// `--user`/`--password`: authenticate on each connection and send the token with every
    /// request, as etcdctl does.
    pub credentials: Option<Credentials>,
}

/// etcdctl's TLS flags; the rustls configuration is built on first https use.
#[derive(Debug, Clone, Default)]
pub struct TlsFlags {
    pub options: aspen_tls::ClientTlsOptions,
    built: std::sync::Arc<std::sync::OnceLock<Result<aspen_tls::ClientTls, String>>>,
}

impl TlsFlags {
    pub fn new(options: aspen_tls::ClientTlsOptions) -> TlsFlags {
        TlsFlags {
            options,
            built: Default::default(),
        }
    }

    /// Whether any TLS flag was given: then host:port endpoints are https.
    pub fn any_given(&self) -> bool {
        let o = &self.options;
        o.ca_file.is_some()
            || o.cert_file.is_some()
            || o.key_file.is_some()
            || o.insecure_skip_verify
    }

    fn client(&self) -> Result<aspen_tls::ClientTls, CliError> {
        self.built
            .get_or_init(|| aspen_tls::ClientTls::new(&self.options).map_err(|e| e.to_string()))
            .clone()
            .map_err(CliError::usage)
    }
}

/// A user name and password for etcd's Authenticate.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <password>)", self.user)
    }
}

impl Credentials {
    /// etcdctl's rule: `--user name:password`, or `--user name` with `--password`.
    pub fn parse(
        user: Option<&str>,
        password: Option<&str>,
    ) -> Result<Option<Credentials>, CliError> {
        let Some(user) = user else {
            if password.is_some() {
                return Err(CliError::usage("--password needs --user"));
            }
            return Ok(None);
        };
        let (name, password) = match (user.split_once(':'), password) {
            (Some(_), Some(_)) => {
                return Err(CliError::usage(
                    "--user includes a password; --password must not be given too",
                ));
            }
            (Some((name, inline)), None) => (name, inline),
            (None, Some(password)) => (user, password),
            // etcdctl prompts; aspenctl never reads a terminal, so it asks for the flag.
            (None, None) => {
                return Err(CliError::usage(
                    "--user NAME needs a password: --user NAME:PASSWORD or --password",
                ));
            }
        };
        if name.is_empty() {
            return Err(CliError::usage("--user: empty user name"));
        }
        Ok(Some(Credentials {
            user: name.to_string(),
            password: password.to_string(),
        }))
    }
}

/// Adds the auth token, if any, to every request sent on a channel (etcd's `token` metadata).
#[derive(Debug, Clone, Default)]
pub struct Token(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Token {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = &self.0 {
            request.metadata_mut().insert("token", token.clone());
        }
        Ok(request)
    }
}

/// A channel whose requests carry the connection's token.
pub type AuthedChannel = InterceptedService<Channel, Token>;

impl Dial {
    /// A channel to `url`, over TLS when it is https://.
    fn channel(&self, url: &str, lazy: bool) -> Result<ChannelFuture, CliError> {
        let endpoint = self.endpoint(url)?;
        if url.starts_with("https://") {
            let connector = self.tls.client()?.connector();
            if lazy {
                return Ok(ChannelFuture::Ready(
                    endpoint.connect_with_connector_lazy(connector),
                ));
            }
            return Ok(ChannelFuture::Pending(Box::pin(async move {
                endpoint.connect_with_connector(connector).await
            })));
        }
        if lazy {
            return Ok(ChannelFuture::Ready(endpoint.connect_lazy()));
        }
        Ok(ChannelFuture::Pending(Box::pin(async move {
            endpoint.connect().await
        })))
    }

    fn endpoint(&self, url: &str) -> Result<Endpoint, CliError> {
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| CliError::usage(format!("--endpoints: {url}: {e}")))?;
        Ok(endpoint
            .connect_timeout(self.dial_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(KEEPALIVE_INTERVAL_S))
            .keep_alive_timeout(Duration::from_secs(KEEPALIVE_TIMEOUT_S))
            .keep_alive_while_idle(true))
    }

    /// Connects to one endpoint now, so an unreachable server is reported before any request.
    pub async fn connect(&self, url: &str) -> Result<Channel, CliError> {
        let connecting = match self.channel(url, false)? {
            ChannelFuture::Ready(channel) => return Ok(channel),
            ChannelFuture::Pending(connecting) => connecting,
        };
        match tokio::time::timeout(self.dial_timeout, connecting).await {
            Ok(Ok(channel)) => Ok(channel),
            Ok(Err(error)) => Err(CliError::connection(format!(
                "cannot connect to {}: {}",
                display_endpoint(url),
                transport_error_text(&error)
            ))),
            Err(_) => Err(CliError::connection(format!(
                "cannot connect to {}: timed out after {:?} (--dial-timeout)",
                display_endpoint(url),
                self.dial_timeout
            ))),
        }
    }

    /// A channel that connects on first use; for benchmarks that open many.
    pub fn connect_lazy(&self, url: &str) -> Result<Channel, CliError> {
        match self.channel(url, true)? {
            ChannelFuture::Ready(channel) => Ok(channel),
            ChannelFuture::Pending(_) => Err(CliError::usage("internal: lazy channel pending")),
        }
    }

    /// Connects to `url` and, with `--user`, authenticates there; every request on the
    /// returned channel carries the token.
    pub async fn connect_authed(&self, url: &str) -> Result<AuthedChannel, CliError> {
        let channel = self.connect(url).await?;
        let token = self.authenticate(&channel).await?;
        Ok(InterceptedService::new(channel, token))
    }

    /// With `--user`: connects to `url`, authenticates there, and returns the token, for a
    /// client that sends its requests by other means (`bench --wire h2`); `None` without.
    pub async fn token_for(&self, url: &str) -> Result<Option<http::HeaderValue>, CliError> {
        if self.credentials.is_none() {
            return Ok(None);
        }
        let channel = self.connect(url).await?;
        let Token(token) = self.authenticate(&channel).await?;
        token
            .map(|value| {
                http::HeaderValue::from_bytes(value.as_encoded_bytes())
                    .map_err(|_| CliError::request("authenticate: the token is not a header value"))
            })
            .transpose()
    }

    /// The TLS connector for an https:// `url`, `None` for http://.
    pub fn tls_connector(&self, url: &str) -> Result<Option<aspen_tls::TlsConnector>, CliError> {
        if url.starts_with("https://") {
            return Ok(Some(self.tls.client()?.connector()));
        }
        Ok(None)
    }

    async fn authenticate(&self, channel: &Channel) -> Result<Token, CliError> {
        let Some(credentials) = &self.credentials else {
            return Ok(Token::default());
        };
        let request = aspen_proto::etcdserverpb::AuthenticateRequest {
            name: credentials.user.clone(),
            password: credentials.password.clone(),
        };
        let mut client = AuthClient::new(channel.clone());
        let response = unary(
            self.command_timeout,
            "authenticate",
            client.authenticate(request),
        )
        .await?;
        let token = MetadataValue::try_from(response.token.as_str()).map_err(|_| {
            CliError::request("authenticate: the server sent a token that is not ASCII")
        })?;
        Ok(Token(Some(token)))
    }

    /// Connects to the first endpoint that answers, in the order given (as etcdctl does).
    pub async fn connect_any(&self, urls: &[String]) -> Result<Conn, CliError> {
        let mut last_error = None;
        for url in urls {
            match self.connect_authed(url).await {
                Ok(channel) => {
                    return Ok(Conn {
                        channel,
                        endpoint: display_endpoint(url),
                        command_timeout: self.command_timeout,
                    });
                }
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| CliError::usage("--endpoints: no endpoint given")))
    }

    pub async fn connect_conn(&self, url: &str) -> Result<Conn, CliError> {
        Ok(Conn {
            channel: self.connect_authed(url).await?,
            endpoint: display_endpoint(url),
            command_timeout: self.command_timeout,
        })
    }
}

/// tonic's transport error, with its cause chain ("transport error: tcp connect error: ...").
fn transport_error_text(error: &tonic::transport::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    // Bounded: error chains are short, but never trust that.
    for _ in 0..8 {
        let Some(cause) = source else { break };
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A channel now (lazy) or once connected.
enum ChannelFuture {
    Ready(Channel),
    Pending(
        std::pin::Pin<Box<dyn Future<Output = Result<Channel, tonic::transport::Error>> + Send>>,
    ),
}

/// "http://127.0.0.1:2379" shown as etcdctl shows it: "127.0.0.1:2379".
pub fn display_endpoint(url: &str) -> String {
    let bare = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    bare.unwrap_or(url).to_string()
}

/// One connected server.
#[derive(Debug, Clone)]
pub struct Conn {
    pub channel: AuthedChannel,
    pub endpoint: String,
    pub command_timeout: Duration,
}

impl Conn {
    pub fn kv(&self) -> KvClient<AuthedChannel> {
        KvClient::new(self.channel.clone()).max_decoding_message_size(RESPONSE_BYTES_MAX)
    }

    pub fn watch(&self) -> WatchClient<AuthedChannel> {
        WatchClient::new(self.channel.clone()).max_decoding_message_size(RESPONSE_BYTES_MAX)
    }

    pub fn lease(&self) -> LeaseClient<AuthedChannel> {
        LeaseClient::new(self.channel.clone()).max_decoding_message_size(RESPONSE_BYTES_MAX)
    }

    pub fn cluster(&self) -> ClusterClient<AuthedChannel> {
        ClusterClient::new(self.channel.clone()).max_decoding_message_size(RESPONSE_BYTES_MAX)
    }

    pub fn maintenance(&self) -> MaintenanceClient<AuthedChannel> {
        MaintenanceClient::new(self.channel.clone()).max_decoding_message_size(RESPONSE_BYTES_MAX)
    }

    /// A request carrying `--command-timeout` as its gRPC deadline.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(self.command_timeout);
        request
    }

    pub fn auth(&self) -> AuthClient<AuthedChannel> {
        AuthClient::new(self.channel.clone()).max_decoding_message_size(RESPONSE_BYTES_MAX)
    }

    /// Runs one unary call under `--command-timeout`; `what` names it in errors.
    pub async fn call<T, F>(&self, what: &str, call: F) -> Result<T, CliError>
    where
        F: Future<Output = Result<Response<T>, Status>>,
    {
        unary(self.command_timeout, what, call).await
    }
}

pub async fn unary<T, F>(timeout: Duration, what: &str, call: F) -> Result<T, CliError>
where
    F: Future<Output = Result<Response<T>, Status>>,
{
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(CliError::from_status(what, &status)),
        Err(_) => Err(CliError::request(format!(
            "{what}: timed out after {timeout:?} (--command-timeout)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn endpoints_accept_host_port_http_and_https() {
        assert_eq!(
            endpoint_url("127.0.0.1:2379", false).expect("host:port"),
            "http://127.0.0.1:2379"
        );
        assert_eq!(
            endpoint_url("127.0.0.1:2379", true).expect("host:port with TLS flags"),
            "https://127.0.0.1:2379"
        );
        assert_eq!(
            endpoint_url("http://localhost:2379", true).expect("http"),
            "http://localhost:2379"
        );
        assert_eq!(
            endpoint_url("https://localhost:2379", false).expect("https"),
            "https://localhost:2379"
        );
        assert_eq!(display_endpoint("http://localhost:2379"), "localhost:2379");
        assert_eq!(display_endpoint("https://localhost:2379"), "localhost:2379");
    }

    #[test]
    fn endpoints_refuse_other_schemes_and_empty_lists() {
        let unix = endpoint_url("unixs://a:2379", false).expect_err("unixs");
        assert_eq!(unix.kind, ErrorKind::Usage);
        let empty = endpoint_list(&[String::new()], false).expect_err("empty");
        assert_eq!(empty.kind, ErrorKind::Usage);
        let many: Vec<String> = (0..=ENDPOINTS_MAX).map(|i| format!("h:{i}")).collect();
        assert_eq!(
            endpoint_list(&many, false).expect_err("too many").kind,
            ErrorKind::Usage
        );
    }
}

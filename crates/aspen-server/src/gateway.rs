//! etcd 3.4's gRPC-JSON gateway on the client port: `POST /v3/<service>/<call>` (and the
//! deprecated `/v3beta/...`) with a JSON body, answered in JSON, as etcd's embedded
//! grpc-gateway (v1) does.
//!
//! Like etcd's gateway, this one is a gRPC client of the server it sits in: each request is
//! decoded from JSON into the method's protobuf message, sent as a gRPC call to the same
//! tonic routes the client port serves, and the answer is encoded back to JSON. So every
//! semantic (validation, errors, leader forwarding, `hasleader`) is the gRPC service's own.
//! No message is written by hand: the JSON mapping comes from the protobuf descriptors
//! (`aspen_proto::FILE_DESCRIPTOR_SET`, through `prost-reflect`) with grpc-gateway's
//! settings: proto field names, 64-bit integers as strings, bytes in base64, enums by name,
//! default values left out. Unknown fields are ignored, names in either proto or JSON form
//! and integers as numbers or strings are accepted.
//!
//! Streams (watch, lease keep-alive, election observe, snapshot) answer one JSON object per
//! line, `{"result":{...}}`, and end an error as `{"error":{"grpc_code":..,...}}`. A
//! streamed request body is a sequence of JSON objects; its end closes the gRPC request
//! stream (a watch goes on, a keep-alive ends after its answers), as in etcd.
//! Request headers `Grpc-Metadata-<key>` travel as gRPC metadata `<key>` (e.g.
//! `Grpc-Metadata-hasleader: true`), and `Authorization` as `authorization`.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;

use aspen_core::convert::usize_from;
use aspen_core::limits::{GATEWAY_STREAM_REQUESTS_QUEUED_MAX, gateway_json_bytes_max};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, Request, Response, StatusCode, header};
use axum::routing::{any, post};
use futures_util::StreamExt;
use http_body_util::BodyExt;
use prost::bytes::{Buf, BufMut, BytesMut};
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, Kind, MessageDescriptor, SerializeOptions,
};
use serde::{Serialize, Serializer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::Service;
use tonic::service::Routes;
use tonic::{Code, Status};

/// etcd 3.4's HTTP bindings (the `google.api.http` options of its rpc.proto, v3lock.proto and
/// v3election.proto): path under the prefix, gRPC service, method. etcd binds both Hash and
/// HashKV to `maintenance/hash`; its gateway answers Hash there, and so does this one.
const BINDINGS: &[(&str, &str, &str)] = &[
    ("kv/range", "etcdserverpb.KV", "Range"),
    ("kv/put", "etcdserverpb.KV", "Put"),
    ("kv/deleterange", "etcdserverpb.KV", "DeleteRange"),
    ("kv/txn", "etcdserverpb.KV", "Txn"),
    ("kv/compaction", "etcdserverpb.KV", "Compact"),
    ("watch", "etcdserverpb.Watch", "Watch"),
    ("lease/grant", "etcdserverpb.Lease", "LeaseGrant"),
    ("lease/revoke", "etcdserverpb.Lease", "LeaseRevoke"),
    ("kv/lease/revoke", "etcdserverpb.Lease", "LeaseRevoke"),
    ("lease/keepalive", "etcdserverpb.Lease", "LeaseKeepAlive"),
    ("lease/timetolive", "etcdserverpb.Lease", "LeaseTimeToLive"),
    (
        "kv/lease/timetolive",
        "etcdserverpb.Lease",
        "LeaseTimeToLive",
    ),
    ("lease/leases", "etcdserverpb.Lease", "LeaseLeases"),
    ("kv/lease/leases", "etcdserverpb.Lease", "LeaseLeases"),
    ("cluster/member/add", "etcdserverpb.Cluster", "MemberAdd"),
    (
        "cluster/member/remove",
        "etcdserverpb.Cluster",
        "MemberRemove",
    ),
    (
        "cluster/member/update",
        "etcdserverpb.Cluster",
        "MemberUpdate",
    ),
    ("cluster/member/list", "etcdserverpb.Cluster", "MemberList"),
    (
        "cluster/member/promote",
        "etcdserverpb.Cluster",
        "MemberPromote",
    ),
    ("maintenance/alarm", "etcdserverpb.Maintenance", "Alarm"),
    ("maintenance/status", "etcdserverpb.Maintenance", "Status"),
    (
        "maintenance/defragment",
        "etcdserverpb.Maintenance",
        "Defragment",
    ),
    ("maintenance/hash", "etcdserverpb.Maintenance", "Hash"),
    (
        "maintenance/snapshot",
        "etcdserverpb.Maintenance",
        "Snapshot",
    ),
    (
        "maintenance/transfer-leadership",
        "etcdserverpb.Maintenance",
        "MoveLeader",
    ),
    ("auth/enable", "etcdserverpb.Auth", "AuthEnable"),
    ("auth/disable", "etcdserverpb.Auth", "AuthDisable"),
    ("auth/authenticate", "etcdserverpb.Auth", "Authenticate"),
    ("auth/user/add", "etcdserverpb.Auth", "UserAdd"),
    ("auth/user/get", "etcdserverpb.Auth", "UserGet"),
    ("auth/user/list", "etcdserverpb.Auth", "UserList"),
    ("auth/user/delete", "etcdserverpb.Auth", "UserDelete"),
    (
        "auth/user/changepw",
        "etcdserverpb.Auth",
        "UserChangePassword",
    ),
    ("auth/user/grant", "etcdserverpb.Auth", "UserGrantRole"),
    ("auth/user/revoke", "etcdserverpb.Auth", "UserRevokeRole"),
    ("auth/role/add", "etcdserverpb.Auth", "RoleAdd"),
    ("auth/role/get", "etcdserverpb.Auth", "RoleGet"),
    ("auth/role/list", "etcdserverpb.Auth", "RoleList"),
    ("auth/role/delete", "etcdserverpb.Auth", "RoleDelete"),
    (
        "auth/role/grant",
        "etcdserverpb.Auth",
        "RoleGrantPermission",
    ),
    (
        "auth/role/revoke",
        "etcdserverpb.Auth",
        "RoleRevokePermission",
    ),
    ("lock/lock", "v3lockpb.Lock", "Lock"),
    ("lock/unlock", "v3lockpb.Lock", "Unlock"),
    ("election/campaign", "v3electionpb.Election", "Campaign"),
    ("election/proclaim", "v3electionpb.Election", "Proclaim"),
    ("election/leader", "v3electionpb.Election", "Leader"),
    ("election/observe", "v3electionpb.Election", "Observe"),
    ("election/resign", "v3electionpb.Election", "Resign"),
];

/// etcd 3.4 serves the gateway under both.
const PREFIXES: [&str; 2] = ["/v3/", "/v3beta/"];

/// grpc-gateway v1's JSON (`JSONPb{OrigName: true}`).
const JSON_OUT: SerializeOptions = SerializeOptions::new()
    .use_proto_field_name(true)
    .stringify_64_bit_integers(true)
    .use_enum_numbers(false)
    .skip_default_fields(true);

/// What one HTTP binding calls.
struct Method {
    grpc_path: String,
    input: MessageDescriptor,
    output: MessageDescriptor,
    client_streaming: bool,
    server_streaming: bool,
}

#[derive(Clone)]
struct Gateway {
    routes: Routes,
    json_bytes_max: usize,
}

/// The gateway's routes, calling the gRPC services in `routes` (the client port's own).
pub fn router(routes: Routes, request_bytes_max: u64) -> Router {
    let pool = match DescriptorPool::decode(aspen_proto::FILE_DESCRIPTOR_SET) {
        Ok(pool) => pool,
        Err(error) => unreachable!("aspen-proto's compiled descriptors decode: {error}"),
    };
    let gateway = Gateway {
        routes,
        json_bytes_max: usize_from(gateway_json_bytes_max(request_bytes_max)),
    };
    let mut router = Router::new();
    for (path, service, method) in BINDINGS {
        let method = Arc::new(resolve(&pool, service, method));
        for prefix in PREFIXES {
            let gateway = gateway.clone();
            let method = method.clone();
            let handler =
                move |certificate_user: Option<axum::Extension<aspen_api::CertificateUser>>,
                      headers: HeaderMap,
                      body: Body| {
                    let gateway = gateway.clone();
                    let method = method.clone();
                    let certificate_user = certificate_user.map(|axum::Extension(user)| user);
                    async move { call(gateway, method, certificate_user, headers, body).await }
                };
            router = router.route(
                &format!("{prefix}{path}"),
                post(handler).fallback(method_not_allowed),
            );
        }
    }
    for prefix in PREFIXES {
        router = router.route(&format!("{prefix}{{*rest}}"), any(not_found));
    }
    router
}

fn resolve(pool: &DescriptorPool, service: &str, method: &str) -> Method {
    let service_desc = pool
        .get_service_by_name(service)
        .unwrap_or_else(|| panic!("service {service} is compiled"));
    let method_desc = service_desc
        .methods()
        .find(|m| m.name() == method)
        .unwrap_or_else(|| panic!("method {service}/{method} is compiled"));
    Method {
        grpc_path: format!("/{service}/{method}"),
        input: method_desc.input(),
        output: method_desc.output(),
        client_streaming: method_desc.is_client_streaming(),
        server_streaming: method_desc.is_server_streaming(),
    }
}

/// Go's `http.Error` texts, as etcd's gateway answers them.
async fn method_not_allowed() -> (StatusCode, &'static str) {
    (StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n")
}

async fn not_found() -> (StatusCode, &'static str) {
    (StatusCode::NOT_FOUND, "Not Found\n")
}

async fn call(
    gateway: Gateway,
    method: Arc<Method>,
    certificate_user: Option<aspen_api::CertificateUser>,
    headers: HeaderMap,
    body: Body,
) -> Response<Body> {
    let grpc_body = if method.client_streaming {
        match streamed_requests(&gateway, &method, body).await {
            Ok(body) => body,
            Err(response) => return response,
        }
    } else {
        match single_request(&gateway, &method, body).await {
            Ok(body) => body,
            Err(response) => return response,
        }
    };
    let mut request = grpc_request(&method, &headers, grpc_body);
    // The client certificate's user (serve.rs) goes with the call, as over gRPC.
    if let Some(user) = certificate_user {
        request.extensions_mut().insert(user);
    }
    let mut routes = gateway.routes.clone();
    let ready = std::future::poll_fn(|cx| Service::<Request<Body>>::poll_ready(&mut routes, cx));
    let Ok(()) = ready.await;
    let Ok(response) = routes.call(request).await;
    let reader = GrpcReader::new(response);
    if method.server_streaming {
        stream_response(method, reader).await
    } else {
        unary_response(&method, reader).await
    }
}

/// A unary request: the body's first JSON value (none, or `null`, is the empty message).
async fn single_request(
    gateway: &Gateway,
    method: &Method,
    body: Body,
) -> Result<Body, Response<Body>> {
    let bytes = axum::body::to_bytes(body, gateway.json_bytes_max)
        .await
        .map_err(|error| error_response(&Status::invalid_argument(error.to_string())))?;
    let mut values = serde_json::Deserializer::from_slice(&bytes).into_iter::<serde_json::Value>();
    let message = match values.next() {
        None | Some(Ok(serde_json::Value::Null)) => DynamicMessage::new(method.input.clone()),
        Some(Ok(value)) => decode_json(&method.input, value)
            .map_err(|error| error_response(&Status::invalid_argument(error)))?,
        Some(Err(error)) => {
            let message = json_error_text(&error);
            return Err(error_response(&Status::invalid_argument(message)));
        }
    };
    Ok(Body::from(grpc_frame(&message)))
}

/// A streamed request: JSON values one after another. The first is decoded before the call
/// starts (a bad one fails the request, as etcd's gateway does: code Unknown); the rest are
/// fed to the call as they arrive, until the body ends or a value does not decode.
async fn streamed_requests(
    gateway: &Gateway,
    method: &Method,
    body: Body,
) -> Result<Body, Response<Body>> {
    let mut values = JsonValues {
        body,
        buffer: Vec::new(),
        ended: false,
        bytes_max: gateway.json_bytes_max,
    };
    let unknown = |message: String| error_response(&Status::unknown(message));
    let first = match values.next().await.map_err(unknown)? {
        Some(value) => Some(decode_json(&method.input, value).map_err(unknown)?),
        None => None,
    };
    let (sender, receiver) =
        mpsc::channel::<Result<Bytes, Infallible>>(GATEWAY_STREAM_REQUESTS_QUEUED_MAX as usize);
    if let Some(first) = first {
        let queued = sender.try_send(Ok(grpc_frame(&first)));
        assert!(queued.is_ok(), "an empty queue takes one request");
        let input = method.input.clone();
        tokio::spawn(async move {
            while let Ok(Some(value)) = values.next().await {
                let Ok(message) = decode_json(&input, value) else {
                    return;
                };
                if sender.send(Ok(grpc_frame(&message))).await.is_err() {
                    return;
                }
            }
        });
    }
    Ok(Body::from_stream(ReceiverStream::new(receiver)))
}

/// Splits a request body into JSON values, holding at most `bytes_max` unparsed bytes.
struct JsonValues {
    body: Body,
    buffer: Vec<u8>,
    ended: bool,
    bytes_max: usize,
}

impl JsonValues {
    async fn next(&mut self) -> Result<Option<serde_json::Value>, String> {
        loop {
            let mut values =
                serde_json::Deserializer::from_slice(&self.buffer).into_iter::<serde_json::Value>();
            match values.next() {
                Some(Ok(value)) => {
                    let used = values.byte_offset();
                    self.buffer.drain(..used);
                    return Ok(Some(value));
                }
                Some(Err(error)) if !error.is_eof() => return Err(json_error_text(&error)),
                None if self.ended => return Ok(None),
                Some(Err(_)) if self.ended => return Err("unexpected EOF".to_string()),
                _ => {}
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if self.buffer.len() + data.len() > self.bytes_max {
                        return Err(format!(
                            "a streamed request is larger than {} bytes",
                            self.bytes_max
                        ));
                    }
                    self.buffer.extend_from_slice(&data);
                }
                Some(Err(error)) => return Err(error.to_string()),
                None => self.ended = true,
            }
        }
    }
}

/// serde_json's error text for a truncated value is Go's `unexpected EOF`, as etcd answers.
fn json_error_text(error: &serde_json::Error) -> String {
    if error.is_eof() {
        "unexpected EOF".to_string()
    } else {
        error.to_string()
    }
}

/// jsonpb's decoding: unknown fields are ignored, unknown enum names are errors. prost-reflect
/// does both or neither, so unknown fields are dropped first and the rest decoded strictly.
fn decode_json(
    input: &MessageDescriptor,
    mut value: serde_json::Value,
) -> Result<DynamicMessage, String> {
    drop_unknown_fields(input, &mut value);
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    DynamicMessage::deserialize_with_options(input.clone(), value, &options)
        .map_err(|error| error.to_string())
}

/// Removes the keys of `value` (and of the messages inside it) that name no field of `desc`
/// by its proto or JSON name.
fn drop_unknown_fields(desc: &MessageDescriptor, value: &mut serde_json::Value) {
    let serde_json::Value::Object(object) = value else {
        return;
    };
    let field = |key: &str| {
        desc.get_field_by_json_name(key)
            .or_else(|| desc.get_field_by_name(key))
    };
    object.retain(|key, _| field(key).is_some());
    for (key, inner) in object.iter_mut() {
        let Some(field) = field(key) else { continue };
        let Kind::Message(message) = field.kind() else {
            continue;
        };
        if field.is_map() {
            continue;
        }
        match inner {
            serde_json::Value::Array(items) if field.is_list() => {
                for item in items {
                    drop_unknown_fields(&message, item);
                }
            }
            _ => drop_unknown_fields(&message, inner),
        }
    }
}

/// One length-prefixed, uncompressed gRPC message.
fn grpc_frame(message: &DynamicMessage) -> Bytes {
    let payload = prost::Message::encode_to_vec(message);
    let mut frame = BytesMut::with_capacity(5 + payload.len());
    frame.put_u8(0);
    // The JSON body was read under `json_bytes_max`, and its protobuf is smaller still.
    let Ok(payload_len) = u32::try_from(payload.len()) else {
        unreachable!(
            "a request of {} bytes passed the gateway's size limit",
            payload.len()
        );
    };
    frame.put_u32(payload_len);
    frame.put_slice(&payload);
    frame.freeze()
}

fn grpc_request(method: &Method, headers: &HeaderMap, body: Body) -> Request<Body> {
    let request = Request::builder()
        .method("POST")
        .uri(method.grpc_path.as_str())
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .body(body);
    let mut request = match request {
        Ok(request) => request,
        Err(error) => unreachable!("a gRPC path is a valid URI: {error}"),
    };
    let metadata = request.headers_mut();
    for (name, value) in headers {
        if let Some(key) = name.as_str().strip_prefix("grpc-metadata-") {
            if let Ok(key) = HeaderName::from_bytes(key.as_bytes()) {
                metadata.append(key, value.clone());
            }
        } else if name == header::AUTHORIZATION {
            metadata.append(header::AUTHORIZATION, value.clone());
        }
    }
    request
}

/// Reads a gRPC response: its messages, then its status.
struct GrpcReader {
    body: tonic::body::Body,
    buffer: BytesMut,
    status: Option<Status>,
    ended: bool,
}

impl GrpcReader {
    fn new(response: Response<tonic::body::Body>) -> GrpcReader {
        let (parts, body) = response.into_parts();
        // A call that fails before answering sends its status in the headers alone.
        let status = Status::from_header_map(&parts.headers);
        GrpcReader {
            body,
            buffer: BytesMut::new(),
            ended: status.is_some(),
            status,
        }
    }

    /// The next message; `Ok(None)` once the call ended with OK, its error otherwise.
    async fn next(&mut self) -> Result<Option<Bytes>, Status> {
        loop {
            if self.buffer.len() >= 5 {
                assert_eq!(self.buffer[0], 0, "in-process calls are not compressed");
                let length = u32::from_be_bytes([
                    self.buffer[1],
                    self.buffer[2],
                    self.buffer[3],
                    self.buffer[4],
                ]) as usize;
                if self.buffer.len() >= 5 + length {
                    self.buffer.advance(5);
                    return Ok(Some(self.buffer.split_to(length).freeze()));
                }
            }
            if self.ended {
                return match self.status.take() {
                    Some(status) if status.code() != Code::Ok => Err(status),
                    _ => Ok(None),
                };
            }
            match self.body.frame().await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.buffer.extend_from_slice(&data),
                    Err(frame) => {
                        if let Some(trailers) = frame.trailers_ref() {
                            self.status = Status::from_header_map(trailers);
                            self.ended = true;
                        }
                    }
                },
                Some(Err(status)) => return Err(status),
                None => {
                    self.ended = true;
                    if self.status.is_none() {
                        self.status =
                            Some(Status::internal("the gRPC call ended without a status"));
                    }
                }
            }
        }
    }
}

async fn unary_response(method: &Method, mut reader: GrpcReader) -> Response<Body> {
    let message = match reader.next().await {
        Ok(Some(message)) => message,
        Ok(None) => return error_response(&Status::internal("the gRPC call sent no response")),
        Err(status) => return error_response(&status),
    };
    if let Err(status) = reader.next().await {
        return error_response(&status);
    }
    match decode_output(&method.output, message) {
        Ok(message) => json_response(StatusCode::OK, to_json(&JsonMessage(&message))),
        Err(status) => error_response(&status),
    }
}

async fn stream_response(method: Arc<Method>, mut reader: GrpcReader) -> Response<Body> {
    // The HTTP status goes out with the first message, so wait for it: a call that fails
    // at once answers its error's status, as etcd's gateway does.
    let first = match reader.next().await {
        Ok(Some(first)) => first,
        Ok(None) => return json_response(StatusCode::OK, Vec::new()),
        Err(status) => {
            return json_response(http_status(status.code()), stream_error(&status));
        }
    };
    let first = stream_chunk(&method.output, first);
    let rest = futures_util::stream::unfold(Some(reader), move |reader| {
        let method = method.clone();
        async move {
            let mut reader = reader?;
            match reader.next().await {
                Ok(Some(message)) => Some((stream_chunk(&method.output, message), Some(reader))),
                Ok(None) => None,
                Err(status) => Some((stream_error(&status), None)),
            }
        }
    });
    let chunks = futures_util::stream::once(std::future::ready(first))
        .chain(rest)
        .map(|chunk| Ok::<_, Infallible>(Bytes::from(chunk)));
    let mut response = Response::new(Body::from_stream(chunks));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn decode_output(output: &MessageDescriptor, message: Bytes) -> Result<DynamicMessage, Status> {
    DynamicMessage::decode(output.clone(), message)
        .map_err(|error| Status::internal(format!("undecodable gRPC response: {error}")))
}

/// One line of a streamed answer: `{"result":...}` and a newline.
fn stream_chunk(output: &MessageDescriptor, message: Bytes) -> Vec<u8> {
    match decode_output(output, message) {
        Ok(message) => {
            let mut chunk = to_json(&StreamResult {
                result: JsonMessage(&message),
            });
            chunk.push(b'\n');
            chunk
        }
        Err(status) => stream_error(&status),
    }
}

/// How grpc-gateway v1 ends a stream with an error (no newline after it).
fn stream_error(status: &Status) -> Vec<u8> {
    let http = http_status(status.code());
    to_json(&StreamErrorChunk {
        error: StreamError {
            grpc_code: status.code() as i32,
            http_code: i32::from(http.as_u16()),
            message: status.message(),
            http_status: http.canonical_reason().unwrap_or(""),
        },
    })
}

fn error_response(status: &Status) -> Response<Body> {
    let body = to_json(&ErrorBody {
        error: status.message(),
        message: status.message(),
        code: status.code() as i32,
    });
    json_response(http_status(status.code()), body)
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// grpc-gateway v1's `HTTPStatusFromCode`, which etcd 3.4's gateway answers with.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// A protobuf message in grpc-gateway's JSON.
struct JsonMessage<'a>(&'a DynamicMessage);

impl Serialize for JsonMessage<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize_with_options(serializer, &JSON_OUT)
    }
}

#[derive(Serialize)]
struct StreamResult<'a> {
    result: JsonMessage<'a>,
}

/// grpc-gateway v1's error body; as a protobuf message, its empty fields are left out.
#[derive(Serialize)]
struct ErrorBody<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    error: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    message: &'a str,
    code: i32,
}

#[derive(Serialize)]
struct StreamErrorChunk<'a> {
    error: StreamError<'a>,
}

#[derive(Serialize)]
struct StreamError<'a> {
    grpc_code: i32,
    http_code: i32,
    #[serde(skip_serializing_if = "str::is_empty")]
    message: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    http_status: &'a str,
}

/// JSON as Go's encoding/json writes strings (which etcd's gateway uses for them): `<`, `>`,
/// `&`, U+2028 and U+2029 escaped as `\u00XX`/`\u20XX`, and `\b`, `\f` as `\u0008`, `\u000c`.
fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    let mut serializer = serde_json::Serializer::with_formatter(Vec::new(), GoFormatter);
    if let Err(error) = value.serialize(&mut serializer) {
        unreachable!("JSON of a decoded message and plain strings cannot fail: {error}");
    }
    serializer.into_inner()
}

struct GoFormatter;

impl serde_json::ser::Formatter for GoFormatter {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (at, c) in fragment.char_indices() {
            let escaped = match c {
                '<' => "\\u003c",
                '>' => "\\u003e",
                '&' => "\\u0026",
                '\u{2028}' => "\\u2028",
                '\u{2029}' => "\\u2029",
                _ => continue,
            };
            writer.write_all(&fragment.as_bytes()[start..at])?;
            writer.write_all(escaped.as_bytes())?;
            start = at + c.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }

    fn write_char_escape<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        escape: serde_json::ser::CharEscape,
    ) -> io::Result<()> {
        use serde_json::ser::CharEscape;
        let text: &[u8] = match escape {
            CharEscape::Quote => b"\\\"",
            CharEscape::ReverseSolidus => b"\\\\",
            CharEscape::LineFeed => b"\\n",
            CharEscape::CarriageReturn => b"\\r",
            CharEscape::Tab => b"\\t",
            CharEscape::Backspace => b"\\u0008",
            CharEscape::FormFeed => b"\\u000c",
            CharEscape::AsciiControl(byte) => {
                return write!(writer, "\\u{byte:04x}");
            }
            _ => b"",
        };
        writer.write_all(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> DescriptorPool {
        DescriptorPool::decode(aspen_proto::FILE_DESCRIPTOR_SET).unwrap()
    }

    #[test]
    fn every_binding_names_a_compiled_method() {
        let pool = pool();
        for (_, service, method) in BINDINGS {
            resolve(&pool, service, method);
        }
    }

    #[test]
    fn json_is_grpc_gateways() {
        use aspen_proto::etcdserverpb as pb;
        let response = pb::RangeResponse {
            header: Some(pb::ResponseHeader {
                cluster_id: u64::MAX,
                revision: 2,
                ..Default::default()
            }),
            kvs: vec![aspen_proto::mvccpb::KeyValue {
                key: b"foo".to_vec(),
                value: b"<&>".to_vec(),
                version: 1,
                ..Default::default()
            }],
            count: 1,
            more: false,
        };
        let bytes = Bytes::from(prost::Message::encode_to_vec(&response));
        let output = pool()
            .get_message_by_name("etcdserverpb.RangeResponse")
            .unwrap();
        let message = decode_output(&output, bytes).unwrap();
        let json = String::from_utf8(to_json(&JsonMessage(&message))).unwrap();
        assert_eq!(
            json,
            r#"{"header":{"cluster_id":"18446744073709551615","revision":"2"},"kvs":[{"key":"Zm9v","version":"1","value":"PCY+"}],"count":"1"}"#
        );
        let status = Status::failed_precondition("a <b>");
        assert_eq!(
            String::from_utf8(stream_error(&status)).unwrap(),
            r#"{"error":{"grpc_code":9,"http_code":412,"message":"a \u003cb\u003e","http_status":"Precondition Failed"}}"#
        );
    }

    #[test]
    fn requests_take_either_field_name_and_integers_as_strings_or_numbers() {
        use aspen_proto::etcdserverpb as pb;
        let input = pool()
            .get_message_by_name("etcdserverpb.RangeRequest")
            .unwrap();
        let value = serde_json::json!({
            "key": "Zm9v", "range_end": "Zm9w", "limit": 5, "revision": "7",
            "countOnly": true, "sort_order": "DESCEND", "sortTarget": 1, "unknown": [1]
        });
        let message = decode_json(&input, value).unwrap();
        let decoded: pb::RangeRequest =
            prost::Message::decode(prost::Message::encode_to_vec(&message).as_slice()).unwrap();
        assert_eq!(decoded.key, b"foo");
        assert_eq!(decoded.range_end, b"fop");
        assert_eq!((decoded.limit, decoded.revision), (5, 7));
        assert!(decoded.count_only);
        assert_eq!(
            decoded.sort_order,
            pb::range_request::SortOrder::Descend as i32
        );
        assert_eq!(
            decoded.sort_target,
            pb::range_request::SortTarget::Version as i32
        );
        assert!(decode_json(&input, serde_json::json!({"limit": "x"})).is_err());
        let bogus = decode_json(&input, serde_json::json!({"sort_order": "BOGUS"}));
        assert!(
            bogus.is_err(),
            "unknown enum names are errors, as in jsonpb"
        );
        let txn = pool()
            .get_message_by_name("etcdserverpb.TxnRequest")
            .unwrap();
        let nested = serde_json::json!({
            "success": [{"request_put": {"key": "Zm9v", "nope": 1}, "extra": true}]
        });
        let message = decode_json(&txn, nested).expect("unknown nested fields are dropped");
        let decoded: pb::TxnRequest =
            prost::Message::decode(prost::Message::encode_to_vec(&message).as_slice()).unwrap();
        assert_eq!(decoded.success.len(), 1);
    }
}

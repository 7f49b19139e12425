//! One error type for every command: what failed, why (etcd's own text where there is one),
//! and which exit code that means.

use std::fmt;

use tonic::{Code, Status};

/// Exit codes, as documented in the README.
pub const EXIT_OK: u8 = 0;
pub const EXIT_REQUEST_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_CONNECTION_FAILED: u8 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The server answered with an error, a request timed out, or a local file failed.
    Request,
    /// The command line (or a txn script) is wrong; nothing was sent.
    Usage,
    /// No endpoint could be reached, or the connection broke.
    Connection,
}

impl ErrorKind {
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::Request => EXIT_REQUEST_FAILED,
            ErrorKind::Usage => EXIT_USAGE,
            ErrorKind::Connection => EXIT_CONNECTION_FAILED,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    pub kind: ErrorKind,
    /// "<what failed>: <why>", printed after "aspenctl: ".
    pub message: String,
}

impl CliError {
    pub fn usage(message: impl Into<String>) -> CliError {
        CliError {
            kind: ErrorKind::Usage,
            message: message.into(),
        }
    }

    pub fn request(message: impl Into<String>) -> CliError {
        CliError {
            kind: ErrorKind::Request,
            message: message.into(),
        }
    }

    pub fn connection(message: impl Into<String>) -> CliError {
        CliError {
            kind: ErrorKind::Connection,
            message: message.into(),
        }
    }

    /// A failed gRPC call: `what` names the request ("put foo"), the status supplies etcd's
    /// error text ("etcdserver: requested lease not found").
    pub fn from_status(what: &str, status: &Status) -> CliError {
        CliError {
            kind: status_kind(status),
            message: format!("{what}: {}", status_text(status)),
        }
    }

    pub fn exit_code(&self) -> u8 {
        self.kind.exit_code()
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "aspenctl: {}", self.message)
    }
}

impl std::error::Error for CliError {}

/// Whether a failed call means the server said no, or the connection failed. etcd reports
/// its own unavailability ("etcdserver: no leader") as UNAVAILABLE too, with its prefix; a
/// transport failure has no such prefix.
pub fn status_kind(status: &Status) -> ErrorKind {
    let from_server = status.message().starts_with("etcdserver:")
        || status.message().starts_with("mvcc:")
        || status.message().starts_with("rpc error");
    if status.code() == Code::Unavailable && !from_server {
        ErrorKind::Connection
    } else {
        ErrorKind::Request
    }
}

/// The message to show: etcd's text as sent, or the code's name when the server sent none.
pub fn status_text(status: &Status) -> String {
    let message = status.message().trim();
    let mut text = if message.is_empty() {
        format!("{:?}", status.code())
    } else {
        message.to_string()
    };
    // A transport failure's message is only "transport error"; the cause (a refused TLS
    // handshake, a reset connection) is in the source chain. Bounded: chains are short.
    let mut source = std::error::Error::source(status);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct_and_documented() {
        assert_eq!(ErrorKind::Request.exit_code(), 1);
        assert_eq!(ErrorKind::Usage.exit_code(), 2);
        assert_eq!(ErrorKind::Connection.exit_code(), 3);
        assert_eq!(EXIT_OK, 0);
    }

    #[test]
    fn server_errors_are_request_failures() {
        let lease = Status::not_found("etcdserver: requested lease not found");
        let error = CliError::from_status("put foo", &lease);
        assert_eq!(error.exit_code(), EXIT_REQUEST_FAILED);
        assert_eq!(
            error.to_string(),
            "aspenctl: put foo: etcdserver: requested lease not found"
        );
        let compacted =
            Status::out_of_range("etcdserver: mvcc: required revision has been compacted");
        assert_eq!(status_kind(&compacted), ErrorKind::Request);
        // etcd's own unavailability is the server answering, not a broken connection.
        let no_leader = Status::unavailable("etcdserver: no leader");
        assert_eq!(status_kind(&no_leader), ErrorKind::Request);
    }

    #[test]
    fn transport_failures_are_connection_failures() {
        let refused = Status::unavailable("tcp connect error: Connection refused (os error 111)");
        assert_eq!(status_kind(&refused), ErrorKind::Connection);
        let error = CliError::from_status("get foo", &refused);
        assert_eq!(error.exit_code(), EXIT_CONNECTION_FAILED);
    }

    #[test]
    fn empty_status_messages_name_the_code() {
        let status = Status::new(Code::Internal, "");
        assert_eq!(status_text(&status), "Internal");
    }

    #[test]
    fn usage_errors_exit_2() {
        assert_eq!(CliError::usage("bad").exit_code(), EXIT_USAGE);
        assert_eq!(CliError::request("bad").exit_code(), EXIT_REQUEST_FAILED);
        assert_eq!(
            CliError::connection("bad").exit_code(),
            EXIT_CONNECTION_FAILED
        );
    }
}

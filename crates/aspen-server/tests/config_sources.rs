//! The configuration layer beyond `tests/config.rs`: problems name the variable or file that
//! set the value (figment's record of each key's source), and URL forms that the `http::Uri`
//! based parser must accept or refuse as the hand-written one did.

use std::collections::HashMap;
use std::io::Write;

use aspen_server::config::{ClusterBootstrapConfig, ConfigErrors};

fn from_sources(
    flags: &[&str],
    vars: &[(&str, &str)],
) -> Result<ClusterBootstrapConfig, ConfigErrors> {
    let args: Vec<String> = std::iter::once("aspen")
        .chain(flags.iter().copied())
        .map(String::from)
        .collect();
    let env: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    ClusterBootstrapConfig::from_sources(&args, &env)
}

fn problems(flags: &[&str], vars: &[(&str, &str)]) -> Vec<String> {
    match from_sources(flags, vars) {
        Err(ConfigErrors::Invalid(problems)) => problems,
        other => panic!("expected problems, got {other:?}"),
    }
}

#[test]
fn problems_name_the_source_of_a_value_not_given_on_the_command_line() {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(b"bcrypt-cost = 3\nsnapshot-count = 0\nstorage-backend = \"rocks\"\n")
        .expect("write config");
    let path = file.path().to_str().expect("utf-8 path");
    let found = problems(
        &["--config-file", path, "--snapshot-count", "0"],
        &[
            ("ASPEN_MAX_TXN_OPS", "0"),
            ("ASPEN_STORAGE_BACKEND", "disk"),
        ],
    );
    assert_eq!(
        found,
        [
            // The command line's value wins over the file's and is the flag as typed.
            "--snapshot-count must be greater than 0".to_string(),
            "--max-txn-ops must be greater than 0 (from ASPEN_MAX_TXN_OPS)".to_string(),
            "--storage-backend must be 'redb' or 'memory', got 'disk' (from \
             ASPEN_STORAGE_BACKEND)"
                .to_string(),
            format!("--bcrypt-cost 3 is out of bcrypt's range 4 to 31 (from --config-file {path})"),
        ]
    );
}

#[test]
fn urls_parse_as_before() {
    let config = from_sources(
        &[
            "--listen-client-urls",
            "HTTP://127.0.0.1:24290,http://[::1]:24291",
            "--advertise-client-urls",
            "http://Node-1.Example:24290",
        ],
        &[],
    )
    .expect("valid URLs");
    assert_eq!(
        config.listen_client_addrs,
        vec![
            "127.0.0.1:24290".parse().unwrap(),
            "[::1]:24291".parse().unwrap()
        ]
    );
    assert_eq!(
        config.advertise_client_urls,
        ["http://node-1.example:24290"]
    );
    let malformed = |url: &str| {
        format!(
            "--listen-client-urls: '{url}' is not an http:// or https:// URL with host and port"
        )
    };
    for url in [
        "http://user@127.0.0.1:24290",
        "http://127.0.0.1:99999",
        "http://127.0.0.1:",
        "127.0.0.1:24290",
        "unix://127.0.0.1:24290",
        "http://a_b:24290",
        "http://[::1:24290",
    ] {
        let found = problems(&["--listen-client-urls", url], &[]);
        assert_eq!(found, [malformed(url)], "{url}");
    }
    for url in ["http://127.0.0.1:24290/", "http://127.0.0.1:24290?x=1"] {
        let found = problems(&["--listen-client-urls", url], &[]);
        assert_eq!(
            found,
            [format!(
                "--listen-client-urls: '{url}' has a path or query; give only http://host:port"
            )],
            "{url}"
        );
    }
}

#[test]
fn the_log_filter_variable_is_not_an_unknown_one() {
    let config =
        from_sources(&[], &[("ASPEN_LOG", "debug"), ("ASPEN_LOG_LEVL", "warn")]).expect("valid");
    assert_eq!(
        config.warnings,
        ["ignoring unrecognized environment variable ASPEN_LOG_LEVL"]
    );
}

//! The origin's object storage in tests: an S3-API server on loopback
//! (`origin/tests/common/s3_server.rs`, moto), and a way to run a test with the credentials a
//! real deployment gives in its environment.
//!
//! The workspace forbids `unsafe`, so a test cannot set `AWS_ACCESS_KEY_ID` for itself:
//! [`in_s3`] starts the server, then runs the test again in a child process with the
//! credentials and the endpoint in its environment, as `origin` runs under systemd with an
//! `EnvironmentFile`.

use std::path::Path;

#[path = "../../origin/tests/common/s3_server.rs"]
mod s3_server;
pub use s3_server::{BUCKET, CREDENTIALS, S3Server, options};

/// Set in the child: the server's endpoint URL.
const ENDPOINT: &str = "DEPOTMESH_TEST_S3_ENDPOINT";

/// Runs test `name` (this function's caller, by its full name) with an S3 server: in the
/// child, calls `body` with the server's endpoint, with `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY` and `AWS_REGION` set; in the parent, starts the server (its log in
/// `work`) and checks the child passed.
pub fn in_s3(name: &str, work: &Path, body: impl FnOnce(&str)) {
    if let Some(endpoint) = std::env::var_os(ENDPOINT) {
        body(&endpoint.to_string_lossy());
        return;
    }
    let server = S3Server::start(&work.join("moto.log"));
    let mut env = vec![(ENDPOINT, server.endpoint.as_str())];
    env.extend(CREDENTIALS);
    crate::child::rerun_with_env(name, &env);
}

//! Requests to the bank simulator's control endpoint and the switch's admin surface on
//! loopback, through `reqwest` (plain HTTP: both listen on the machine itself).

use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;

/// A control request taking longer than this fails (the record of a long run is large).
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest body read (the record of a few million entries).
pub const HTTP_BODY_MAX_BYTES: u64 = 2 << 30;

#[derive(Debug, Error)]
pub enum HttpError {
    #[error("{method} http://{addr}{path}: {source}")]
    Request {
        method: &'static str,
        addr: SocketAddr,
        path: String,
        source: reqwest::Error,
    },
    #[error("{method} http://{addr}{path}: status {status}")]
    Status {
        method: &'static str,
        addr: SocketAddr,
        path: String,
        status: reqwest::StatusCode,
    },
    #[error("{method} http://{addr}{path}: body over {HTTP_BODY_MAX_BYTES} bytes")]
    TooLarge {
        method: &'static str,
        addr: SocketAddr,
        path: String,
    },
}

/// Sends a request without a body and returns the response body (a success status
/// required).
pub async fn request(
    addr: SocketAddr,
    method: &'static str,
    path: &str,
) -> Result<String, HttpError> {
    let failed = |source| HttpError::Request {
        method,
        addr,
        path: path.to_owned(),
        source,
    };
    let verb = reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::GET);
    let mut response = reqwest::Client::new()
        .request(verb, format!("http://{addr}{path}"))
        .timeout(HTTP_TIMEOUT)
        .send()
        .await
        .map_err(failed)?;
    if !response.status().is_success() {
        return Err(HttpError::Status {
            method,
            addr,
            path: path.to_owned(),
            status: response.status(),
        });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(failed)? {
        if (body.len() + chunk.len()) as u64 > HTTP_BODY_MAX_BYTES {
            return Err(HttpError::TooLarge {
                method,
                addr,
                path: path.to_owned(),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

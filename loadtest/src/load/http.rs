//! A minimal HTTP/1.1 client for the bank simulator's control endpoint on loopback:
//! one request per connection, `Connection: close`, body read to the end.

use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A control request taking longer than this fails (the record of a long run is large).
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest body read (the record of a few million entries).
pub const HTTP_BODY_MAX_BYTES: u64 = 2 << 30;

#[derive(Debug, Error)]
pub enum HttpError {
    #[error("{method} http://{addr}{path}: {source}")]
    Io {
        method: &'static str,
        addr: SocketAddr,
        path: String,
        source: std::io::Error,
    },
    #[error("{method} http://{addr}{path}: timed out")]
    Timeout {
        method: &'static str,
        addr: SocketAddr,
        path: String,
    },
    #[error("{method} http://{addr}{path}: status line {status:?}")]
    Status {
        method: &'static str,
        addr: SocketAddr,
        path: String,
        status: String,
    },
}

/// Sends a request without a body and returns the response body.
pub async fn request(
    addr: SocketAddr,
    method: &'static str,
    path: &str,
) -> Result<String, HttpError> {
    let io = |source| HttpError::Io {
        method,
        addr,
        path: path.to_owned(),
        source,
    };
    let work = async {
        let mut s = TcpStream::connect(addr).await.map_err(io)?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.map_err(io)?;
        let mut buf = Vec::new();
        s.take(HTTP_BODY_MAX_BYTES)
            .read_to_end(&mut buf)
            .await
            .map_err(io)?;
        Ok::<_, HttpError>(buf)
    };
    let buf = tokio::time::timeout(HTTP_TIMEOUT, work)
        .await
        .map_err(|_| HttpError::Timeout {
            method,
            addr,
            path: path.to_owned(),
        })??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or("").to_owned();
    if !status.contains(" 2") {
        return Err(HttpError::Status {
            method,
            addr,
            path: path.to_owned(),
            status,
        });
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok(dechunk(body));
    }
    Ok(body.to_owned())
}

/// Joins the chunks of a chunked body.
pub fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves chunked bodies are joined and a truncated chunk stops cleanly.
    #[test]
    fn chunks() {
        assert_eq!(dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), "abcde");
        assert_eq!(dechunk("5\r\nab"), "");
    }
}

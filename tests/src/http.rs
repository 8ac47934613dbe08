//! A plain HTTP/1.1 client for end-to-end tests: one request on a fresh TCP
//! connection, under a deadline.

use std::time::Duration;

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// One HTTP answer.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The body, with invalid UTF-8 replaced.
    pub body: String,
}

/// `method path` with these headers and body on a fresh connection to `addr`
/// (`host:port`, also sent as `Host`), answered within `timeout`.
///
/// # Errors
///
/// No connection, no answer, or none within `timeout`.
pub async fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
    timeout: Duration,
) -> anyhow::Result<Reply> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake")?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", addr);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body)))?;
        let res = sender
            .send_request(req)
            .await
            .with_context(|| format!("{method} {path}: no answer"))?;
        let status = res.status().as_u16();
        let body = res.into_body().collect().await?.to_bytes();
        Ok(Reply {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .with_context(|| format!("{method} {path} on {addr}: no answer within {timeout:?}"))?
}

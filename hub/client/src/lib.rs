//! A small client for the hub's API over mutual TLS, for agency systems,
//! the CLI, tests and the load generator: one HTTP/1.1 connection per call
//! ([`HubClient::send`]) or kept-alive HTTP/1.1 and HTTP/2 connections
//! ([`HubClient::connect`]), the hub's CA pinned, and helpers to sign
//! envelopes and to check the hub's signed replies.
#![forbid(unsafe_code)]

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
pub use http::{Method, StatusCode};
use http::{Request, header};
use http_body_util::{BodyExt, Full};
use hub_core::jcs;
use hub_core::jws::{Jwks, SigningKey};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A call did not complete.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad hub URL {0:?} (expected https://host:port)")]
    Url(String),
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("TLS: {0}")]
    Tls(String),
    // `cause`, not `source`: the message names it already, and a source
    // would be printed twice in an error chain (`{:#}`).
    #[error("connecting to {addr}: {cause}")]
    Connect { addr: String, cause: std::io::Error },
    #[error("HTTP: {0}")]
    Http(String),
    #[error("the response is not JSON: {0}")]
    NotJson(String),
}

/// The HTTP version of a kept-alive connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpVersion {
    Http1,
    Http2,
}

enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// A kept-alive connection to the hub. HTTP/1.1 carries one request at a
/// time; an HTTP/2 connection can be shared ([`Connection::share`]) to
/// carry many at once.
pub struct Connection {
    authority: String,
    sender: Sender,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Connection(https://{})", self.authority)
    }
}

impl Connection {
    /// Another handle on the same HTTP/2 connection (`None` for HTTP/1.1).
    pub fn share(&self) -> Option<Connection> {
        match &self.sender {
            Sender::Http2(s) => Some(Connection {
                authority: self.authority.clone(),
                sender: Sender::Http2(s.clone()),
            }),
            Sender::Http1(_) => None,
        }
    }

    /// One request; returns the status and the body.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let (status, _, bytes) = self.send_full(method, path, body).await?;
        Ok((status, bytes))
    }

    /// [`Connection::send`], with the response's headers (`Retry-After`,
    /// `Content-Type`...).
    pub async fn send_full(
        &mut self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<(StatusCode, http::HeaderMap, Bytes), ClientError> {
        let http = |e: hyper::Error| ClientError::Http(e.to_string());
        let mut req = Request::builder().method(method);
        req = match self.sender {
            Sender::Http1(_) => req.uri(path).header(header::HOST, &self.authority),
            Sender::Http2(_) => req.uri(format!("https://{}{path}", self.authority)),
        };
        let payload = match body {
            Some((content_type, bytes)) => {
                req = req.header(header::CONTENT_TYPE, content_type);
                bytes
            }
            None => Vec::new(),
        };
        let req = req
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let resp = match &mut self.sender {
            Sender::Http1(s) => {
                s.ready().await.map_err(http)?;
                s.send_request(req).await.map_err(http)?
            }
            Sender::Http2(s) => {
                s.ready().await.map_err(http)?;
                s.send_request(req).await.map_err(http)?
            }
        };
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.map_err(http)?.to_bytes();
        Ok((parts.status, parts.headers, bytes))
    }
}

/// A configured client for one hub.
#[derive(Clone)]
pub struct HubClient {
    host: String,
    port: u16,
    tls: Arc<ClientConfig>,
}

impl std::fmt::Debug for HubClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HubClient(https://{}:{})", self.host, self.port)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|e| ClientError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

fn parse_base(base: &str) -> Result<(String, u16), ClientError> {
    let rest = base
        .strip_prefix("https://")
        .ok_or_else(|| ClientError::Url(base.to_owned()))?
        .trim_end_matches('/');
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| ClientError::Url(base.to_owned()))?;
    let port = port
        .parse()
        .map_err(|_| ClientError::Url(base.to_owned()))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok((host, port))
}

impl HubClient {
    /// A client trusting `ca_pem`, presenting `identity` (certificate chain
    /// PEM, private key PEM) when given.
    pub fn new(
        base: &str,
        ca_pem: &[u8],
        identity: Option<(&[u8], &[u8])>,
    ) -> Result<Self, ClientError> {
        let (host, port) = parse_base(base)?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            let cert = cert.map_err(|e| ClientError::Tls(format!("CA certificate: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| ClientError::Tls(e.to_string()))?;
        }
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| ClientError::Tls(e.to_string()))?
                .with_root_certificates(roots);
        let config = match identity {
            Some((chain_pem, key_pem)) => {
                let chain: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(chain_pem).collect();
                let chain =
                    chain.map_err(|e| ClientError::Tls(format!("client certificate: {e}")))?;
                let key = PrivateKeyDer::from_pem_slice(key_pem)
                    .map_err(|e| ClientError::Tls(format!("client key: {e}")))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| ClientError::Tls(e.to_string()))?
            }
            None => builder.with_no_client_auth(),
        };
        Ok(Self {
            host,
            port,
            tls: Arc::new(config),
        })
    }

    /// Like [`HubClient::new`], reading PEM files.
    pub fn from_files(
        base: &str,
        ca: &Path,
        identity: Option<(&Path, &Path)>,
    ) -> Result<Self, ClientError> {
        let ca = read(ca)?;
        match identity {
            Some((cert, key)) => {
                let (cert, key) = (read(cert)?, read(key)?);
                Self::new(base, &ca, Some((&cert, &key)))
            }
            None => Self::new(base, &ca, None),
        }
    }

    /// A mutual-TLS connection to the hub offering `alpn` (`b"http/1.1"`,
    /// `b"h2"`), for speaking HTTP by hand.
    pub async fn tls_stream(
        &self,
        alpn: &[u8],
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ClientError> {
        let addr = format!("{}:{}", self.host, self.port);
        let tcp = TcpStream::connect(&addr)
            .await
            .map_err(|cause| ClientError::Connect {
                addr: addr.clone(),
                cause,
            })?;
        let _ = tcp.set_nodelay(true);
        let name =
            ServerName::try_from(self.host.clone()).map_err(|e| ClientError::Tls(e.to_string()))?;
        let mut config = (*self.tls).clone();
        config.alpn_protocols = vec![alpn.to_vec()];
        TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| ClientError::Tls(e.to_string()))
    }

    /// Open a connection that stays open for many requests.
    pub async fn connect(&self, version: HttpVersion) -> Result<Connection, ClientError> {
        let http = |e: hyper::Error| ClientError::Http(e.to_string());
        let sender = match version {
            HttpVersion::Http1 => {
                let tls = self.tls_stream(b"http/1.1").await?;
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                    .await
                    .map_err(http)?;
                tokio::spawn(conn);
                Sender::Http1(sender)
            }
            HttpVersion::Http2 => {
                let tls = self.tls_stream(b"h2").await?;
                let (sender, conn) = hyper::client::conn::http2::handshake(
                    hyper_util::rt::TokioExecutor::new(),
                    TokioIo::new(tls),
                )
                .await
                .map_err(http)?;
                tokio::spawn(conn);
                Sender::Http2(sender)
            }
        };
        Ok(Connection {
            authority: format!("{}:{}", self.host, self.port),
            sender,
        })
    }

    /// One request on a connection of its own; returns the status and the body.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let (status, _, bytes) = self.send_full(method, path, body).await?;
        Ok((status, bytes))
    }

    /// [`HubClient::send`], with the response's headers (`Retry-After`...).
    pub async fn send_full(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<(StatusCode, http::HeaderMap, Bytes), ClientError> {
        self.connect(HttpVersion::Http1)
            .await?
            .send_full(method, path, body)
            .await
    }

    /// GET a JSON document.
    pub async fn get_json(&self, path: &str) -> Result<(StatusCode, Value), ClientError> {
        let (status, body) = self.send(Method::GET, path, None).await?;
        Ok((status, to_json(&body)?))
    }

    /// POST a JSON document.
    pub async fn post_json(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<(StatusCode, Value), ClientError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ClientError::Http(e.to_string()))?;
        let (status, body) = self
            .send(Method::POST, path, Some(("application/json", bytes)))
            .await?;
        Ok((status, to_json(&body)?))
    }

    /// The hub's published keys.
    pub async fn jwks(&self) -> Result<Jwks, ClientError> {
        let (_, v) = self.get_json("/.well-known/jwks.json").await?;
        serde_json::from_value(v).map_err(|e| ClientError::NotJson(e.to_string()))
    }
}

fn to_json(body: &[u8]) -> Result<Value, ClientError> {
    serde_json::from_slice(body).map_err(|e| {
        ClientError::NotJson(format!(
            "{e}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ))
    })
}

/// The detached JWS an agency puts beside its envelope.
pub fn sign_envelope(envelope: &Value, key: &SigningKey) -> Result<String, jcs::JcsError> {
    Ok(key.sign_detached(&jcs::canonicalize(envelope)?))
}

/// Checks many replies or inbox messages, each group commit's signature
/// once (`SealVerifier::verify_message` is `verify_reply` that remembers).
pub use hub_core::log::SealVerifier;
pub use hub_core::log::{MessageError as ReplyError, verify_message as verify_reply};

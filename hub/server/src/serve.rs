//! The accept loop: TCP, then TLS, then HTTP/1.1 or HTTP/2 through axum,
//! with the client certificate's identity attached to every request of the
//! connection. Stops accepting on shutdown and lets open connections finish.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::{debug, info, warn};

use crate::identity::{CertName, CertSerial, Identity, common_name, member_from_certificate};

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections get to finish after shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection may sit silent: a client that takes longer than
/// `idle` to send a request's headers - the first or the next on a kept-alive
/// HTTP/1.1 connection - is disconnected, so a slow or stalled client cannot
/// hold a connection forever. HTTP/2 connections are pinged every `idle`
/// and closed when a ping goes unanswered for as long.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(60),
        }
    }
}

/// Serve `router` on `listener` over TLS until `shutdown` turns true.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<crate::tls::ServerTls>,
    router: Router,
    timeouts: Timeouts,
    mut shutdown: watch::Receiver<bool>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = TlsAcceptor::from(tls.current());
        let router = router.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let certificate = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first());
            let name = certificate
                .and_then(|der| common_name(der).ok())
                .map(CertName);
            let serial = certificate
                .and_then(|der| crate::tls::serial_of(der))
                .map(CertSerial);
            let identity = match certificate.map(|der| member_from_certificate(der)) {
                Some(Ok(m)) => Some(Identity(m)),
                Some(Err(e)) => {
                    debug!(%peer, error = %e, "client certificate names no member");
                    None
                }
                None => None,
            };
            let service =
                router.map_request(move |mut req: http::Request<hyper::body::Incoming>| {
                    if let Some(id) = &identity {
                        req.extensions_mut().insert(id.clone());
                    }
                    if let Some(name) = &name {
                        req.extensions_mut().insert(name.clone());
                    }
                    if let Some(serial) = &serial {
                        req.extensions_mut().insert(serial.clone());
                    }
                    req.map(axum::body::Body::new)
                });
            let mut builder = Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(timeouts.idle);
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(timeouts.idle)
                .keep_alive_timeout(timeouts.idle);
            let conn = builder.serve_connection_with_upgrades(
                TokioIo::new(tls),
                TowerToHyperService::new(service),
            );
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    info!("listener stopped; draining connections");
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("some connections did not finish in time");
    }
}

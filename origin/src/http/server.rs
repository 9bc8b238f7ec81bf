//! The director's listener: HTTPS (rustls) by default, each connection's client certificate
//! (if any) handed to the routes as its [`Peer`]; plain HTTP only on a loopback address and only
//! when asked for by name ([`Transport::PlainLoopback`]).
//!
//! What one client can hold is bounded: the TLS handshake must finish within
//! [`HANDSHAKE_TIMEOUT`] and each request head arrive within [`HEAD_TIMEOUT`] (an idle
//! keep-alive connection is closed after it too), so a half-open or half-sent connection is
//! dropped within seconds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// How long a client may take to finish the TLS handshake.
pub(super) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a client may take to send a request head (or stay idle between requests).
pub(super) const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// How long accepting waits after a failed accept (errors such as running out of file
/// descriptors repeat at once).
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// How clients reach the director.
#[derive(Debug, Clone)]
pub enum Transport {
    /// HTTPS with this configuration (the director's certificate, client certificates asked
    /// for under the operator CA).
    Tls {
        /// The configuration every handshake uses.
        config: Arc<rustls::ServerConfig>,
        /// The certificate it serves, which a renewal swaps ([`crate::tls::ServedCertificate`]).
        certificate: Arc<crate::tls::ServedCertificate>,
    },
    /// Plain HTTP, on a loopback address only (a test, a director behind a local TLS
    /// terminator).
    PlainLoopback,
}

/// Why the director will not listen as asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// Plain HTTP asked for on an address other hosts can reach.
    #[error(
        "plain HTTP is served on loopback addresses only, not {0}: serve HTTPS (the default), or listen on 127.0.0.1 / ::1"
    )]
    PlainNotLoopback(SocketAddr),
}

impl Transport {
    /// Refuses plain HTTP on `listen` unless it is a loopback address.
    pub fn check(&self, listen: SocketAddr) -> Result<(), TransportError> {
        match self {
            Self::PlainLoopback if !listen.ip().is_loopback() => {
                Err(TransportError::PlainNotLoopback(listen))
            }
            _ => Ok(()),
        }
    }

    /// The URL scheme clients use.
    pub fn scheme(&self) -> &'static str {
        match self {
            Self::Tls { .. } => "https",
            Self::PlainLoopback => "http",
        }
    }

    /// The certificate it serves, if it speaks HTTPS.
    pub fn certificate(&self) -> Option<&Arc<crate::tls::ServedCertificate>> {
        match self {
            Self::Tls { certificate, .. } => Some(certificate),
            Self::PlainLoopback => None,
        }
    }
}

/// Who is at the other end of a connection, as far as its TLS handshake proved: the SHA-256
/// of the client certificate it presented (verified under the operator CA), if any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    /// The client certificate's fingerprint ([`crate::tls::fingerprint`]).
    pub client_cert: Option<String>,
    /// The client's address.
    pub addr: Option<SocketAddr>,
}

/// Serves `router` on `listener` until the task is dropped.
///
/// `axum::serve` is not used: it gives hyper no timer (no head timeout) and knows no TLS.
pub(super) async fn serve(
    listener: TcpListener,
    transport: Transport,
    router: Router,
    handshakes_failed: Arc<AtomicU64>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT);
    let acceptor = match &transport {
        Transport::Tls { config, .. } => Some(tokio_rustls::TlsAcceptor::from(Arc::clone(config))),
        Transport::PlainLoopback => None,
    };
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::debug!(%error, "accepting a connection failed");
                tokio::time::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        let (router, http, acceptor) = (router.clone(), http.clone(), acceptor.clone());
        let failed = Arc::clone(&handshakes_failed);
        tokio::spawn(async move {
            match acceptor {
                None => {
                    let peer = Peer {
                        client_cert: None,
                        addr: Some(addr),
                    };
                    exchange(&http, stream, peer, router).await;
                }
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let peer = Peer {
                                client_cert: tls
                                    .get_ref()
                                    .1
                                    .peer_certificates()
                                    .and_then(<[_]>::first)
                                    .map(|cert| crate::tls::fingerprint(cert)),
                                addr: Some(addr),
                            };
                            exchange(&http, tls, peer, router).await;
                        }
                        Ok(Err(error)) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(%error, "TLS handshake refused");
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            tracing::info!("TLS handshake timed out");
                        }
                    }
                }
            }
        });
    }
}

/// Serves the requests of one connection, each carrying `peer`.
async fn exchange<S>(
    http: &hyper::server::conn::http1::Builder,
    stream: S,
    peer: Peer,
    router: Router,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = router.map_request(move |mut request: Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(peer.clone());
        request
    });
    let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
    if let Err(error) = connection.await {
        tracing::debug!(%error, "HTTP exchange failed");
    }
}

//! The TCP connector awc uses for upstream connections: direct, or through an HTTP proxy
//! with `CONNECT host:port`, for both the plain and the TLS pool (awc runs TLS over the
//! stream we return, so TLS is end to end and verified against the upstream's name).

use std::fmt;
use std::io;
use std::rc::Rc;

use actix_service::Service;
use actix_tls::connect::{ConnectError, ConnectInfo, Connection, ConnectorService};
use awc::http::Uri;
use futures_util::future::LocalBoxFuture;
use secrecy::ExposeSecret;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::counted::{CountedStream, OpenConnections};
use crate::config::{NoProxy, ProxyUrl};

/// Longest CONNECT reply head we read before giving up.
const MAX_REPLY_HEAD: usize = 16 * 1024;

/// Why a tunnel could not be opened. Carried inside the `io::Error` awc hands back, so the
/// error mapping can tell the client what happened. Never holds credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TunnelError {
    /// TCP connection to the proxy failed (refused, unresolvable, reset).
    ProxyUnreachable(io::ErrorKind),
    /// The proxy answered CONNECT with a non-2xx status.
    Rejected(u16),
    /// The proxy's reply was not HTTP or was cut short.
    BadReply,
}

impl fmt::Display for TunnelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ProxyUnreachable(kind) => write!(f, "outbound proxy unreachable ({kind})"),
            Self::Rejected(status) => {
                write!(f, "outbound proxy rejected the tunnel with status {status}")
            }
            Self::BadReply => f.write_str("outbound proxy sent an invalid reply to CONNECT"),
        }
    }
}

impl std::error::Error for TunnelError {}

impl From<TunnelError> for ConnectError {
    // Never `ConnectError::InvalidInput`: awc panics on it.
    fn from(e: TunnelError) -> Self {
        let kind = match e {
            TunnelError::ProxyUnreachable(kind) => kind,
            TunnelError::Rejected(_) => io::ErrorKind::PermissionDenied,
            TunnelError::BadReply => io::ErrorKind::InvalidData,
        };
        ConnectError::Io(io::Error::new(kind, e))
    }
}

struct Tunnel {
    /// `host:port` of the proxy, for the direct connector.
    proxy_authority: String,
    basic_auth: Option<secrecy::SecretString>,
    no_proxy: NoProxy,
}

/// Connects directly, or through the configured proxy unless NO_PROXY matches the host.
#[derive(Clone)]
pub struct UpstreamConnector {
    direct: ConnectorService,
    tunnel: Option<Rc<Tunnel>>,
    open: OpenConnections,
}

impl UpstreamConnector {
    pub fn new(proxy: Option<&ProxyUrl>, no_proxy: &NoProxy, open: OpenConnections) -> Self {
        let tunnel = proxy.map(|p| {
            Rc::new(Tunnel {
                proxy_authority: format!("{}:{}", p.host, p.port),
                basic_auth: p.basic_auth().cloned(),
                no_proxy: no_proxy.clone(),
            })
        });
        Self {
            direct: ConnectorService::default(),
            tunnel,
            open,
        }
    }
}

impl Service<ConnectInfo<Uri>> for UpstreamConnector {
    type Response = Connection<Uri, CountedStream>;
    type Error = ConnectError;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    actix_service::always_ready!();

    fn call(&self, req: ConnectInfo<Uri>) -> Self::Future {
        let open = self.open.clone();
        let counted = move |conn: Connection<Uri, TcpStream>| {
            let (io, uri) = conn.into_parts();
            Connection::new(uri, CountedStream::new(io, &open))
        };
        match &self.tunnel {
            Some(tunnel) if !tunnel.no_proxy.matches(req.hostname()) => {
                let tunnel = tunnel.clone();
                let direct = self.direct.clone();
                Box::pin(async move { open_tunnel(&tunnel, &direct, req).await.map(counted) })
            }
            _ => {
                let connecting = self.direct.call(req);
                Box::pin(async move {
                    let conn = connecting.await?;
                    no_delay(conn.io_ref());
                    Ok(counted(conn))
                })
            }
        }
    }
}

/// Requests go out as a head and a body in separate writes: with Nagle's algorithm the body
/// would wait for the upstream's delayed ACK (~40 ms on Linux).
fn no_delay(stream: &TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY upstream");
    }
}

/// Opens a TCP connection to the proxy and asks it for a tunnel to the request's host.
/// awc's connect timeout (CONNECT_TIMEOUT) bounds this whole future.
async fn open_tunnel(
    tunnel: &Tunnel,
    direct: &ConnectorService,
    req: ConnectInfo<Uri>,
) -> Result<Connection<Uri, TcpStream>, ConnectError> {
    let to_proxy = ConnectInfo::new(tunnel.proxy_authority.clone());
    let (mut stream, _) = direct
        .call(to_proxy)
        .await
        .map_err(|e| {
            let kind = match &e {
                ConnectError::Io(io) => io.kind(),
                _ => io::ErrorKind::NotFound,
            };
            TunnelError::ProxyUnreachable(kind)
        })?
        .into_parts();

    let host = req.hostname();
    let target = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{}", req.port())
    } else {
        format!("{host}:{}", req.port())
    };
    let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(auth) = &tunnel.basic_auth {
        head.push_str("Proxy-Authorization: ");
        head.push_str(auth.expose_secret());
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(|e| TunnelError::ProxyUnreachable(e.kind()))?;

    let status = read_reply_status(&mut stream).await?;
    if !(200..300).contains(&status) {
        return Err(TunnelError::Rejected(status).into());
    }
    no_delay(&stream);
    Ok(Connection::new(req.request().clone(), stream))
}

/// Reads the proxy's reply head one byte at a time, so not a byte of the tunnelled stream
/// that may follow it is consumed, and returns its status code.
async fn read_reply_status(stream: &mut TcpStream) -> Result<u16, TunnelError> {
    let mut buf = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if buf.len() >= MAX_REPLY_HEAD {
            return Err(TunnelError::BadReply);
        }
        match stream.read(&mut byte).await {
            Ok(0) => return Err(TunnelError::BadReply),
            Ok(_) => buf.push(byte[0]),
            Err(e) => return Err(TunnelError::ProxyUnreachable(e.kind())),
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut reply = httparse::Response::new(&mut headers);
    match reply.parse(&buf) {
        Ok(httparse::Status::Complete(_)) => reply.code.ok_or(TunnelError::BadReply),
        _ => Err(TunnelError::BadReply),
    }
}

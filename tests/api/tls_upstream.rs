//! An in-process HTTPS upstream whose certificate comes from a CA made at test time.

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use bytes::Bytes;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A throw-away certificate authority.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// The CA certificate as a PEM file, for EXTRA_CA_FILE.
    pub pem_file: tempfile::NamedTempFile,
}

impl TestCa {
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Subject names of their own: with rcgen's default name on both, OpenSSL (redis-cli,
        // redis-server) takes the leaf for self-signed and refuses it.
        params
            .distinguished_name
            .push(DnType::CommonName, "openai-cache-proxy test CA");
        let key = KeyPair::generate().expect("CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        let pem_file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(pem_file.path(), issuer.pem()).expect("CA PEM written");
        Self { issuer, pem_file }
    }

    pub fn pem_path(&self) -> PathBuf {
        self.pem_file.path().to_path_buf()
    }

    /// A server certificate for `localhost` and 127.0.0.1 signed by this CA, as PEM text:
    /// (certificate chain, private key), for servers that read files (redis-server).
    pub fn server_pem(&self) -> (String, String) {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf signed");
        (
            format!("{}{}", cert.pem(), self.issuer.pem()),
            key.serialize_pem(),
        )
    }

    /// A server certificate for `names` signed by this CA.
    fn server_cert(
        &self,
        names: &[&str],
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let names = names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        let params = CertificateParams::new(names).expect("leaf params");
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf signed");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (vec![cert.der().clone(), self.issuer.der().clone()], key)
    }
}

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
}

pub struct TlsUpstream {
    /// `https://localhost:<port>`
    pub url: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl TlsUpstream {
    pub fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

pub const SSE_EVENTS: [&str; 3] = [
    "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n",
    "data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\n",
    "data: [DONE]\n\n",
];

/// Starts the HTTPS upstream, its certificate for `localhost` and 127.0.0.1. It answers JSON
/// bodies with an echo of the request body, and a body containing `"stream":true` with three
/// SSE events 50 ms apart.
pub fn start_tls_upstream(ca: &TestCa) -> TlsUpstream {
    start_tls_upstream_named(ca, &["localhost", "127.0.0.1"])
}

/// Like `start_tls_upstream`, with a certificate for `names` only (still reached as
/// `https://localhost:<port>`).
pub fn start_tls_upstream_named(ca: &TestCa, names: &[&str]) -> TlsUpstream {
    let (chain, key) = ca.server_cert(names);
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("server certificate");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorded = seen.clone();
    let server = HttpServer::new(move || {
        let recorded = recorded.clone();
        App::new().default_service(web::to(move |req: HttpRequest, body: Bytes| {
            let recorded = recorded.clone();
            async move { answer(&recorded, &req, body) }
        }))
    })
    .workers(1)
    .listen_rustls_0_23(listener, tls)
    .expect("listen with TLS")
    .run();
    tokio::spawn(server);
    TlsUpstream {
        url: format!("https://localhost:{port}"),
        seen,
    }
}

fn answer(recorded: &Mutex<Vec<Seen>>, req: &HttpRequest, body: Bytes) -> HttpResponse {
    recorded.lock().unwrap().push(Seen {
        method: req.method().to_string(),
        path: req.path().to_owned(),
        authorization: req
            .headers()
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned()),
    });
    if body.windows(13).any(|w| w == b"\"stream\":true") {
        let events = futures_util::stream::unfold(0usize, |i| async move {
            if i == SSE_EVENTS.len() {
                return None;
            }
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Some((
                Ok::<_, std::io::Error>(Bytes::from_static(SSE_EVENTS[i].as_bytes())),
                i + 1,
            ))
        });
        return HttpResponse::Ok()
            .content_type("text/event-stream")
            .streaming(events);
    }
    HttpResponse::Ok()
        .content_type("application/json")
        .body(format!(r#"{{"echo":{}}}"#, String::from_utf8_lossy(&body)))
}

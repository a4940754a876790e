//! Issue [L] row 7: a private Cyclr instance behind a corporate CA, reached through an egress
//! proxy. The client trusts the CA bundle named by `SSL_CERT_FILE` (the chart mounts one with
//! `extraVolumes`), goes through `HTTPS_PROXY`, and skips it for the hosts in `NO_PROXY`.
//! The simulator is served over TLS by a certificate of a CA made here; the proxy is a small
//! CONNECT proxy that records where it was asked to go. A binary of its own: the variables are
//! the process's, read once.

use std::sync::{Arc, Mutex};

use cyclr::{ClientConfig, CyclrClient};
use cyclr_sim::{SimConfig, Simulator};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use secrecy::SecretString;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

const ID: &str = "tls-client";
const SECRET: &str = "tls-secret";

/// A CA (PEM) and a certificate it signed for `localhost` and `127.0.0.1`, with its key.
fn pki() -> (String, CertificateDer<'static>, PrivateKeyDer<'static>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap();
    (ca_cert.pem(), server.der().clone(), key)
}

/// Serves `upstream` (plain HTTP) over TLS on a port of its own.
async fn tls_in_front_of(upstream: String, cert: CertificateDer<'static>, key: PrivateKeyDer<'static>) -> u16 {
    let config = ServerConfig::builder_with_provider(Arc::new(tokio_rustls::rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
                let Ok(mut plain) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    port
}

/// A CONNECT proxy; returns its port and the targets it was asked for.
async fn connect_proxy() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut client = BufReader::new(socket);
                let mut request = String::new();
                if client.read_line(&mut request).await.is_err() {
                    return;
                }
                // The rest of the request head.
                let mut line = String::new();
                while client.read_line(&mut line).await.is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let Some(target) = request.strip_prefix("CONNECT ").and_then(|r| r.split(' ').next()) else {
                    return;
                };
                record.lock().unwrap().push(target.to_string());
                let Ok(mut upstream) = TcpStream::connect(target).await else {
                    return;
                };
                let mut client = client.into_inner();
                if client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .is_ok()
                {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            });
        }
    });
    (port, seen)
}

#[test]
fn a_private_ca_and_an_egress_proxy_are_honoured() {
    let (ca, cert, key) = pki();
    let bundle = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bundle.path(), ca).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (sim, tls_port, (proxy_port, proxied)) = runtime.block_on(async {
        let sim = Simulator::start(SimConfig::new(ID, SECRET), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let upstream = sim.base_url().trim_start_matches("http://").to_string();
        let tls_port = tls_in_front_of(upstream, cert, key).await;
        (sim, tls_port, connect_proxy().await)
    });
    // SAFETY: set before any other thread of this process reads the environment (the
    // runtime's workers do not), and before the first client is built.
    unsafe {
        std::env::set_var("SSL_CERT_FILE", bundle.path());
        std::env::set_var("HTTPS_PROXY", format!("http://127.0.0.1:{proxy_port}"));
        std::env::set_var("NO_PROXY", "127.0.0.1");
    }
    runtime.block_on(async {
        let client = |host: &str| {
            CyclrClient::new(ClientConfig::new(
                format!("https://{host}:{tls_port}"),
                ID,
                SecretString::from(SECRET),
            ))
            .unwrap()
        };
        // Through the proxy, trusting the CA from SSL_CERT_FILE.
        let details = client("localhost")
            .partner_details()
            .await
            .expect("through the proxy, over TLS");
        assert!(details.domain.is_some());
        // The token and the details may share a tunnel or not: the pool returns a connection
        // only once its answer is read, so a second CONNECT is timing, not a fault.
        let tunnels = proxied.lock().unwrap().clone();
        assert!(!tunnels.is_empty(), "HTTPS_PROXY is used");
        assert!(
            tunnels.iter().all(|t| *t == format!("localhost:{tls_port}")),
            "every tunnel goes to the Cyclr host: {tunnels:?}"
        );
        // A host in NO_PROXY is reached directly.
        client("127.0.0.1").partner_details().await.expect("directly, over TLS");
        assert_eq!(proxied.lock().unwrap().len(), tunnels.len(), "NO_PROXY skips the proxy");
        assert!(sim.stats().requests_to("GET /api/partner/details") >= 2);
    });
}

//! The ESMTP server (spec §6): accept loop, connection limit, TLS setup,
//! and the parameters each session runs with.

pub mod auth;

mod io;
mod proxy;
pub mod relay;
mod session;

use crate::config::listener::{EsmtpListenerConfig, ListenerSpec};
use crate::policy::Policy;
use crate::queue::QueueManager;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

pub struct Listener {
    spec: ListenerSpec,
    /// Host name and TLS acceptor of each of `spec.configs`.
    hostnames: Vec<String>,
    acceptors: Vec<TlsAcceptor>,
    sessions: Arc<Semaphore>,
    auth_failures: auth::Failures,
}

/// What one session runs with.
pub struct Params {
    pub config: Arc<EsmtpListenerConfig>,
    pub hostname: String,
    pub acceptor: TlsAcceptor,
}

/// What a session needs from the rest of the daemon.
pub struct Services {
    pub policy: Arc<Policy>,
    pub queues: Arc<QueueManager>,
    pub lifecycle: Arc<crate::lifecycle::Lifecycle>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

type TlsKey = (
    Option<std::path::PathBuf>,
    Option<std::path::PathBuf>,
    String,
);

fn load_tls(config: &EsmtpListenerConfig, hostname: &str) -> anyhow::Result<TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (certs, key) = match (&config.tls_certificate, &config.tls_private_key) {
        (Some(cert), Some(key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| anyhow::anyhow!("tls_certificate {}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| anyhow::anyhow!("tls_private_key {}: {e}", key.display()))?;
            (certs, key)
        }
        (None, None) => {
            // STARTTLS is always offered; without configured files, a
            // self-signed certificate for the host name is made at start.
            let cert = rcgen::generate_simple_self_signed(vec![hostname.to_string()])?;
            let key = PrivateKeyDer::try_from(cert.signing_key.serialize_der())
                .map_err(|e| anyhow::anyhow!("self-signed key: {e}"))?;
            (vec![cert.cert.der().clone()], key)
        }
        _ => anyhow::bail!("tls_certificate and tls_private_key must be set together"),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(TlsAcceptor::from(Arc::new(server)))
}

impl Listener {
    pub fn new(spec: ListenerSpec) -> anyhow::Result<Listener> {
        let mut hostnames = vec![];
        let mut acceptors: Vec<TlsAcceptor> = vec![];
        // one acceptor per distinct certificate (and, self-signed, host name)
        let mut made: Vec<(TlsKey, TlsAcceptor)> = vec![];
        for config in &spec.configs {
            let hostname = config.hostname();
            let key = (
                config.tls_certificate.clone(),
                config.tls_private_key.clone(),
                hostname.clone(),
            );
            let acceptor = match made.iter().find(|(k, _)| *k == key) {
                Some((_, a)) => a.clone(),
                None => {
                    let a = load_tls(config, &hostname)?;
                    made.push((key, a.clone()));
                    a
                }
            };
            hostnames.push(hostname);
            acceptors.push(acceptor);
        }
        Ok(Listener {
            sessions: Arc::new(Semaphore::new(spec.base().max_connections)),
            spec,
            hostnames,
            acceptors,
            auth_failures: auth::Failures::default(),
        })
    }

    pub fn spec(&self) -> &ListenerSpec {
        &self.spec
    }

    /// The parameters for a session from `peer` to `local`.
    pub fn params(&self, local: Option<SocketAddr>, peer: SocketAddr) -> Params {
        let local = local
            .map(|l| l.ip())
            .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
        let i = self.spec.select(local, peer.ip());
        Params {
            config: self.spec.configs[i].clone(),
            hostname: self.hostnames[i].clone(),
            acceptor: self.acceptors[i].clone(),
        }
    }

    pub async fn bind(&self) -> anyhow::Result<TcpListener> {
        let listen = &self.spec.base().listen;
        TcpListener::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))
    }

    pub async fn serve(self: Arc<Self>, listener: TcpListener, services: Arc<Services>) {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // e.g. EMFILE: back off instead of spinning
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let me = self.clone();
            let services = services.clone();
            tokio::spawn(async move {
                let local = stream.local_addr().ok();
                let permit = match services.lifecycle.is_draining() {
                    true => None,
                    false => me.sessions.clone().try_acquire_owned().ok(),
                };
                match permit.ok_or(()) {
                    Ok(permit) => {
                        session::run(stream, peer, local, me.clone(), services, permit).await;
                    }
                    Err(_) => {
                        use tokio::io::AsyncWriteExt;
                        let mut stream = stream;
                        let hostname = &me.hostnames[0];
                        let line = if services.lifecycle.is_draining() {
                            format!("421 4.3.2 {hostname} is shutting down. Try later\r\n")
                        } else {
                            format!(
                                "421 4.3.2 {hostname} too many concurrent sessions. Try later\r\n"
                            )
                        };
                        let _ = stream.write_all(line.as_bytes()).await;
                        let _ = stream.shutdown().await;
                    }
                }
            });
        }
    }
}

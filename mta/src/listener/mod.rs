//! The ESMTP server (spec §6): accept loop, connection limit, TLS setup,
//! and the parameters each session runs with.

pub mod auth;

pub mod io;
mod proxy;
pub mod relay;
mod session;
mod tls;

use crate::config::listener::{EsmtpListenerConfig, ListenerSpec};
use crate::policy::Policy;
use crate::queue::QueueManager;
use std::net::SocketAddr;
use std::sync::Arc;
pub use tls::TlsError;
use tls::load_tls;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

/// One ESMTP listener: its merged `peer`/`via` configs with a host name and
/// TLS acceptor for each, the session limit, and the AUTH failure counts.
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
    /// The listener config that applies to this session (its `via` and `peer`
    /// blocks merged in).
    pub config: Arc<EsmtpListenerConfig>,
    /// The host name the session greets with.
    pub hostname: String,
    /// The TLS acceptor for STARTTLS, with that config's certificate.
    pub acceptor: TlsAcceptor,
}

/// What a session needs from the rest of the daemon.
pub struct Services {
    /// The policy whose events the session fires.
    pub policy: Arc<Policy>,
    /// The queue engine accepted messages go to, and whose logger records
    /// them.
    pub queues: Arc<QueueManager>,
    /// The daemon's drain state: each session counts as busy while it runs,
    /// and an idle one ends when a drain starts.
    pub lifecycle: Arc<crate::lifecycle::Lifecycle>,
    /// Where the session counts its connection.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Storage and memory: while either is short, MAIL gets a 4xx; while
    /// memory is short, a new connection gets 421.
    pub admission: Arc<crate::admission::Admission>,
}

type TlsKey = (
    Option<std::path::PathBuf>,
    Option<std::path::PathBuf>,
    String,
);

/// Why a listener (ESMTP or HTTP) cannot be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The address cannot be listened on.
    #[error("cannot listen on {listen}: {source}")]
    Listen {
        /// The configured `listen` address.
        listen: String,
        /// What the socket layer said.
        source: std::io::Error,
    },
    /// The configuration asks for something this build does not do.
    #[error("{0}")]
    Unsupported(&'static str),
}

impl Listener {
    /// The listener for `spec`, loading each config's certificate (or making
    /// a self-signed one) once per distinct certificate and host name.
    pub fn new(spec: ListenerSpec) -> Result<Listener, TlsError> {
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

    /// The configs this listener was made from.
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

    /// Bind the base config's `listen` address.
    pub async fn bind(&self) -> Result<TcpListener, BindError> {
        let listen = &self.spec.base().listen;
        TcpListener::bind(listen)
            .await
            .map_err(|source| BindError::Listen {
                listen: listen.clone(),
                source,
            })
    }

    /// Accept connections forever, a session each; past `max_connections`,
    /// while draining, or while memory is short, a connection gets a 421 and
    /// is closed.
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
                let hostname = &me.hostnames[0];
                let short = services.admission.memory.shortage();
                let permit = match (services.lifecycle.is_draining(), short) {
                    (true, _) => Err(format!("{hostname} is shutting down")),
                    // a session costs memory: turn it away at the door
                    (false, Some(short)) => {
                        tracing::warn!(%peer, "connection refused: {short}");
                        Err(format!("{hostname} is short of memory"))
                    }
                    (false, None) => me
                        .sessions
                        .clone()
                        .try_acquire_owned()
                        .map_err(|_| format!("{hostname} too many concurrent sessions")),
                };
                match permit {
                    Ok(permit) => {
                        session::run(stream, peer, local, me.clone(), services, permit).await;
                    }
                    Err(why) => {
                        use tokio::io::AsyncWriteExt;
                        let mut stream = stream;
                        let line = format!("421 4.3.2 {why}. Try later\r\n");
                        let _ = stream.write_all(line.as_bytes()).await;
                        let _ = stream.shutdown().await;
                    }
                }
            });
        }
    }
}

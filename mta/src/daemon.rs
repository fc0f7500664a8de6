//! Start-up: load the policy, run `init`, open the spool and logs, recover
//! the spool, start the listeners; stop on SIGTERM/SIGINT.

use crate::listener::{Listener, Services};
use crate::log::Logger;
use crate::policy::{Policy, PolicySource};
use crate::queue::QueueManager;
use crate::spool::{Spool, SpoolOptions};
use anyhow::Context;
use std::sync::Arc;

pub const DEFAULT_POLICY: &str = include_str!("default_policy.lua");

pub fn node_id() -> String {
    std::env::var("SLUICE_NODE_ID")
        .or_else(|_| std::env::var("KUMO_NODE_ID"))
        .unwrap_or_else(|_| crate::hostname())
}

pub async fn run(source: PolicySource) -> anyhow::Result<()> {
    let policy = Policy::load(source).map_err(|e| anyhow::anyhow!("{e}"))?;
    let init = policy
        .run_init()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    let spool_def = init
        .spools
        .iter()
        .find(|s| s.name == "data")
        .or_else(|| init.spools.first())
        .context("the init event must call kumo.define_spool")?;
    let (spool, recovered) = Spool::open(&spool_def.path, SpoolOptions::default())
        .with_context(|| format!("opening spool {}", spool_def.path.display()))?;
    let spool = Arc::new(spool);
    policy.attach_spool(spool.clone());
    let logger = Arc::new(Logger::new(init.logs.clone())?);
    let dns = match &init.resolver {
        Some(r) => {
            crate::egress::dns::Dns::with_servers(&r.servers().map_err(|e| anyhow::anyhow!(e))?)?
        }
        None => crate::egress::dns::Dns::system()?,
    };
    let queues = QueueManager::new(
        policy.clone(),
        spool.clone(),
        logger.clone(),
        dns,
        node_id(),
    );

    let count = recovered.len();
    let queued = queues.recover(recovered).await;
    tracing::info!(spooled = count, queued, "spool recovered");

    if init.listeners.is_empty() {
        tracing::warn!("the policy starts no ESMTP listener");
    }
    let services = Arc::new(Services {
        policy: policy.clone(),
        queues: queues.clone(),
    });
    for config in init.listeners {
        let listener = Arc::new(Listener::new(config)?);
        let socket = listener.bind().await?;
        tracing::info!("ESMTP listener on {}", socket.local_addr()?);
        tokio::spawn(listener.serve(socket, services.clone()));
    }

    wait_for_signal().await;
    tracing::info!("shutting down");
    spool.flush().await.ok();
    logger.flush();
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

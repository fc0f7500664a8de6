//! The controller. The kinds all render into one output (the fleet's
//! ConfigMap), so it is keyed on the fleet: watches on the kinds feed one
//! trigger, bursts are debounced into one render, and each pass
//!
//! 1. renders every object in the namespace (the pure `render`),
//! 2. server-side-applies the ConfigMap when the rendered hash changed,
//! 3. asks each MTA pod's admin API which generated file it runs,
//! 4. writes each object's status (only when it changed) and an event on
//!    each transition.

use crate::crd::{DkimSigner, EgressPath, EgressPool, HasStatus, PolicyStatus, QueuePolicy};
use crate::metrics::Metrics;
use crate::render::{self, Inputs, ObjectKey, POLICY_FILE, Rendered};
use crate::status;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Field manager of the ConfigMap's server-side apply; also its
/// `app.kubernetes.io/managed-by` label and the events' reporting controller.
pub const FIELD_MANAGER: &str = "sluice-operator";
/// Field manager of the status writes (server-side apply of `status`).
pub const STATUS_FIELD_MANAGER: &str = "sluice-operator/status";
/// ConfigMap annotation holding the SHA-256 of the policy file it carries.
pub const HASH_ANNOTATION: &str = "sluice.dev/config-hash";
/// A pod annotation naming its admin port, when not `--admin-port`.
pub const ADMIN_PORT_ANNOTATION: &str = "sluice.dev/admin-port";

/// What the controller manages and how, from the command line.
#[derive(Debug, Clone)]
pub struct Config {
    /// The fleet's namespace: objects, ConfigMap and pods all live in it.
    pub namespace: String,
    /// Name of the generated ConfigMap.
    pub configmap: String,
    /// The MTA StatefulSet that owns the ConfigMap (garbage collection),
    /// and whose replica count a split divides limits by.
    pub fleet: Option<String>,
    /// The MTA pods share throttles and connection limits through Redis
    /// (the chart's `redis`): limits render as written. Else they are split.
    pub shared_limits: bool,
    /// Label selector of the MTA pods.
    pub mta_selector: String,
    /// The MTA pods' admin HTTP port.
    pub admin_port: u16,
    /// The admin API's credentials, when it requires them.
    pub admin_auth: Option<crate::admin_auth::AdminAuth>,
    /// Where the MTA pods mount Secrets (`DIR/<secret>/<key>`), for the renderer.
    pub secrets_dir: String,
    /// The Secrets mounted into the MTA pods (the chart's `mta.secrets`),
    /// which DkimSigners may name and the operator may read; `None`:
    /// unknown, every named Secret is read.
    pub mounted_secrets: Option<Vec<String>>,
    /// Quiet time that ends a burst of changes.
    pub debounce: Duration,
    /// How often pods are asked which config they run.
    pub poll_interval: Duration,
    /// Hand the spool of every ordinal the fleet no longer runs to the live
    /// pods (`crate::handoff`); `None`: leave those volumes alone.
    pub handoff: Option<crate::handoff::HandoffConfig>,
}

/// Why a reconcile pass, or the start of the controller, failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Listing QueuePolicies at start failed, most likely because the CRDs are
    /// not installed.
    #[error("the sluice.dev CRDs are not installed: {0} (kubectl apply --server-side -f crds/)")]
    CrdsMissing(kube::Error),
}

impl Error {
    /// A stable, low-cardinality label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(_)) => "api",
            Error::Kube(_) => "client",
            Error::CrdsMissing(_) => "crds_missing",
        }
    }
}

struct Stores {
    queue_policies: Store<QueuePolicy>,
    egress_pools: Store<EgressPool>,
    egress_paths: Store<EgressPath>,
    dkim_signers: Store<DkimSigner>,
}

impl Stores {
    /// The objects; `secrets` as [`Controller::signer_secrets`] read them.
    fn inputs(&self) -> Inputs {
        Inputs {
            queue_policies: self
                .queue_policies
                .state()
                .iter()
                .map(|o| (**o).clone())
                .collect(),
            egress_pools: self
                .egress_pools
                .state()
                .iter()
                .map(|o| (**o).clone())
                .collect(),
            egress_paths: self
                .egress_paths
                .state()
                .iter()
                .map(|o| (**o).clone())
                .collect(),
            dkim_signers: self
                .dkim_signers
                .state()
                .iter()
                .map(|o| (**o).clone())
                .collect(),
            secrets: None,
        }
    }
}

/// How the fleet's pods stand with the rendered config.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    /// Pods running the rendered policy file.
    pub updated: usize,
    /// Pods found by the selector.
    pub total: usize,
}

/// The reconciler of one fleet: renders its objects into the ConfigMap,
/// follows the rollout and writes each object's status.
pub struct Controller {
    client: Client,
    config: Config,
    metrics: Arc<Metrics>,
    recorder: Recorder,
    http: reqwest::Client,
    /// The hash last applied to the ConfigMap.
    applied: Option<String>,
    /// Pods being removed already asked to hand their mail over (by uid).
    handoff_asked: std::collections::HashSet<String>,
}

/// Watch one kind into a store; every change of an object's generation
/// (or an add or delete) pokes `trigger`. Status-only writes do not.
fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    trigger: tokio::sync::mpsc::Sender<()>,
) -> (Store<K>, tokio::task::JoinHandle<()>)
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, config));
    let task = tokio::spawn(async move {
        let mut seen: HashMap<String, Option<i64>> = HashMap::new();
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            let changed = match event {
                Ok(watcher::Event::Apply(o)) | Ok(watcher::Event::InitApply(o)) => {
                    let uid = o.uid().unwrap_or_default();
                    seen.insert(uid, o.meta().generation) != Some(o.meta().generation)
                }
                Ok(watcher::Event::Delete(o)) => {
                    seen.remove(&o.uid().unwrap_or_default());
                    true
                }
                Ok(watcher::Event::InitDone) => true,
                Ok(watcher::Event::Init) => false,
                Err(e) => {
                    tracing::warn!("watch error (retrying): {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    false
                }
            };
            if changed {
                let _ = trigger.try_send(());
            }
        }
    });
    (reader, task)
}

impl Controller {
    /// A controller for `config`, reporting events as `sluice-operator` (the
    /// `POD_NAME` environment variable names the instance).
    pub fn new(client: Client, config: Config, metrics: Arc<Metrics>) -> Controller {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Controller {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            config,
            metrics,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .expect("an HTTP client builds"),
            applied: None,
            handoff_asked: Default::default(),
        }
    }

    /// Run until `shutdown` resolves.
    pub async fn run(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), Error> {
        let ns = self.config.namespace.clone();
        let qp: Api<QueuePolicy> = Api::namespaced(self.client.clone(), &ns);
        qp.list(&ListParams::default().limit(1))
            .await
            .map_err(Error::CrdsMissing)?;
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let all = watcher::Config::default;
        let (queue_policies, t1) = watch(qp, all(), tx.clone());
        let (egress_pools, t2) =
            watch(Api::namespaced(self.client.clone(), &ns), all(), tx.clone());
        let (egress_paths, t3) =
            watch(Api::namespaced(self.client.clone(), &ns), all(), tx.clone());
        let (dkim_signers, t5) =
            watch(Api::namespaced(self.client.clone(), &ns), all(), tx.clone());
        // a scale of the fleet changes every split share: render again (the
        // field selector is what RBAC's resourceNames allows to watch)
        let t4 = self.config.fleet.clone().map(|name| {
            let one = all().fields(&format!("metadata.name={name}"));
            let sts: Api<StatefulSet> = Api::namespaced(self.client.clone(), &ns);
            watch(sts, one, tx).1
        });
        let stores = Stores {
            queue_policies,
            egress_pools,
            egress_paths,
            dkim_signers,
        };
        for ready in [
            stores.queue_policies.wait_until_ready().await,
            stores.egress_pools.wait_until_ready().await,
            stores.egress_paths.wait_until_ready().await,
            stores.dkim_signers.wait_until_ready().await,
        ] {
            ready.expect("the watch tasks run");
        }
        self.metrics
            .ready
            .store(true, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(namespace = %ns, "watching QueuePolicy, EgressPool, EgressPath and DkimSigner");
        futures::pin_mut!(shutdown);
        let mut poll = tokio::time::interval(self.config.poll_interval);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(()) = rx.recv() => {
                    // debounce: a GitOps sync of many objects is one render
                    loop {
                        tokio::select! {
                            Some(()) = rx.recv() => continue,
                            _ = tokio::time::sleep(self.config.debounce) => break,
                        }
                    }
                }
                _ = poll.tick() => {}
            }
            let started = Instant::now();
            self.metrics.reconciles.inc();
            if let Err(e) = self.reconcile(&stores).await {
                tracing::warn!("reconcile failed: {e}");
                self.metrics
                    .failures
                    .with_label_values(&[e.metric_label()])
                    .inc();
            }
            self.metrics
                .duration
                .observe(started.elapsed().as_secs_f64());
        }
        for t in [Some(t1), Some(t2), Some(t3), t4, Some(t5)]
            .into_iter()
            .flatten()
        {
            t.abort();
        }
        Ok(())
    }

    /// One pass over the fleet.
    async fn reconcile(&mut self, stores: &Stores) -> Result<(), Error> {
        let mut inputs = stores.inputs();
        inputs.secrets = Some(self.signer_secrets(&inputs.dkim_signers).await);
        let fleet = self.fleet().await?;
        let outcome = crate::last_accepted::render(
            &inputs,
            &render::Options {
                secrets_dir: self.config.secrets_dir.clone(),
                fleet,
            },
        );
        let rendered = &outcome.rendered;
        let changed = self.apply_configmap(rendered).await?;
        if changed {
            tracing::info!(hash = %rendered.hash, objects = rendered.verdicts.len(), "config rendered");
        }
        // a handoff problem never holds up the config
        if let Err(e) = self.handoff().await {
            tracing::warn!("spool handoff pass failed: {e}");
            self.metrics.failures.with_label_values(&["handoff"]).inc();
        }
        let rollout = self.rollout(&rendered.hash).await?;
        self.metrics.pods_updated.set(rollout.updated as i64);
        self.metrics.pods_total.set(rollout.total as i64);
        let ns = &self.config.namespace;
        for o in &inputs.queue_policies {
            self.write_status(
                Api::<QueuePolicy>::namespaced(self.client.clone(), ns),
                o,
                &outcome,
                &rollout,
                fleet,
                changed,
            )
            .await?;
        }
        for o in &inputs.egress_pools {
            self.write_status(
                Api::<EgressPool>::namespaced(self.client.clone(), ns),
                o,
                &outcome,
                &rollout,
                fleet,
                changed,
            )
            .await?;
        }
        for o in &inputs.egress_paths {
            self.write_status(
                Api::<EgressPath>::namespaced(self.client.clone(), ns),
                o,
                &outcome,
                &rollout,
                fleet,
                changed,
            )
            .await?;
        }
        for o in &inputs.dkim_signers {
            self.write_status(
                Api::<DkimSigner>::namespaced(self.client.clone(), ns),
                o,
                &outcome,
                &rollout,
                fleet,
                changed,
            )
            .await?;
        }
        Ok(())
    }

    /// The Secrets the DkimSigners name, read at every pass (a rotated or
    /// newly created key shows in the status within a poll interval). One
    /// that is not mounted into the pods is not read.
    async fn signer_secrets(
        &self,
        signers: &[DkimSigner],
    ) -> std::collections::BTreeMap<String, render::SecretState> {
        use render::SecretState;
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.config.namespace);
        let mut out = std::collections::BTreeMap::new();
        for signer in signers {
            let name = &signer.spec.key_secret_ref.name;
            if out.contains_key(name) {
                continue;
            }
            let mounted = self
                .config
                .mounted_secrets
                .as_ref()
                .is_none_or(|m| m.contains(name));
            let state = if !mounted {
                SecretState::NotMounted
            } else {
                match api.get_opt(name).await {
                    Ok(Some(secret)) => SecretState::Data(
                        secret
                            .data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, v.0))
                            .collect(),
                    ),
                    Ok(None) => SecretState::NotFound,
                    Err(e) => SecretState::Unreadable(e.to_string()),
                }
            };
            out.insert(name.clone(), state);
        }
        out
    }

    /// Server-side-apply the ConfigMap unless it already holds this hash;
    /// `true` when it was written.
    async fn apply_configmap(&mut self, rendered: &Rendered) -> Result<bool, Error> {
        if self.applied.as_deref() == Some(rendered.hash.as_str()) {
            return Ok(false);
        }
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.config.namespace);
        let current = api.get_opt(&self.config.configmap).await?;
        let current_hash = current
            .as_ref()
            .and_then(|c| c.annotations().get(HASH_ANNOTATION).cloned());
        if current_hash.as_deref() == Some(rendered.hash.as_str()) {
            self.applied = Some(rendered.hash.clone());
            return Ok(false);
        }
        let owner = self.owner_reference().await?;
        let mut cm = serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": self.config.configmap,
                "namespace": self.config.namespace,
                "labels": {
                    "app.kubernetes.io/managed-by": FIELD_MANAGER,
                    "app.kubernetes.io/part-of": "sluice",
                },
                "annotations": { HASH_ANNOTATION: rendered.hash },
            },
            "data": rendered.files,
        });
        if let Some(owner) = owner {
            cm["metadata"]["ownerReferences"] = serde_json::json!([owner]);
        }
        api.patch(
            &self.config.configmap,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(cm),
        )
        .await?;
        self.metrics.configmap_writes.inc();
        self.applied = Some(rendered.hash.clone());
        Ok(true)
    }

    /// How limits are honoured: shared through Redis, or split across the
    /// StatefulSet's replicas (its spec, so a scale re-renders before the
    /// pods exist; 1 when there is no StatefulSet).
    async fn fleet(&self) -> Result<render::Fleet, Error> {
        if self.config.shared_limits {
            return Ok(render::Fleet::Shared);
        }
        let Some(name) = &self.config.fleet else {
            return Ok(render::Fleet::Split(1));
        };
        let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), &self.config.namespace);
        let replicas = api
            .get_opt(name)
            .await?
            .and_then(|s| s.spec.and_then(|spec| spec.replicas))
            .unwrap_or(1);
        Ok(render::Fleet::Split(replicas.max(1) as u32))
    }

    /// The admin API's credentials, when it requires them.
    async fn credentials(&self) -> Result<Option<crate::admin_auth::Credentials>, Error> {
        let Some(auth) = &self.config.admin_auth else {
            return Ok(None);
        };
        let secrets = Api::namespaced(self.client.clone(), &self.config.namespace);
        let owner = async { self.owner_reference().await.ok().flatten() };
        Ok(crate::admin_auth::credentials(&secrets, auth, owner).await?)
    }

    /// The spool handoff pass, when it is on and the fleet exists.
    async fn handoff(&mut self) -> Result<(), Error> {
        let (Some(config), Some(name)) = (&self.config.handoff, &self.config.fleet) else {
            return Ok(());
        };
        let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), &self.config.namespace);
        let Some(sts) = api.get_opt(name).await? else {
            return Ok(());
        };
        let credentials = self.credentials().await?;
        let pod_api = crate::handoff::PodApi {
            http: &self.http,
            credentials: credentials.as_ref(),
        };
        crate::handoff::reconcile(
            &self.client,
            &sts,
            config,
            &self.recorder,
            &pod_api,
            &mut self.handoff_asked,
        )
        .await?;
        Ok(())
    }

    async fn owner_reference(&self) -> Result<Option<OwnerReference>, Error> {
        let Some(fleet) = &self.config.fleet else {
            return Ok(None);
        };
        let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), &self.config.namespace);
        Ok(match api.get_opt(fleet).await? {
            Some(sts) => sts.controller_owner_ref(&()).map(|mut r| {
                // the ConfigMap is the operator's; the StatefulSet only
                // decides its lifetime
                r.controller = Some(false);
                r
            }),
            None => {
                tracing::warn!(
                    fleet,
                    "the MTA StatefulSet does not exist; the ConfigMap gets no owner"
                );
                None
            }
        })
    }

    /// Ask every MTA pod which generated policy file it runs.
    async fn rollout(&self, hash: &str) -> Result<Rollout, Error> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.config.namespace);
        let pods = api
            .list(&ListParams::default().labels(&self.config.mta_selector))
            .await?;
        let credentials = self.credentials().await?;
        let mut rollout = Rollout {
            updated: 0,
            total: 0,
        };
        for pod in pods.items {
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            rollout.total += 1;
            let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
                continue;
            };
            let port = pod
                .annotations()
                .get(ADMIN_PORT_ANNOTATION)
                .and_then(|p| p.parse().ok())
                .unwrap_or(self.config.admin_port);
            match self.pod_file_hash(&ip, port, credentials.as_ref()).await {
                Ok(Some(h)) if h == hash => rollout.updated += 1,
                Ok(_) => {}
                Err(e) => tracing::debug!(pod = %pod.name_any(), "admin API not answering: {e}"),
            }
        }
        Ok(rollout)
    }

    async fn pod_file_hash(
        &self,
        ip: &str,
        port: u16,
        credentials: Option<&crate::admin_auth::Credentials>,
    ) -> Result<Option<String>, reqwest::Error> {
        let url = format!("http://{ip}:{port}/api/admin/config/v1");
        let mut request = self.http.get(url);
        if let Some(c) = credentials {
            request = request.basic_auth(&c.username, Some(&c.password));
        }
        let bytes = request.send().await?.error_for_status()?.bytes().await?;
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        Ok(body["files"][POLICY_FILE].as_str().map(str::to_string))
    }

    async fn write_status<K>(
        &self,
        api: Api<K>,
        obj: &K,
        outcome: &crate::last_accepted::Outcome,
        rollout: &Rollout,
        fleet: render::Fleet,
        config_changed: bool,
    ) -> Result<(), Error>
    where
        K: Resource<DynamicType = ()>
            + HasStatus
            + Clone
            + DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        let key = render::key_of(obj);
        let verdict = outcome.verdict(&key);
        let old = obj.status().cloned().unwrap_or_default();
        let mut new = status::compute(
            &old,
            obj.meta().generation,
            &verdict,
            &outcome.rendered.hash,
            rollout,
            fleet,
            crate::last_accepted::spec_json(obj),
        );
        if let Some(signer) = outcome.rendered.signers.get(&key) {
            status::add_signer(&mut new, &old, signer);
        }
        if new == old {
            return Ok(());
        }
        let patch = serde_json::json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "status": new,
        });
        api.patch_status(
            &obj.name_any(),
            &PatchParams::apply(STATUS_FIELD_MANAGER).force(),
            &Patch::Apply(patch),
        )
        .await?;
        self.publish_transitions(obj, &key, &old, &new, &verdict, config_changed)
            .await;
        Ok(())
    }

    async fn publish_transitions<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        key: &ObjectKey,
        old: &PolicyStatus,
        new: &PolicyStatus,
        verdict: &crate::last_accepted::Verdict,
        config_changed: bool,
    ) {
        let mut events = Vec::new();
        let was = |t: &str| status::condition(old, t).map(|c| c.status.clone());
        let is = |t: &str| status::condition(new, t).map(|c| c.status.clone());
        // a new rejection, or a different reason for one
        let rejected_before = status::condition(old, "Accepted")
            .filter(|c| c.status == "False")
            .map(|c| c.message.as_str());
        let hash = new.config_hash.as_deref().unwrap_or_default();
        use crate::last_accepted::Verdict;
        match verdict {
            Verdict::Rejected(r) | Verdict::ServingLastAccepted(r)
                if rejected_before != Some(r.message.as_str()) =>
            {
                events.push(Event {
                    type_: EventType::Warning,
                    reason: "ConfigRejected".into(),
                    note: Some(format!("{}: {}", r.reason, r.message)),
                    action: "Render".into(),
                    secondary: None,
                });
            }
            Verdict::Accepted if config_changed || was("Accepted").as_deref() != Some("True") => {
                events.push(Event {
                    type_: EventType::Normal,
                    reason: "ConfigRendered".into(),
                    note: Some(format!("part of config {}", status::short(hash))),
                    action: "Render".into(),
                    secondary: None,
                });
            }
            _ => {}
        }
        if is("Ready").as_deref() == Some("True") && was("Ready").as_deref() != Some("True") {
            events.push(Event {
                type_: EventType::Normal,
                reason: "RolloutComplete".into(),
                note: Some(format!(
                    "all MTA pods run config {} ({})",
                    status::short(hash),
                    new.pods.clone().unwrap_or_default()
                )),
                action: "Rollout".into(),
                secondary: None,
            });
        }
        let reference = obj.object_ref(&());
        for event in events {
            if let Err(e) = self.recorder.publish(&event, &reference).await {
                tracing::warn!(object = %key, "cannot publish event {}: {e}", event.reason);
            }
        }
    }
}

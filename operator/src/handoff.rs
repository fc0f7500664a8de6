//! Spool handoff after a scale-down. A StatefulSet keeps the volumes of
//! the ordinals it no longer runs, and the mail on them with them. For
//! each spool claim of an ordinal at or above the replica count the
//! operator runs a Job: the fleet's own pod template (same image, policy,
//! Secrets and mounts) with that claim as its spool and
//! `sluice-mta --handoff-to <the live pods>`, which moves every message to
//! them and exits 0 once the spool is empty. A succeeded Job is the record
//! that the claim is drained (reported as an event on the StatefulSet,
//! with the counts from its termination message); with
//! `--delete-drained-volumes` the claim is then deleted. A Job whose
//! ordinal runs again is removed, and the spool's lock keeps the pod and a
//! drainer that is still running from sharing it.
//!
//! Before that, while a removed ordinal's pod still runs (its preStop
//! sleep, before SIGTERM), the operator asks it through its admin API to
//! xfer what it holds to the live pods itself; the Job then finds little
//! or nothing left.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, Volume,
};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use std::collections::{BTreeMap, HashSet};

/// Label of a handoff Job (and its pod): the StatefulSet it drains for.
pub const FLEET_LABEL: &str = "sluice.dev/handoff-of";
/// Label of a handoff Job: the ordinal whose spool it drains.
pub const ORDINAL_LABEL: &str = "sluice.dev/handoff-ordinal";
/// Annotation set on a Job once its outcome was reported.
pub const REPORTED_ANNOTATION: &str = "sluice.dev/handoff-reported";

/// How handoffs are run, from the command line.
#[derive(Debug, Clone)]
pub struct HandoffConfig {
    /// The StatefulSet's volume claim template holding the spool.
    pub spool_volume: String,
    /// Delete a claim once its Job drained it.
    pub delete_drained: bool,
    /// The pods' admin port, unless a pod's annotation names another.
    pub admin_port: u16,
}

/// A spool claim of an ordinal the StatefulSet does not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    /// The ordinal.
    pub ordinal: u32,
    /// The claim's name (`<volume>-<statefulset>-<ordinal>`).
    pub claim: String,
}

/// The spool claims of ordinals at or above `replicas`, lowest first.
pub fn orphans(
    fleet: &str,
    replicas: u32,
    volume: &str,
    claims: &[PersistentVolumeClaim],
) -> Vec<Orphan> {
    let prefix = format!("{volume}-{fleet}-");
    let mut found: Vec<Orphan> = claims
        .iter()
        .filter(|c| c.metadata.deletion_timestamp.is_none())
        .filter_map(|c| {
            let name = c.name_any();
            let ordinal: u32 = name.strip_prefix(&prefix)?.parse().ok()?;
            (ordinal >= replicas).then_some(Orphan {
                ordinal,
                claim: name,
            })
        })
        .collect();
    found.sort_by_key(|o| o.ordinal);
    found
}

/// The StatefulSet's replica count (1 when unset, as Kubernetes defaults it).
fn replicas_of(sts: &StatefulSet) -> u32 {
    sts.spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1)
        .max(0) as u32
}

/// A pod's admin port: its annotation, else `admin_port`.
fn port_of(pod: &Pod, admin_port: u16) -> u16 {
    pod.annotations()
        .get(crate::controller::ADMIN_PORT_ANNOTATION)
        .and_then(|v| v.parse().ok())
        .unwrap_or(admin_port)
}

/// The ordinal of a StatefulSet pod's name.
fn ordinal_of(fleet: &str, pod: &str) -> Option<u32> {
    pod.strip_prefix(fleet)?.strip_prefix('-')?.parse().ok()
}

/// The admin URLs of the fleet's pods that run (ordinal below `replicas`,
/// not being deleted): by their stable DNS name under the StatefulSet's
/// Service, else their IP.
pub fn targets(sts: &StatefulSet, pods: &[Pod], admin_port: u16) -> Vec<String> {
    let fleet = sts.name_any();
    let ns = sts.namespace().unwrap_or_default();
    let spec = sts.spec.as_ref();
    let replicas = replicas_of(sts);
    let service = spec
        .and_then(|s| s.service_name.clone())
        .unwrap_or_default();
    let mut live: Vec<(u32, String)> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let name = p.name_any();
            let ordinal = ordinal_of(&fleet, &name).filter(|o| *o < replicas)?;
            let port = port_of(p, admin_port);
            let host = match service.is_empty() {
                false => format!("{name}.{service}.{ns}.svc"),
                true => p.status.as_ref()?.pod_ip.clone()?,
            };
            Some((ordinal, format!("http://{host}:{port}")))
        })
        .collect();
    live.sort();
    live.into_iter().map(|(_, url)| url).collect()
}

/// A handoff Job's name.
pub fn job_name(fleet: &str, ordinal: u32) -> String {
    let name = format!("{fleet}-handoff-{ordinal}");
    name.chars().take(63).collect()
}

/// Why no Job can be made from the StatefulSet.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The StatefulSet has no pod template with a container.
    #[error("the StatefulSet has no container to run the handoff with")]
    NoContainer,
}

/// The Job that drains `orphan`'s claim into `targets`: the fleet's pod
/// template with that claim as the spool volume, the handoff arguments,
/// no probes, ports or preStop hook, restarted on failure, and labels that
/// no MTA Service or selector matches.
pub fn job(
    sts: &StatefulSet,
    orphan: &Orphan,
    targets: &[String],
    config: &HandoffConfig,
) -> Result<Job, JobError> {
    let fleet = sts.name_any();
    let spec = sts.spec.as_ref().ok_or(JobError::NoContainer)?;
    let mut template = spec.template.clone();
    let mut labels: BTreeMap<String, String> = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert("app.kubernetes.io/component".into(), "spool-handoff".into());
    labels.insert(FLEET_LABEL.into(), fleet.clone());
    labels.insert(ORDINAL_LABEL.into(), orphan.ordinal.to_string());
    let meta = template.metadata.get_or_insert_with(Default::default);
    meta.labels = Some(labels.clone());
    let pod = template.spec.as_mut().ok_or(JobError::NoContainer)?;
    let container = pod.containers.first_mut().ok_or(JobError::NoContainer)?;
    let args = container.args.get_or_insert_with(Vec::new);
    args.push("--handoff-to".into());
    args.push(targets.join(","));
    container.liveness_probe = None;
    container.readiness_probe = None;
    container.startup_probe = None;
    container.lifecycle = None;
    container.ports = None;
    pod.restart_policy = Some("OnFailure".into());
    pod.volumes
        .get_or_insert_with(Vec::new)
        .retain(|v| v.name != config.spool_volume);
    pod.volumes.get_or_insert_with(Vec::new).push(Volume {
        name: config.spool_volume.clone(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: orphan.claim.clone(),
            read_only: None,
        }),
        ..Default::default()
    });
    let owner = sts.controller_owner_ref(&()).map(|mut r| {
        r.controller = Some(false);
        r
    });
    Ok(Job {
        metadata: kube::api::ObjectMeta {
            name: Some(job_name(&fleet, orphan.ordinal)),
            namespace: sts.namespace(),
            labels: Some(labels),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(10),
            template,
            ..Default::default()
        }),
        status: None,
    })
}

/// What a finished handoff pod wrote: `{found, moved, remaining}`.
fn outcome(pods: &[Pod]) -> Option<serde_json::Value> {
    pods.iter().find_map(|p| {
        let statuses = p.status.as_ref()?.container_statuses.as_ref()?;
        let message = statuses
            .first()?
            .state
            .as_ref()?
            .terminated
            .as_ref()?
            .message
            .clone()?;
        serde_json::from_str(&message).ok()
    })
}

/// How the operator reaches a pod's admin API.
pub struct PodApi<'a> {
    /// The operator's HTTP client.
    pub http: &'a reqwest::Client,
    /// The admin API's credentials, when it requires them.
    pub credentials: Option<&'a crate::admin_auth::Credentials>,
}

impl PodApi<'_> {
    /// Ask the pod at `ip:port` to move everything it holds to `targets`
    /// (`/api/admin/xfer/v1`); how many messages it took.
    async fn xfer_all(
        &self,
        ip: &str,
        port: u16,
        targets: &[String],
        reason: &str,
    ) -> Result<u64, reqwest::Error> {
        let url = format!("http://{ip}:{port}/api/admin/xfer/v1");
        let body = serde_json::json!({ "targets": targets, "reason": reason });
        let mut request = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(c) = self.credentials {
            request = request.basic_auth(&c.username, Some(&c.password));
        }
        let bytes = request.send().await?.error_for_status()?.bytes().await?;
        let answer: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        Ok(answer["messages"].as_u64().unwrap_or(0))
    }
}

/// The pods of ordinals at or above `replicas` that still run: being
/// removed. With their IP and admin port.
fn leaving(sts: &StatefulSet, pods: &[Pod], admin_port: u16) -> Vec<(String, String, String, u16)> {
    let fleet = sts.name_any();
    let replicas = replicas_of(sts);
    pods.iter()
        .filter_map(|p| {
            let name = p.name_any();
            ordinal_of(&fleet, &name).filter(|o| *o >= replicas)?;
            let ip = p.status.as_ref()?.pod_ip.clone()?;
            let port = port_of(p, admin_port);
            Some((p.uid().unwrap_or_default(), name, ip, port))
        })
        .collect()
}

/// One pass: ask each pod being removed to move its mail to the live pods
/// itself (once per pod, remembered in `asked`), remove stale Jobs, start
/// a Job for every undrained orphan claim, report finished ones (and
/// delete their claims when asked to).
pub async fn reconcile(
    client: &Client,
    sts: &StatefulSet,
    config: &HandoffConfig,
    recorder: &Recorder,
    pod_api: &PodApi<'_>,
    asked: &mut HashSet<String>,
) -> Result<(), kube::Error> {
    let ns = sts.namespace().unwrap_or_default();
    let fleet = sts.name_any();
    let replicas = replicas_of(sts);
    let jobs_api: Api<Job> = Api::namespaced(client.clone(), &ns);
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let claims_api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let jobs = jobs_api
        .list(&ListParams::default().labels(&format!("{FLEET_LABEL}={fleet}")))
        .await?
        .items;
    let reference = sts.object_ref(&());
    let publish = |type_, reason: &str, note: String| {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "SpoolHandoff".into(),
            secondary: None,
        };
        let reference = reference.clone();
        async move {
            if let Err(e) = recorder.publish(&event, &reference).await {
                tracing::warn!("cannot publish event {}: {e}", event.reason);
            }
        }
    };
    for j in &jobs {
        let ordinal: Option<u32> = j.labels().get(ORDINAL_LABEL).and_then(|o| o.parse().ok());
        if ordinal.is_some_and(|o| o < replicas) {
            // the ordinal runs again: its pod owns the spool now
            let dp = DeleteParams::background();
            jobs_api.delete(&j.name_any(), &dp).await?;
        }
    }
    let all_pods = pods_api.list(&ListParams::default()).await?.items;
    let live = targets(sts, &all_pods, config.admin_port);
    let going = leaving(sts, &all_pods, config.admin_port);
    asked.retain(|uid| going.iter().any(|(u, ..)| u == uid));
    for (uid, name, ip, port) in &going {
        if live.is_empty() || asked.contains(uid) {
            continue;
        }
        let reason = format!("scale-down: {name} is being removed");
        match pod_api.xfer_all(ip, *port, &live, &reason).await {
            Ok(n) => {
                asked.insert(uid.clone());
                let note = format!(
                    "{name} is being removed: it moves its {n} queued message(s) to the live pods"
                );
                publish(EventType::Normal, "SpoolHandoffStarted", note).await;
            }
            Err(e) => {
                tracing::debug!(pod = %name, "cannot ask it to hand its mail over (yet): {e}")
            }
        }
    }
    let claims = claims_api.list(&ListParams::default()).await?.items;
    let found = orphans(&fleet, replicas, &config.spool_volume, &claims);
    if found.is_empty() {
        return Ok(());
    }
    for orphan in found {
        let name = job_name(&fleet, orphan.ordinal);
        let pod = format!("{fleet}-{}", orphan.ordinal);
        if all_pods.iter().any(|p| p.name_any() == pod) {
            // still shutting down (its preStop drain): it holds the spool
            continue;
        }
        let Some(job) = jobs.iter().find(|j| j.name_any() == name) else {
            if live.is_empty() {
                tracing::warn!(
                    claim = orphan.claim,
                    "no live MTA pod to hand the spool to yet"
                );
                continue;
            }
            let Ok(new) = self::job(sts, &orphan, &live, config) else {
                tracing::error!(
                    "the StatefulSet has no container: no handoff for {}",
                    orphan.claim
                );
                continue;
            };
            jobs_api.create(&PostParams::default(), &new).await?;
            let note = format!(
                "ordinal {} is gone: moving the mail on {} to {}",
                orphan.ordinal,
                orphan.claim,
                live.join(", ")
            );
            publish(EventType::Normal, "SpoolHandoffStarted", note).await;
            continue;
        };
        if job.annotations().contains_key(REPORTED_ANNOTATION) {
            continue;
        }
        let status = job.status.clone().unwrap_or_default();
        let finished = if status.succeeded.unwrap_or(0) > 0 {
            let pods = pods_api
                .list(&ListParams::default().labels(&format!("job-name={name}")))
                .await?
                .items;
            let counts = outcome(&pods).unwrap_or_default();
            let note = format!(
                "{}: {} message(s) moved to the live pods, {} remaining",
                orphan.claim,
                counts["moved"].as_u64().unwrap_or(0),
                counts["remaining"].as_u64().unwrap_or(0)
            );
            publish(EventType::Normal, "SpoolHandoffSucceeded", note).await;
            if config.delete_drained && counts["remaining"].as_u64() == Some(0) {
                claims_api
                    .delete(&orphan.claim, &DeleteParams::default())
                    .await?;
                let note = format!("{} was drained: deleted", orphan.claim);
                publish(EventType::Normal, "DrainedVolumeDeleted", note).await;
            }
            true
        } else if status
            .conditions
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Failed" && c.status == "True")
        {
            let note = format!(
                "{}: the handoff Job {name} failed; the mail stays on the volume",
                orphan.claim
            );
            publish(EventType::Warning, "SpoolHandoffFailed", note).await;
            true
        } else {
            false
        };
        if finished {
            let patch = serde_json::json!({
                "metadata": { "annotations": { REPORTED_ANNOTATION: "true" } }
            });
            jobs_api
                .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;

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

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, Volume,
};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use std::collections::BTreeMap;

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
    let replicas = spec.and_then(|s| s.replicas).unwrap_or(1).max(0) as u32;
    let service = spec
        .and_then(|s| s.service_name.clone())
        .unwrap_or_default();
    let mut live: Vec<(u32, String)> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let name = p.name_any();
            let ordinal = ordinal_of(&fleet, &name).filter(|o| *o < replicas)?;
            let port = p
                .annotations()
                .get(crate::controller::ADMIN_PORT_ANNOTATION)
                .and_then(|v| v.parse().ok())
                .unwrap_or(admin_port);
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

/// One pass: remove stale Jobs, start a Job for every undrained orphan,
/// report finished ones (and delete their claims when asked to).
pub async fn reconcile(
    client: &Client,
    sts: &StatefulSet,
    config: &HandoffConfig,
    recorder: &Recorder,
) -> Result<(), kube::Error> {
    let ns = sts.namespace().unwrap_or_default();
    let fleet = sts.name_any();
    let replicas = sts
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1)
        .max(0) as u32;
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
    let claims = claims_api.list(&ListParams::default()).await?.items;
    let found = orphans(&fleet, replicas, &config.spool_volume, &claims);
    if found.is_empty() {
        return Ok(());
    }
    let all_pods = pods_api.list(&ListParams::default()).await?.items;
    let live = targets(sts, &all_pods, config.admin_port);
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

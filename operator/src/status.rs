//! The status each object gets: `Accepted`, `Ready` (the summary GitOps
//! tools read), `Reconciling` while pods load the config and `Stalled`
//! when the object is rejected (kstatus), with `lastTransitionTime` kept
//! while a condition's status does not change.

use crate::controller::Rollout;
use crate::crd::PolicyStatus;
use crate::render::Rejection;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The condition of type `type_` in `status`, if there is one.
pub fn condition<'a>(status: &'a PolicyStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

/// The first 12 hex digits, for messages.
pub fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

/// The status for an object of `generation` with this verdict, given the
/// one it has (`old`).
pub fn compute(
    old: &PolicyStatus,
    generation: Option<i64>,
    verdict: &Result<(), Rejection>,
    hash: &str,
    rollout: &Rollout,
) -> PolicyStatus {
    let make = |type_: &str, ok: bool, reason: &str, message: String| {
        let status = if ok { "True" } else { "False" };
        // keep the transition time while the status stays the same
        let since = condition(old, type_)
            .filter(|c| c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: generation,
            last_transition_time: since,
        }
    };
    let pods = format!("{}/{}", rollout.updated, rollout.total);
    let mut conditions = Vec::new();
    match verdict {
        Err(r) => {
            conditions.push(make("Accepted", false, r.reason, r.message.clone()));
            conditions.push(make("Ready", false, r.reason, r.message.clone()));
            conditions.push(make("Stalled", true, r.reason, r.message.clone()));
        }
        Ok(()) => {
            let config = short(hash);
            conditions.push(make(
                "Accepted",
                true,
                "Rendered",
                format!("part of config {config}"),
            ));
            if rollout.total == 0 {
                conditions.push(make(
                    "Ready",
                    false,
                    "NoMtaPods",
                    "no MTA pods match the selector".into(),
                ));
            } else if rollout.updated == rollout.total {
                conditions.push(make(
                    "Ready",
                    true,
                    "RolloutComplete",
                    format!("{pods} MTA pods run config {config}"),
                ));
            } else {
                let message = format!("{pods} MTA pods run config {config}");
                conditions.push(make("Ready", false, "RollingOut", message.clone()));
                conditions.push(make("Reconciling", true, "RollingOut", message));
            }
        }
    }
    PolicyStatus {
        observed_generation: generation,
        conditions,
        config_hash: verdict.is_ok().then(|| hash.to_string()),
        pods: Some(pods),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(updated: usize, total: usize) -> Rollout {
        Rollout { updated, total }
    }

    #[test]
    fn rolling_out_then_ready_keeps_accepted_transition_time() {
        let first = compute(
            &PolicyStatus::default(),
            Some(1),
            &Ok(()),
            "abc",
            &rollout(1, 2),
        );
        assert_eq!(condition(&first, "Ready").unwrap().reason, "RollingOut");
        assert_eq!(condition(&first, "Reconciling").unwrap().status, "True");
        std::thread::sleep(std::time::Duration::from_millis(5));
        let done = compute(&first, Some(1), &Ok(()), "abc", &rollout(2, 2));
        assert_eq!(condition(&done, "Ready").unwrap().status, "True");
        assert!(condition(&done, "Reconciling").is_none());
        assert_eq!(
            condition(&done, "Accepted").unwrap().last_transition_time,
            condition(&first, "Accepted").unwrap().last_transition_time
        );
        assert_ne!(
            condition(&done, "Ready").unwrap().last_transition_time,
            condition(&first, "Ready").unwrap().last_transition_time
        );
        // nothing changed: the same status, so no write
        assert_eq!(
            compute(&done, Some(1), &Ok(()), "abc", &rollout(2, 2)),
            done
        );
    }

    #[test]
    fn a_rejected_object_is_stalled_with_its_reason() {
        let r = Rejection {
            reason: "EgressPoolNotFound",
            message: "spec.egressPool: x".into(),
        };
        let s = compute(
            &PolicyStatus::default(),
            Some(3),
            &Err(r),
            "abc",
            &rollout(2, 2),
        );
        let ready = condition(&s, "Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "EgressPoolNotFound")
        );
        assert_eq!(condition(&s, "Stalled").unwrap().status, "True");
        assert_eq!(s.config_hash, None);
        assert_eq!(s.observed_generation, Some(3));
    }
}

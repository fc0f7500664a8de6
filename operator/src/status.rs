//! The status each object gets: `Accepted`, `Ready` (the summary GitOps
//! tools read), `Reconciling` while pods load the config and `Stalled`
//! when the object is rejected (kstatus), with `lastTransitionTime` kept
//! while a condition's status does not change.

use crate::controller::Rollout;
use crate::crd::PolicyStatus;
use crate::last_accepted::Verdict;
use crate::render::SignerStatus;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The condition of type `type_` in `status`, if there is one.
pub fn condition<'a>(status: &'a PolicyStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

/// The first 12 hex digits, for messages.
pub fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

/// A condition, keeping `old`'s transition time while its status stays.
fn make_condition(
    old: &PolicyStatus,
    generation: Option<i64>,
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
) -> Condition {
    let status = if ok { "True" } else { "False" };
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
}

/// A DkimSigner's own part of `status`: what it signs, the DNS record to
/// publish, and `KeyReady`. An unusable key makes it not Ready, with the
/// key's reason: its domains' mail is refused (4xx), never sent unsigned.
pub fn add_signer(status: &mut PolicyStatus, old: &PolicyStatus, signer: &SignerStatus) {
    let generation = status.observed_generation;
    status.signing = Some(signer.signing.clone());
    status.dns_names = signer.dns_names.clone();
    status.dns_record = None;
    let key = match &signer.key {
        Ok(None) => return,
        Ok(Some(record)) => {
            status.dns_record = Some(record.clone());
            let message = format!(
                "publish {record:?} as TXT at {}",
                status.dns_names.join(", ")
            );
            make_condition(old, generation, "KeyReady", true, "KeyRead", message)
        }
        Err(r) => {
            let message = format!(
                "{}; mail from these domains is refused with a 4xx until the key is usable",
                r.message
            );
            // not Ready, and Stalled (kstatus: Failed) until someone acts
            status
                .conditions
                .retain(|c| c.type_ != "Ready" && c.type_ != "Stalled");
            for type_ in ["Ready", "Stalled"] {
                let ok = type_ == "Stalled";
                let c = make_condition(old, generation, type_, ok, r.reason, message.clone());
                status.conditions.push(c);
            }
            make_condition(old, generation, "KeyReady", false, r.reason, message)
        }
    };
    status.conditions.push(key);
}

/// The status for an object of `generation` with this verdict, given the
/// one it has (`old`); `spec` is its current spec as JSON, kept as the last
/// accepted one when it is accepted.
pub fn compute(
    old: &PolicyStatus,
    generation: Option<i64>,
    verdict: &Verdict,
    hash: &str,
    rollout: &Rollout,
    fleet: crate::render::Fleet,
    spec: Option<String>,
) -> PolicyStatus {
    let make = |type_: &str, ok: bool, reason: &str, message: String| {
        make_condition(old, generation, type_, ok, reason, message)
    };
    let pods = format!("{}/{}", rollout.updated, rollout.total);
    let config = short(hash);
    // Ready (and Reconciling) for an object that is part of the config
    let rolled_out = |reason: &str, what: String| {
        if rollout.total == 0 {
            let message = "no MTA pods match the selector".to_string();
            return vec![make("Ready", false, "NoMtaPods", message)];
        }
        let message = format!("{what}{pods} MTA pods run config {config}");
        if rollout.updated == rollout.total {
            vec![make("Ready", true, reason, message)]
        } else {
            vec![
                make("Ready", false, "RollingOut", message.clone()),
                make("Reconciling", true, "RollingOut", message),
            ]
        }
    };
    let mut conditions = Vec::new();
    let (last_generation, last_spec) = match verdict {
        Verdict::Rejected(r) => {
            for (type_, ok) in [("Accepted", false), ("Ready", false), ("Stalled", true)] {
                conditions.push(make(type_, ok, r.reason, r.message.clone()));
            }
            (None, None)
        }
        Verdict::ServingLastAccepted(r) => {
            conditions.push(make("Accepted", false, r.reason, r.message.clone()));
            let served = old
                .last_accepted_generation
                .map(|g| format!("generation {g}"))
                .unwrap_or_else(|| "the last accepted spec".into());
            let what = format!("{} (serving {served} instead); ", r.message);
            conditions.extend(rolled_out("ServingLastAccepted", what));
            (old.last_accepted_generation, old.last_accepted_spec.clone())
        }
        Verdict::Accepted => {
            let message = format!("part of config {config}");
            conditions.push(make("Accepted", true, "Rendered", message));
            conditions.extend(rolled_out("RolloutComplete", String::new()));
            (generation, spec)
        }
    };
    PolicyStatus {
        observed_generation: generation,
        conditions,
        config_hash: (!matches!(verdict, Verdict::Rejected(_))).then(|| hash.to_string()),
        pods: Some(pods),
        limits: Some(fleet.mode().into()),
        split_across: match fleet {
            crate::render::Fleet::Split(n) => Some(n),
            crate::render::Fleet::Shared => None,
        },
        last_accepted_generation: last_generation,
        last_accepted_spec: last_spec,
        ..PolicyStatus::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::Rejection;

    fn rollout(updated: usize, total: usize) -> Rollout {
        Rollout { updated, total }
    }

    #[test]
    fn rolling_out_then_ready_keeps_accepted_transition_time() {
        let first = compute(
            &PolicyStatus::default(),
            Some(1),
            &Verdict::Accepted,
            "abc",
            &rollout(1, 2),
            crate::render::Fleet::Split(1),
            None,
        );
        assert_eq!(condition(&first, "Ready").unwrap().reason, "RollingOut");
        assert_eq!(condition(&first, "Reconciling").unwrap().status, "True");
        std::thread::sleep(std::time::Duration::from_millis(5));
        let done = compute(
            &first,
            Some(1),
            &Verdict::Accepted,
            "abc",
            &rollout(2, 2),
            crate::render::Fleet::Split(1),
            None,
        );
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
            compute(
                &done,
                Some(1),
                &Verdict::Accepted,
                "abc",
                &rollout(2, 2),
                crate::render::Fleet::Split(1),
                None
            ),
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
            &Verdict::Rejected(r),
            "abc",
            &rollout(2, 2),
            crate::render::Fleet::Split(1),
            None,
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

    #[test]
    fn a_rejected_edit_keeps_serving_the_last_accepted_spec() {
        let accepted = compute(
            &PolicyStatus::default(),
            Some(1),
            &Verdict::Accepted,
            "abc",
            &rollout(2, 2),
            crate::render::Fleet::Split(1),
            Some("{\"maxAge\":\"1d\"}".into()),
        );
        assert_eq!(accepted.last_accepted_generation, Some(1));
        let r = Rejection {
            reason: "InvalidRate",
            message: "spec.maxMessageRate: \"fast\" is not a rate".into(),
        };
        let s = compute(
            &accepted,
            Some(2),
            &Verdict::ServingLastAccepted(r),
            "abc",
            &rollout(2, 2),
            crate::render::Fleet::Split(1),
            Some("{\"maxMessageRate\":\"fast\"}".into()),
        );
        let a = condition(&s, "Accepted").unwrap();
        assert_eq!(
            (a.status.as_str(), a.reason.as_str()),
            ("False", "InvalidRate")
        );
        let ready = condition(&s, "Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "ServingLastAccepted")
        );
        assert!(
            ready.message.contains("serving generation 1"),
            "{}",
            ready.message
        );
        assert!(condition(&s, "Stalled").is_none());
        // the spec kept is the accepted one, not the rejected edit
        assert_eq!(s.last_accepted_spec.as_deref(), Some("{\"maxAge\":\"1d\"}"));
        assert_eq!(s.last_accepted_generation, Some(1));
        assert_eq!(s.config_hash.as_deref(), Some("abc"));
    }

    #[test]
    fn a_signer_with_an_unusable_key_is_stalled_and_a_usable_one_ready() {
        let accepted = compute(
            &PolicyStatus::default(),
            Some(1),
            &Verdict::Accepted,
            "abc",
            &rollout(2, 2),
            crate::render::Fleet::Split(1),
            None,
        );
        let mut signer = SignerStatus {
            signing: "rsa-sha256 for example.com".into(),
            dns_names: vec!["s1._domainkey.example.com".into()],
            key: Err(Rejection {
                reason: "SecretNotFound",
                message: "spec.keySecretRef: Secret \"k\" does not exist".into(),
            }),
        };
        let mut s = accepted.clone();
        add_signer(&mut s, &PolicyStatus::default(), &signer);
        for (type_, status) in [
            ("Ready", "False"),
            ("Stalled", "True"),
            ("KeyReady", "False"),
        ] {
            let c = condition(&s, type_).unwrap();
            assert_eq!(
                (c.status.as_str(), c.reason.as_str()),
                (status, "SecretNotFound")
            );
            assert!(c.message.contains("refused with a 4xx"), "{}", c.message);
        }
        assert_eq!(condition(&s, "Accepted").unwrap().status, "True");
        assert_eq!(s.dns_record, None);
        assert_eq!(s.signing.as_deref(), Some("rsa-sha256 for example.com"));

        signer.key = Ok(Some("v=DKIM1; k=rsa; p=AAAA".into()));
        let mut s = accepted;
        add_signer(&mut s, &PolicyStatus::default(), &signer);
        assert_eq!(condition(&s, "Ready").unwrap().reason, "RolloutComplete");
        assert!(condition(&s, "Stalled").is_none());
        assert_eq!(condition(&s, "KeyReady").unwrap().status, "True");
        assert_eq!(s.dns_record.as_deref(), Some("v=DKIM1; k=rsa; p=AAAA"));
        assert_eq!(s.dns_names, vec!["s1._domainkey.example.com"]);
    }
}

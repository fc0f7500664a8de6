//! An edit that makes an object invalid must not drop it from the config:
//! its mail would silently fall to another policy. While the current spec
//! is rejected, the config keeps the object's last accepted spec (kept in
//! its status, so an operator restart keeps it too), and the status says
//! so: `Accepted=False` with the rejection, `Ready` with reason
//! `ServingLastAccepted`.

use crate::crd::HasStatus;
use crate::render::{self, Inputs, ObjectKey, Options, Rejection, Rendered};
use kube::Resource;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;

/// What the render made of an object.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Its current spec is in the config.
    Accepted,
    /// Left out: its current spec is rejected, and no earlier one was
    /// accepted (or that one no longer renders).
    Rejected(Rejection),
    /// Its current spec is rejected; the config serves its last accepted one.
    ServingLastAccepted(Rejection),
}

/// The render, and the objects it serves from their last accepted spec.
pub struct Outcome {
    /// The config.
    pub rendered: Rendered,
    /// Objects whose current spec was rejected, served from their last
    /// accepted spec, with the current spec's rejection.
    pub serving: BTreeMap<ObjectKey, Rejection>,
}

impl Outcome {
    /// The verdict on `key`.
    pub fn verdict(&self, key: &ObjectKey) -> Verdict {
        if let Some(r) = self.serving.get(key) {
            return Verdict::ServingLastAccepted(r.clone());
        }
        match self.rendered.verdicts.get(key) {
            Some(Err(r)) => Verdict::Rejected(r.clone()),
            _ => Verdict::Accepted,
        }
    }
}

/// Replace each rejected object that has a last accepted spec by that spec.
fn substitute<K>(
    objects: &mut [K],
    verdicts: &BTreeMap<ObjectKey, Result<(), Rejection>>,
    serving: &mut BTreeMap<ObjectKey, Rejection>,
) where
    K: Resource<DynamicType = ()> + HasStatus + Serialize + DeserializeOwned,
{
    for object in objects.iter_mut() {
        let key = render::key_of(object);
        let Some(Err(rejection)) = verdicts.get(&key) else {
            continue;
        };
        let Some(spec) = object
            .status()
            .and_then(|s| s.last_accepted_spec.as_deref())
        else {
            continue;
        };
        let (Ok(spec), Ok(mut value)) = (
            serde_json::from_str::<serde_json::Value>(spec),
            serde_json::to_value(&*object),
        ) else {
            continue;
        };
        value["spec"] = spec;
        if let Ok(earlier) = serde_json::from_value::<K>(value) {
            *object = earlier;
            serving.insert(key, rejection.clone());
        }
    }
}

/// Render the objects; where one is rejected and was accepted before,
/// render again with its last accepted spec in its place. A substitute
/// that does not render either (what it names is gone) stays out.
pub fn render(inputs: &Inputs, options: &Options) -> Outcome {
    let first = render::render(inputs, options);
    let mut serving = BTreeMap::new();
    if first.rejected().next().is_none() {
        return Outcome {
            rendered: first,
            serving,
        };
    }
    let mut again = inputs.clone();
    substitute(&mut again.queue_policies, &first.verdicts, &mut serving);
    substitute(&mut again.egress_pools, &first.verdicts, &mut serving);
    substitute(&mut again.egress_paths, &first.verdicts, &mut serving);
    substitute(&mut again.dkim_signers, &first.verdicts, &mut serving);
    if serving.is_empty() {
        return Outcome {
            rendered: first,
            serving,
        };
    }
    let mut second = render::render(&again, options);
    serving.retain(|key, _| matches!(second.verdicts.get(key), Some(Ok(()))));
    // the objects that stay out are reported with their own rejection
    for (key, verdict) in second.verdicts.iter_mut() {
        if verdict.is_err()
            && let Some(Err(r)) = first.verdicts.get(key)
        {
            *verdict = Err(r.clone());
        }
    }
    Outcome {
        rendered: second,
        serving,
    }
}

/// The spec of `object` as its status keeps it.
pub fn spec_json<K: Serialize>(object: &K) -> Option<String> {
    let value = serde_json::to_value(object).ok()?;
    Some(value.get("spec")?.to_string())
}

//! The status every kind shares: what the operator last did with the object.

use super::{DkimSigner, EgressPath, EgressPool, QueuePolicy};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// What the operator last did with an object.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted` (valid and rendered), `Ready` (accepted and every MTA pod
    /// runs the config), `Reconciling` (pods still loading it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// How the fleet honours this object's limits: `Shared` (through
    /// Redis) or `Split` (each pod its share).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<String>,
    /// The pods a `Split` divides the limits by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_across: Option<u32>,
    /// SHA-256 of the generated policy this object is part of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// MTA pods running `configHash`, of those found: `2/3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<String>,
    /// The generation of the spec last accepted. While a later edit is
    /// rejected, the config keeps serving that spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_accepted_generation: Option<i64>,
    /// That spec, as JSON: kept here so that it survives an operator restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_accepted_spec: Option<String>,
    /// DkimSigner: what it signs with, and for which sender domains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing: Option<String>,
    /// DkimSigner: where to publish its public key (TXT records).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_names: Vec<String>,
    /// DkimSigner: the TXT record's value, from the key in its Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_record: Option<String>,
}

/// Conditions merge by `type` under server-side apply.
fn conditions_schema(_: &mut schemars::generate::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "properties": {
                "lastTransitionTime": { "format": "date-time", "type": "string" },
                "message": { "type": "string" },
                "observedGeneration": { "type": "integer", "format": "int64" },
                "reason": { "type": "string" },
                "status": { "type": "string", "enum": ["True", "False", "Unknown"] },
                "type": { "type": "string" }
            },
            "required": ["lastTransitionTime", "message", "reason", "status", "type"]
        }
    })
}

/// The kinds share one status type.
pub trait HasStatus {
    /// The object's status, if it has one yet.
    fn status(&self) -> Option<&PolicyStatus>;
}

impl HasStatus for QueuePolicy {
    fn status(&self) -> Option<&PolicyStatus> {
        self.status.as_ref()
    }
}

impl HasStatus for EgressPool {
    fn status(&self) -> Option<&PolicyStatus> {
        self.status.as_ref()
    }
}

impl HasStatus for DkimSigner {
    fn status(&self) -> Option<&PolicyStatus> {
        self.status.as_ref()
    }
}

impl HasStatus for EgressPath {
    fn status(&self) -> Option<&PolicyStatus> {
        self.status.as_ref()
    }
}

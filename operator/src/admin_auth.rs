//! The credentials the operator polls the MTA pods' admin API with: a
//! `kubernetes.io/basic-auth` Secret (keys `username`, `password`) that the
//! pods' policy checks in `http_server_validate_auth_basic`. It is read at
//! every poll, so a rotated Secret applies without a restart. When the chart
//! names no Secret of the user's, the operator creates one with a random
//! password at its first need, owned by the fleet's StatefulSet, and never
//! overwrites it afterwards.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Api;
use kube::api::PostParams;
use std::collections::BTreeMap;

/// Where the credentials are, from `--admin-secret` and `--create-admin-secret`.
#[derive(Debug, Clone)]
pub struct AdminAuth {
    /// Name of the `kubernetes.io/basic-auth` Secret, in the fleet's namespace.
    pub secret: String,
    /// Create the Secret when it does not exist.
    pub create: bool,
}

/// A user name and password for the admin API (HTTP basic auth).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The Secret's `username`.
    pub username: String,
    /// The Secret's `password` (never empty).
    pub password: String,
}

/// The user name of a Secret the operator creates.
pub const USERNAME: &str = "sluice-operator";

/// The credentials in the Secret; `None` when it does not exist (and may not
/// be created) or lacks a key.
pub async fn credentials(
    api: &Api<Secret>,
    auth: &AdminAuth,
    owner: impl std::future::Future<Output = Option<OwnerReference>>,
) -> Result<Option<Credentials>, kube::Error> {
    let secret = match api.get_opt(&auth.secret).await? {
        Some(s) => s,
        None if auth.create => create(api, auth, owner.await).await?,
        None => {
            tracing::warn!(secret = %auth.secret, "the admin API Secret does not exist: polling without credentials");
            return Ok(None);
        }
    };
    Ok(read(&secret))
}

fn read(secret: &Secret) -> Option<Credentials> {
    let data = secret.data.as_ref()?;
    let text = |key: &str| {
        data.get(key)
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .map(|v| v.trim_end_matches('\n').to_string())
    };
    Some(Credentials {
        username: text("username")?,
        password: text("password").filter(|p| !p.is_empty())?,
    })
}

async fn create(
    api: &Api<Secret>,
    auth: &AdminAuth,
    owner: Option<OwnerReference>,
) -> Result<Secret, kube::Error> {
    use rand::distr::{Alphanumeric, SampleString};
    let password = Alphanumeric.sample_string(&mut rand::rng(), 40);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(auth.secret.clone()),
            labels: Some(BTreeMap::from([
                (
                    "app.kubernetes.io/managed-by".to_string(),
                    crate::controller::FIELD_MANAGER.to_string(),
                ),
                (
                    "app.kubernetes.io/part-of".to_string(),
                    "sluice".to_string(),
                ),
            ])),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        type_: Some("kubernetes.io/basic-auth".into()),
        data: Some(BTreeMap::from([
            (
                "username".to_string(),
                ByteString(USERNAME.as_bytes().to_vec()),
            ),
            ("password".to_string(), ByteString(password.into_bytes())),
        ])),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(s) => {
            tracing::info!(secret = %auth.secret, "created the admin API Secret");
            Ok(s)
        }
        // made meanwhile (another operator replica, the user): use that one
        Err(kube::Error::Api(e)) if e.code == 409 => api.get(&auth.secret).await,
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(pairs: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn a_basic_auth_secret_is_read_and_an_incomplete_one_is_not() {
        let c = read(&secret(&[("username", "ops"), ("password", "s3cret\n")])).unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("ops", "s3cret")
        );
        assert_eq!(read(&secret(&[("username", "ops")])), None);
        assert_eq!(
            read(&secret(&[("username", "ops"), ("password", "")])),
            None
        );
        assert_eq!(read(&Secret::default()), None);
    }
}

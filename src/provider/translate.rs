//! The one place that translates between the modules' own types: settings into key identity
//! and promotion rules, OpenBao key metadata into a registry observation, and OpenBao errors
//! into KMS errors (and so gRPC codes).
use crate::config::Settings;
use crate::keys::{KeyIdentity, Observation, Promotion};
use crate::kms::KmsError;
use crate::openbao;

/// Everything a key_id is bound to, from the configuration.
pub(crate) fn key_identity(s: &Settings) -> KeyIdentity {
    let scope = &s.transit.key_id_scope;
    KeyIdentity {
        provider_name: scope.provider_name.clone(),
        cluster_id: scope.cluster_id.clone(),
        transit_mount_id: scope.transit_mount_id.clone(),
        key_lineage_id: scope.key_lineage_id.clone(),
        instance_id: s.openbao.instance_id.clone(),
        namespace: s.openbao.namespace.clone().unwrap_or_default(),
        mount_path: s.transit.mount_path.clone(),
        key_name: s.transit.key_name.clone(),
    }
}

pub(super) fn promotion(s: &Settings) -> Promotion {
    Promotion {
        stable_observations: s.rotation.stable_observations,
        activation_delay: s.rotation.activation_delay,
    }
}

pub(super) fn observation(meta: &openbao::KeyMetadata) -> Observation {
    Observation {
        latest_version: meta.latest_version,
        min_decryption_version: meta.min_decryption_version,
        versions: meta.versions.clone(),
    }
}

/// What kube-apiserver is told when OpenBao fails a request.
impl From<openbao::Error> for KmsError {
    fn from(e: openbao::Error) -> Self {
        use openbao::Error as E;
        match e {
            E::Unreachable(_)
            | E::Timeout(_)
            | E::Sealed
            | E::RateLimited
            | E::Server { .. }
            | E::Overloaded(_)
            | E::DeadlineTooShort { .. } => Self::Unavailable(format!("OpenBao unavailable: {e}")),
            // Wrong AAD or a tampered ciphertext: the caller's data is bad, not OpenBao.
            E::BadRequest(_) => Self::InvalidArgument(e.to_string()),
            E::PermissionDenied(_) => {
                Self::PermissionDenied(format!("OpenBao permission denied: {e}"))
            }
            E::NoToken(_) | E::Credential { .. } | E::LoginRefused(_) => {
                Self::Unauthenticated(format!("OpenBao authentication failed: {e}"))
            }
            // The token may come back (re-inserted, unhung); the caller should retry.
            E::Pkcs11(_) => Self::Unavailable(format!("OpenBao unavailable: {e}")),
            E::NotFound(_)
            | E::ResponseTooLarge(_)
            | E::Protocol(_)
            | E::Tls(_)
            | E::Setting { .. }
            | E::RedirectRefused(_) => Self::Internal(e.to_string()),
        }
    }
}

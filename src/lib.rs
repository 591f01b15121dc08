//! bao-kms-provider: a Kubernetes KMS v2 plugin whose keys live in OpenBao Transit.
//!
//! `kms` is the Kubernetes side, `openbao` the OpenBao side, `keys` key identity and lifecycle,
//! `provider` ties them together, `systemd` and `telemetry` are the host integration.
pub mod cli;
pub mod config;
pub mod daemon;
pub mod deadline;
pub mod envelope;
pub mod keys;
pub mod kms;
pub mod openbao;
pub mod provider;
pub mod systemd;
pub mod telemetry;

/// Generated KMS v2 protobuf types (package `v2`).
pub mod pb {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("v2");
}

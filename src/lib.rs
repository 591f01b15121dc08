//! bao-kms-provider: a Kubernetes KMS v2 plugin whose keys live in OpenBao Transit.
//!
//! `kms` is the Kubernetes side, `openbao` the OpenBao side, `keys` key identity and lifecycle,
//! `provider` ties them together (the only module that translates between them), `daemon`
//! supervises it, `systemd` and `telemetry` are the host integration.
//!
//! The public API is what the binary, the integration tests, the bench and the fuzz targets need;
//! docs/architecture.md lists it (`tests/architecture_doc.rs` keeps that list true). Everything
//! else is private to the crate, so the compiler reports dead code. Test-only helpers sit behind
//! the `testkit` feature, the fuzz entry points behind `fuzzing`.
#![warn(unreachable_pub, dead_code)]

pub mod cli;
pub mod config;
mod daemon;
pub mod deadline;
pub mod envelope;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod hardening;
pub mod keys;
pub mod kms;
mod openbao;
mod provider;
mod support;
mod systemd;
mod telemetry;

/// Generated KMS v2 protobuf types (package `v2`).
pub mod pb {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("v2");
}

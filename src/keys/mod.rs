//! Key identity (key_id, associated data) and the lifecycle of Transit key versions.
mod atomic;
mod id;
mod registry;

pub(crate) use id::apiserver_hash;
pub(crate) use id::KeyIdentity;
/// Public: the AAD binding is part of the stored data's contract (the bench and a manual Transit
/// decrypt during recovery need it).
pub use id::{associated_data, short_hash};
pub(crate) use registry::{Change, KeyState, Refusal, Registry};
pub(crate) use registry::{Observation, Promotion, Sighting};
mod store;

pub(crate) use store::{Store, StoreError};
pub(crate) mod trim;

pub(crate) use trim::TrimRecord;

//! Key identity (key_id, associated data) and the lifecycle of Transit key versions.
mod id;
mod registry;

pub use id::short_hash;
pub(crate) use id::{associated_data, KeyIdentity};
pub(crate) use registry::{Change, KeyState, Refusal, Registry};
pub(crate) use registry::{Observation, Promotion};
mod store;

pub(crate) use store::{Store, StoreError};

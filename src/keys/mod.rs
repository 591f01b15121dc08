//! Key identity (key_id, associated data) and the lifecycle of Transit key versions.
mod id;
mod registry;

pub use id::{associated_data, short_hash, KeyIdentity, KEY_ID_PREFIX};
pub use registry::{Change, KeyRecord, KeyState, Refusal, Registry};
mod store;

pub use store::{Store, StoreError, Verified, REGISTRY_FILE};

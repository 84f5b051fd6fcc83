pub mod claims;
pub mod store;

pub use claims::MemClaims;
pub use store::{FaultPlan, MemStore, WriteFault};

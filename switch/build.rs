//! Rebuilds the crate when a migration is added or changed: `refinery::embed_migrations!`
//! (switch/src/db.rs) reads `migrations/` at compile time, and cargo does not know it
//! does. Without this, a new migration file was left out of an incremental build, and
//! the binary migrated databases to the schema before it.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}

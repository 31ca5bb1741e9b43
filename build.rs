// `sqlx::migrate!` (src/db/mod.rs) embeds ./migrations at compile time, and cargo does not see
// that: without this, adding a migration left incremental builds with the old set.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}

//! `sqlx::migrate!` embeds the migrations at compile time; without this,
//! cargo would not rebuild the crate when only a migration changed.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}

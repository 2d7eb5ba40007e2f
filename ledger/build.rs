// `sqlx::migrate!` embeds `../migrations` at compile time; without this, adding a migration
// does not rebuild the crate and binaries and tests keep the old list.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}

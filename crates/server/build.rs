//! Rebuild when anything under ui/ changes: the dashboard is embedded in the binary, and
//! a new file must be picked up too, not only edits of embedded ones.
fn main() {
    println!("cargo:rerun-if-changed=../../ui");
}

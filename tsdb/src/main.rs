//! The `rimir` binary: every server role and the `rimir tsdb` tools.

fn main() {
    println!("rimir");
}

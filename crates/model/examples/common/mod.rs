//! What the timing examples share (not an example itself: Cargo takes `examples/*/main.rs`
//! and `examples/*.rs` as examples, not `examples/common/mod.rs`).

/// The value after `name` in `args`, else `default`.
pub fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

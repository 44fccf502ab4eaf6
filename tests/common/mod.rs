//! Helpers shared by the root integration tests that read the JSON test vectors in
//! `specs/vectors/`. Each test binary uses a subset of them.
#![allow(dead_code)]

use serde_json::Value;

/// The value as a string; panics with the value if it is not one.
pub fn s(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v}"))
}

/// The value as an unsigned integer.
pub fn u(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("expected an unsigned integer, got {v}"))
}

/// The value as a float.
pub fn f(v: &Value) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("expected a number, got {v}"))
}

/// The value as an array.
pub fn arr(v: &Value) -> &Vec<Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected an array, got {v}"))
}

/// The value as lowercase hex, decoded.
pub fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(s(v)).unwrap_or_else(|e| panic!("bad hex {v}: {e}"))
}

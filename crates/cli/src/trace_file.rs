//! Loading activation traces stored as safetensors: the model crate's one reader of the format
//! ([`veritrace_model::trace_file`], documented there), re-exported under its old path.

pub use veritrace_model::trace_file::*;

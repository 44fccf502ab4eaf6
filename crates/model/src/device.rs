//! Where a model runs: the CPU (candle, the reference arithmetic) or an NVIDIA GPU (the `cuda`
//! feature: kernels/*.cu through NVRTC and cudarc).

use std::fmt;
use std::str::FromStr;

use crate::ModelError;

/// A compute device, written `cpu` or `cuda[:N]` (`cuda` is `cuda:0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Device {
    /// The CPU: candle-core, the arithmetic every verifier recomputes with.
    #[default]
    Cpu,
    /// The NVIDIA GPU of this ordinal.
    Cuda(usize),
}

impl Device {
    /// Whether this build can run models on this device at all (the `cuda` feature is on for
    /// `cuda:N`); the driver and the GPU are checked only when the device is opened.
    pub fn compiled_in(self) -> bool {
        match self {
            Device::Cpu => true,
            Device::Cuda(_) => cfg!(feature = "cuda"),
        }
    }

    /// `Ok` for the CPU and, with the `cuda` feature, for a GPU; a typed error naming the
    /// missing feature otherwise.
    pub fn check_compiled_in(self) -> Result<(), ModelError> {
        if self.compiled_in() {
            Ok(())
        } else {
            Err(ModelError::DeviceUnavailable {
                device: self.to_string(),
                reason: "this build has no CUDA support (rebuild with `--features cuda`)".into(),
            })
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl FromStr for Device {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        let bad = || {
            ModelError::InvalidArgument(format!(
                "device {s:?}: expected `cpu`, `cuda` or `cuda:N` (N a GPU ordinal)"
            ))
        };
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => {
                let n = s.strip_prefix("cuda:").ok_or_else(bad)?;
                if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) || n.len() > 4 {
                    return Err(bad());
                }
                Ok(Device::Cuda(n.parse().map_err(|_| bad())?))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display_round_trip() {
        for (s, d) in [
            ("cpu", Device::Cpu),
            ("cuda", Device::Cuda(0)),
            ("cuda:0", Device::Cuda(0)),
            ("cuda:3", Device::Cuda(3)),
        ] {
            assert_eq!(s.parse::<Device>().unwrap(), d);
        }
        assert_eq!(Device::Cuda(2).to_string(), "cuda:2");
        assert_eq!(
            Device::Cuda(2).to_string().parse::<Device>().unwrap(),
            Device::Cuda(2)
        );
    }

    #[test]
    fn malformed_devices_are_typed_errors() {
        for s in [
            "",
            "gpu",
            "cuda:",
            "cuda:-1",
            "cuda:x",
            "cuda:99999",
            "CPU",
            "cuda:1:2",
        ] {
            assert!(
                matches!(s.parse::<Device>(), Err(ModelError::InvalidArgument(_))),
                "{s:?}"
            );
        }
    }

    #[test]
    fn a_gpu_without_the_feature_names_the_feature() {
        assert!(Device::Cpu.check_compiled_in().is_ok());
        let r = Device::Cuda(0).check_compiled_in();
        if cfg!(feature = "cuda") {
            assert!(r.is_ok());
        } else {
            assert!(r.unwrap_err().to_string().contains("--features cuda"));
        }
    }
}

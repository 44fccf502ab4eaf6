//! The scenario's `prover_device`: parsed and written as `cpu` / `cuda:N`, refused with a
//! clear error when this build or this machine cannot run it, and run on the GPU when it can.

use veritrace_model::{Device, ModelError};
use veritrace_sim::{Scenario, SimError, Simulation};

fn with_device(device: &str) -> String {
    let base = veritrace_sim::scenario::DEFAULT_SCENARIO;
    // `prover_device` is a top-level key: it goes before the first table.
    let at = base.find("\n[").expect("the default scenario has tables");
    format!(
        "{}\nprover_device = \"{device}\"{}",
        &base[..at],
        &base[at..]
    )
}

#[test]
fn the_prover_device_parses_and_defaults_to_the_cpu() {
    assert_eq!(Scenario::default_scenario().prover_device, Device::Cpu);
    let s = Scenario::from_toml(&with_device("cuda:1")).unwrap();
    assert_eq!(s.prover_device, Device::Cuda(1));
    let again = Scenario::from_toml(&toml::to_string(&s).unwrap()).unwrap();
    assert_eq!(again.prover_device, Device::Cuda(1));
    let v = with_device("cpu").replace(
        "prover_device = \"cpu\"",
        "prover_device = \"cpu\"\nverifier_device = \"cuda:2\"",
    );
    assert_eq!(
        Scenario::from_toml(&v).unwrap().verifier_device,
        Device::Cuda(2)
    );
    for bad in ["gpu", "cuda:", "cuda:x"] {
        let e = Scenario::from_toml(&with_device(bad)).unwrap_err();
        assert!(e.to_string().contains("cuda:N"), "{bad}: {e}");
    }
}

#[test]
fn a_gpu_prover_without_cuda_is_a_clear_error() {
    let s = Scenario::from_toml(&with_device("cuda:0")).unwrap();
    let cuda_usable = cfg!(feature = "cuda") && {
        #[cfg(feature = "cuda")]
        {
            veritrace_model::cuda::driver_present()
        }
        #[cfg(not(feature = "cuda"))]
        {
            false
        }
    };
    if cuda_usable {
        eprintln!("skipping: this build and machine can run cuda:0");
        return;
    }
    let mut on_verifier = Scenario::default_scenario();
    on_verifier.verifier_device = Device::Cuda(0);
    assert!(matches!(
        Simulation::new(on_verifier),
        Err(SimError::Model(ModelError::DeviceUnavailable { .. }))
    ));
    match Simulation::new(s) {
        Err(SimError::Model(ModelError::DeviceUnavailable { device, reason })) => {
            assert_eq!(device, "cuda:0");
            if cfg!(feature = "cuda") {
                assert!(reason.contains("driver"), "{reason}");
            } else {
                assert!(reason.contains("--features cuda"), "{reason}");
            }
        }
        Err(e) => panic!("expected DeviceUnavailable, got {e:?}"),
        Ok(_) => panic!("a GPU prover was accepted without a GPU"),
    }
}

#[test]
fn the_gpu_scenario_parses_and_only_names_setups_the_gpu_runs() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../simulations/gpu.toml");
    let s = Scenario::read(std::path::Path::new(path)).unwrap();
    assert_eq!(s.prover_device, Device::Cuda(0));
    let gpu = Device::Cuda(0);
    gpu.check_setup(&s.reference).unwrap();
    for h in &s.tolerance.honest {
        gpu.check_setup(h)
            .unwrap_or_else(|e| panic!("honest {h}: {e}"));
    }
    for a in &s.adversaries {
        if let Some(setup) = a.adversary.setup() {
            gpu.check_setup(setup)
                .unwrap_or_else(|e| panic!("adversary {}: {e}", a.label()));
        }
    }
}

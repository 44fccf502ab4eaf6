//! `veritrace devices`: the devices models can run on here (the CPU, and the GPUs of a build
//! with `--features cuda` on a machine with the NVIDIA driver), and why there is no GPU when
//! there is none.

use std::io::Write;

use clap::Args;

/// Arguments of `veritrace devices`.
#[derive(Debug, Args)]
pub struct DevicesArgs {
    /// Print JSON (`{"devices": [{"device", "description"}], "no_gpu": reason or null}`).
    #[arg(long)]
    pub json: bool,
}

/// Prints the device list.
pub fn run(args: &DevicesArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let (devices, why) = veritrace_model::list_devices();
    if args.json {
        let v = serde_json::json!({ "devices": devices, "no_gpu": why });
        writeln!(out, "{v}")?;
    } else {
        for d in &devices {
            writeln!(out, "{:<8} {}", d.device.to_string(), d.description)?;
        }
        if let Some(why) = why {
            writeln!(out, "no GPU: {why}")?;
        }
    }
    out.flush()?;
    Ok(())
}

//! Rendering a [`SimReport`]: a markdown table and CSV.

use crate::SimReport;

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

/// The report as markdown: the calibration line and one row per adversary.
pub fn markdown(r: &SimReport) -> String {
    let s = &r.scenario;
    let c = &r.calibration;
    let mut out = format!(
        "## {} — model {}, claimed setup `{}`, k = {} x {} round(s), {:?} mode, {} trials per adversary ({})\n\n",
        s.name,
        s.model,
        s.reference,
        s.protocol.samples,
        s.protocol.rounds,
        s.protocol.mode,
        s.trials,
        match r.engine {
            crate::EngineMode::EndToEnd => "end to end",
            crate::EngineMode::Fast => "fast mode: bytes opened not measured",
        }
    );
    if s.prover_device != s.verifier_device {
        out.push_str(&format!(
            "Provers run on {}, the verifier recomputes on {}: honest runs are honest other-hardware runs, and the tolerance below is calibrated on that cross-device noise floor.\n\n",
            s.prover_device, s.verifier_device
        ));
    } else if s.prover_device != veritrace_model::Device::Cpu {
        out.push_str(&format!(
            "Provers and the verifier run on {}.\n\n",
            s.prover_device
        ));
    }
    if s.tolerance.exact {
        out.push_str(&format!(
            "Tolerance: exact (bitwise, identical hardware); held-out honest other-hardware cells that differ at all: {} ({} of {}), i.e. {} per session.\n\n",
            pct(c.holdout.overall.rate),
            c.holdout.overall.exceedances,
            c.holdout.overall.samples,
            pct(c.holdout_session_fpr),
        ));
    } else {
        out.push_str(&format!(
        "Tolerance: {:?} thresholds calibrated on {} honest other-hardware samples per layer (per-cell alpha {:.2e}); held-out per-cell false-positive rate {} ({} of {}, 95% upper {}), i.e. {} per session.\n\n",
        c.metric,
        c.samples_per_layer,
        c.cell_alpha,
        pct(c.holdout.overall.rate),
        c.holdout.overall.exceedances,
        c.holdout.overall.samples,
        pct(c.holdout.overall.upper),
        pct(c.holdout_session_fpr),
    ));
    }
    out.push_str("| adversary | detected | 95% Wilson | predicted | bad cells | saving | verifier cost | bytes opened | grinding bits | main reason |\n");
    out.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
    for a in &r.adversaries {
        let reason = a
            .reasons
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(r, n)| format!("{r} ({n})"))
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "| {} | {} ({}/{}) | {}–{} | {} | {:.1} / {} | {} | {} | {:.0} | {} | {} |\n",
            a.label,
            pct(a.detection),
            a.detected,
            a.trials,
            pct(a.wilson95.0),
            pct(a.wilson95.1),
            a.predicted.map(pct).unwrap_or_else(|| "-".into()),
            a.bad_cells,
            a.cells,
            pct(a.saving),
            pct(a.verifier_cost),
            a.bytes_opened,
            a.security_bits
                .map(|b| format!("{b:.1}"))
                .unwrap_or_else(|| "-".into()),
            reason,
        ));
    }
    let notes: Vec<String> = r
        .adversaries
        .iter()
        .filter_map(|a| a.note.as_ref().map(|n| format!("- {}: {n}", a.label)))
        .collect();
    if !notes.is_empty() {
        out.push('\n');
        out.push_str(&notes.join("\n"));
        out.push('\n');
    }
    out
}

fn field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The per-adversary results as CSV (one header row).
pub fn csv(r: &SimReport) -> String {
    let mut out = String::from(
        "adversary,kind,trials,detected,detection,wilson_low,wilson_high,predicted,bad_cells,cells,saving,verifier_cost,bytes_opened,security_bits\n",
    );
    for a in &r.adversaries {
        let kind = serde_json::to_value(a.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            field(&a.label),
            kind,
            a.trials,
            a.detected,
            a.detection,
            a.wilson95.0,
            a.wilson95.1,
            a.predicted.map(|p| p.to_string()).unwrap_or_default(),
            a.bad_cells,
            a.cells,
            a.saving,
            a.verifier_cost,
            a.bytes_opened,
            a.security_bits.map(|p| p.to_string()).unwrap_or_default(),
        ));
    }
    out
}

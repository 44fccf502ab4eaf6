//! Rendering a [`SimReport`]: a markdown table and CSV.

use crate::SimReport;

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

/// The report as markdown: the calibration line and one row per adversary.
pub fn markdown(r: &SimReport) -> String {
    let s = &r.scenario;
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
    if s.protocol.layer_check != veritrace_protocol::LayerCheck::Recompute {
        out.push_str(&format!(
            "Layer check: {} (specs/protocol.md §11.4): every prover commits its sub-layer values; the verifier checks each challenged cell of a layer >= 1 with Freivalds ({} secret vectors per weight matrix, a key from a secret the provers never see) and recomputes only the nonlinear parts, {}{}; the cost column is the Freivalds FLOP model's ratio to recompute.\n\n",
            s.protocol.layer_check.name(),
            s.protocol.freivalds_repetitions,
            if s.protocol.sublayer_tolerance == 0.0 {
                "bitwise".to_string()
            } else {
                format!("within a relative L-infinity tolerance of {:e}", s.protocol.sublayer_tolerance)
            },
            if let Some(a) = s.protocol.attention_sample() {
                format!("; drawn openings (specs/protocol.md §4.4): provers commit by head, each challenge draws per challenged cell {} query head(s) and {} context chunk(s) before the cell's own from the verifier's fresh randomness, the opening holds only those and the check covers exactly them", a.heads, a.chunks)
            } else {
                let a = s.protocol.attention_sampling();
                if a.is_full() {
                    String::new()
                } else {
                    format!("; sampled attention check (specs/freivalds.md §7): per challenged cell, {a} (before the cell), drawn from the key and the statement")
                }
            }
        ));
    }
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
    out.push_str(&tolerance_line(r));
    if let Some(f) = &r.freivalds_bounds {
        out.push_str(&freivalds_bounds_line(f));
    }
    out.push_str("| adversary | detected (trials) | runs | 95% bounds over runs | predicted | bad cells | saving | verifier cost | bytes opened | grinding bits | main reason |\n");
    out.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
    for a in &r.adversaries {
        let reason = a
            .reasons
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(r, n)| format!("{r} ({n})"))
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "| {} | {} ({}/{}) | {} | {}–{} | {} | {:.1} / {} | {} | {} | {:.0} | {} | {} |\n",
            a.label,
            pct(a.detection),
            a.detected,
            a.trials,
            a.runs,
            pct_fine(a.run_bounds.0),
            pct_fine(a.run_bounds.1),
            match a.predicted {
                None => "-".into(),
                Some(p) if a.predicted_is_lower_bound => format!(">= {}", pct(p)),
                Some(p) => pct(p),
            },
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
    out.push_str(
        "\nRates are over trials; a trial draws one of the `runs` independent prover runs (prompts) \
         and fresh challenge randomness, so the runs are the sample size: the bounds are one-sided \
         95% Clopper-Pearson bounds over them (each run's detection estimated from its trials). \
         A prediction marked >= is a lower bound.\n",
    );
    for a in &r.adversaries {
        let Some(c) = &a.corridor else { continue };
        out.push_str(&format!(
            "\n### Tolerance corridor: {}\n\nA prover that keeps every cell within s times the calibrated thresholds and steers the first generated token ({} prompts; its committed traces, at s = 1, flipped {} of them and every session accepted what sampling can check). Honest: held-out runs with a cell over s times the thresholds, of {}.\n\n",
            a.label, c.prompts, c.committed_flips, c.honest_runs
        ));
        let layers: Vec<u32> = c.flips_per_layer.keys().copied().collect();
        out.push_str("| scale s | honest runs over (95% upper) | first token flipped, every layer (95% bounds) |");
        for l in &layers {
            out.push_str(&format!(" layer {l} alone |"));
        }
        out.push_str("\n|---|---|---|");
        for _ in &layers {
            out.push_str("---|");
        }
        out.push('\n');
        for (i, s) in c.scales.iter().enumerate() {
            out.push_str(&format!(
                "| {s} | {} / {} ({}) | {} / {} ({}–{}) |",
                c.honest_over[i],
                c.honest_runs,
                pct_fine(c.honest_fpr_upper[i]),
                c.flips_all_layers[i],
                c.prompts,
                pct_fine(c.flip_bounds[i].0),
                pct_fine(c.flip_bounds[i].1),
            ));
            for l in &layers {
                out.push_str(&format!(" {} |", c.flips_per_layer[l][i]));
            }
            out.push('\n');
        }
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

/// A percentage with enough digits for small bounds (`0.10%`, `0.0998%`).
fn pct_fine(x: f64) -> String {
    if x > 0.0 && x < 0.01 {
        format!("{:.3}%", 100.0 * x)
    } else {
        pct(x)
    }
}

/// Honest variations with their run counts, `a x3, b x2`.
fn variations(v: &[veritrace_protocol::calibration::VariationCount]) -> String {
    v.iter()
        .map(|v| format!("{} x{}", v.variation, v.runs))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The per-map Freivalds bounds line of the report.
fn freivalds_bounds_line(f: &crate::engine::MapBoundsSummary) -> String {
    let cal = &f.calibration;
    let (lo, hi) = f
        .bounds
        .scales
        .iter()
        .flatten()
        .fold((f64::INFINITY, 0f64), |(lo, hi), &s| (lo.min(s), hi.max(s)));
    let held = match &f.holdout {
        None => "no held-out runs".to_string(),
        Some(h) => format!(
            "held out: {} independent honest runs, each under its own key, {} with a map over its scale: Freivalds false-alarm rate per session <= {} (one-sided {}% Clopper-Pearson over runs)",
            h.samples,
            h.exceedances,
            pct_fine(h.upper),
            100.0 * h.confidence
        ),
    };
    format!(
        "Freivalds bounds: one scale per linear map ({} maps) from {} independent honest runs ({} needed; {}), each under a key of its own, {} per map bounding the (1 - {:.2e}) quantile of a run's worst ratio |v.x - r.y| / B at {} confidence{} ({} of {} maps from the tail); scales {:.2e} to {:.2e} of the rigorous bound B; claimed: an honest run is falsely rejected by a Freivalds check in at most {} of sessions at {} confidence; {held}.\n\n",
        cal.layers,
        cal.runs,
        cal.runs_needed,
        variations(&cal.variations),
        cal.method,
        cal.cell_alpha,
        cal.config.confidence,
        if cal.config.margin == 1.0 {
            String::new()
        } else {
            format!(", times a margin of {}", cal.config.margin)
        },
        f.tail_maps,
        cal.layers,
        lo,
        hi,
        pct_fine(cal.config.target_session_fpr),
        cal.config.confidence,
    )
}

/// The calibration line of the report.
fn tolerance_line(r: &SimReport) -> String {
    let c = &r.calibration;
    let h = &c.holdout;
    let e = &h.runs_with_exceedance;
    let held = format!(
        "held out: {} independent honest runs ({}), {} with a cell over its threshold: session false-positive rate <= {} (one-sided 95% Clopper-Pearson over runs; {} expected under uniform sampling{})",
        h.runs,
        variations(&h.variations),
        e.exceedances,
        pct_fine(e.upper),
        pct_fine(h.expected_session_fpr),
        match &h.sessions_rejected {
            None => String::new(),
            Some(s) => format!(
                "; one k-cell session per run: {} of {} rejected",
                s.exceedances, s.samples
            ),
        },
    );
    match &c.calibration {
        None => format!(
            "Tolerance: exact (bitwise, identical hardware); a held-out run exceeds when any cell differs at all; {held}.\n\n"
        ),
        Some(cal) => {
            let floored = cal.floored_layers();
            format!(
                "Tolerance: {} thresholds from {} independent honest runs ({} needed; {}), per layer {} bounding the (1 - {:.2e}) quantile of a run's worst cell at {} confidence{}{}; claimed: session false-positive rate <= {} at {} confidence; {held}.\n\n",
                c.metric,
                cal.runs,
                cal.runs_needed,
                variations(&cal.variations),
                match cal.method {
                    veritrace_protocol::calibration::CalibrationMethod::OrderStatistic =>
                        "the order statistic",
                    veritrace_protocol::calibration::CalibrationMethod::ExponentialTail =>
                        "a fitted exponential tail (above the top tenth of the runs, assumed no heavier than exponential, checked per layer at 1%)",
                },
                cal.cell_alpha,
                cal.layer_confidence,
                if cal.config.margin == 1.0 {
                    String::new()
                } else {
                    format!(", times a margin of {}", cal.config.margin)
                },
                if floored.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; rounding floor (no honest difference seen) on layer(s) {floored:?}"
                    )
                },
                cal.config.target_session_fpr,
                cal.config.confidence,
            )
        }
    }
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
        "adversary,kind,trials,detected,detection,wilson_low,wilson_high,runs,runs_low95,runs_high95,predicted,predicted_is_lower_bound,bad_cells,cells,saving,verifier_cost,bytes_opened,security_bits\n",
    );
    for a in &r.adversaries {
        let kind = serde_json::to_value(a.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            field(&a.label),
            kind,
            a.trials,
            a.detected,
            a.detection,
            a.wilson95.0,
            a.wilson95.1,
            a.runs,
            a.run_bounds.0,
            a.run_bounds.1,
            a.predicted.map(|p| p.to_string()).unwrap_or_default(),
            a.predicted_is_lower_bound,
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

//! `veritrace soundness`: how likely a cheating prover escapes a sampling verifier, and how many
//! samples a verifier needs (a front for [`veritrace_protocol::soundness`]).
//!
//! Two modes, chosen by the arguments:
//!
//! * **analysis** (`--cells N --bad B --samples K`): the miss and detection probabilities of
//!   sampling `K` of `N` cells without replacement when `B` are bad, and the security in bits,
//!   interactive and non-interactive against a grinding budget;
//! * **sizing** (`--cells N --cheat-fraction F --bits L`): the smallest `K` with
//!   `P(miss) <= 2^-L`, exact (hypergeometric) and by the closed-form with-replacement bound.
//!
//! `--grind-bits G` is the `log2` of the grinding prover's budget in **transcript hash
//! evaluations**; with `--pow-bits W` each attempt costs `2^W` of them, so the prover gets
//! `max(1, 2^(G-W))` attempts (see
//! [`veritrace_protocol::soundness::grinding_security_bits`]). In sizing mode the target
//! becomes `L + max(0, G - W)` bits of miss probability, so that `L` bits remain after grinding.
//!
//! Every argument is answered in well under a second: beyond
//! [`veritrace_protocol::soundness::EXACT_TERMS_MAX`] (`min(B, K)` above `2^23`; for sizing,
//! [`veritrace_protocol::soundness::SEARCH_EXACT_TERMS_MAX`]) the miss probability comes from a
//! constant-time closed form that is an upper bound
//! ([`veritrace_protocol::soundness::MissMethod`]). The text output then says so (a `method` line,
//! `<=` before miss figures and `>=` before detection and security figures, each rounded in the
//! safe direction); the JSON output carries `miss_method` (`exact`, `euler_maclaurin_bound` or
//! `with_replacement_bound`).

use std::io::Write;

use anyhow::Context;
use clap::{ArgGroup, Args};
use veritrace_protocol::soundness::{
    log2_grinding_attempts, samples_needed, soundness_report, SampleSize, SoundnessParams,
    SoundnessReport, MAX_ROUNDS,
};
use veritrace_protocol::ProtocolError;

/// Extra `--help` text of `veritrace soundness`.
pub const AFTER_HELP: &str = "\
Model: k distinct cells sampled uniformly from N, b of them bad; each sampled bad cell is caught
with probability --power p, independently. P(miss) = E[(1-p)^X], X ~ Hypergeometric(N, b, k)
(for p = 1: C(N-b, k) / C(N, k)). Rounds multiply their miss probabilities.
Exact while min(b, k) <= 2^23 (2^16 per step of the --bits search); beyond, a constant-time
upper bound on P(miss), marked as such: Euler-Maclaurin (p = 1, within about 1e-11 of the exact
log) or with replacement, min((1 - p b/N)^k, (1 - p k/N)^b) (p < 1).

Security bits: interactive -log2 P(miss); non-interactive (Fiat-Shamir) against grinding
-log2 min(1, A P(miss)), where A = max(1, 2^(G - W)) attempts for a budget of 2^G transcript hash
evaluations (--grind-bits G) and a proof-of-work of W bits per attempt (--pow-bits W).

Exit status: 0 on success, 2 when the command line or a parameter is refused, 1 otherwise.";

/// Arguments of `veritrace soundness`.
#[derive(Debug, Clone, Args)]
#[command(group(
    ArgGroup::new("mode")
        .required(true)
        .args(["bad", "cheat_fraction"]),
))]
pub struct SoundnessArgs {
    /// Number of cells N of the committed trace.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub cells: u64,

    /// Analysis: number of bad cells B (needs --samples).
    #[arg(long, value_name = "B", requires = "samples",
          conflicts_with_all = ["cheat_fraction", "bits"])]
    pub bad: Option<u64>,

    /// Analysis: cells K sampled per round, without replacement.
    #[arg(long, value_name = "K", requires = "bad")]
    pub samples: Option<u64>,

    /// Sizing: fraction F of the cells the prover cheats on, in (0, 1]; b = ceil(F N) (needs
    /// --bits).
    #[arg(
        long,
        value_name = "F",
        requires = "bits",
        allow_negative_numbers = true
    )]
    pub cheat_fraction: Option<f64>,

    /// Sizing: security level L: find the smallest K with P(miss) <= 2^-L.
    #[arg(
        long,
        value_name = "L",
        requires = "cheat_fraction",
        allow_negative_numbers = true
    )]
    pub bits: Option<f64>,

    /// Probability P in [0, 1] that a sampled bad cell is caught (1: exact recomputation).
    #[arg(
        long,
        value_name = "P",
        default_value_t = 1.0,
        allow_negative_numbers = true
    )]
    pub power: f64,

    /// A verifier that checks each sampled cell's linear maps with Freivalds (issue 16,
    /// `specs/freivalds.md`): its per-row rounding bound B, with --deviation-norm and
    /// --freivalds-repetitions, sets the power to `1 − erf(B / (√2‖e‖))^T`, the probability
    /// that the check catches a deviation of norm ‖e‖ (in place of --power).
    #[arg(
        long,
        value_name = "B",
        requires = "deviation_norm",
        conflicts_with = "power"
    )]
    pub freivalds_bound: Option<f64>,

    /// The norm ‖e‖ of a cheating prover's deviation `y − Wx` in a checked row.
    #[arg(long, value_name = "E", requires = "freivalds_bound")]
    pub deviation_norm: Option<f64>,

    /// A verifier that checks S drawn query heads of each sampled cell's attention (the sampled
    /// attention check or a drawn opening, `specs/freivalds.md` §7, `specs/protocol.md` §4.4),
    /// against a prover whose attention is wrong in --bad-heads B of --heads H: the power is
    /// the probability that the draw holds a wrong head, `1 − C(H−B, S)/C(H, S)` (in place of
    /// --power).
    #[arg(
        long,
        value_name = "S",
        requires_all = ["heads", "bad_heads"],
        conflicts_with_all = ["power", "freivalds_bound"]
    )]
    pub attention_heads: Option<u64>,

    /// The query heads H per cell (with --attention-heads).
    #[arg(long, value_name = "H", requires = "attention_heads")]
    pub heads: Option<u64>,

    /// The heads B of H whose attention a cheating prover gets wrong (with --attention-heads).
    #[arg(long, value_name = "B", requires = "attention_heads")]
    pub bad_heads: Option<u64>,

    /// Independent secret vectors T per weight matrix (with --freivalds-bound).
    #[arg(long, value_name = "T", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub freivalds_repetitions: u32,

    /// Analysis: independent rounds R, each with a fresh challenge of K samples.
    #[arg(long, value_name = "R", conflicts_with = "cheat_fraction",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_ROUNDS)))]
    pub rounds: Option<u32>,

    /// log2 of the grinding prover's budget in transcript hash evaluations (0: no grinding).
    #[arg(
        long,
        value_name = "G",
        default_value_t = 0.0,
        allow_negative_numbers = true
    )]
    pub grind_bits: f64,

    /// Proof-of-work bits required before each challenge (an attempt costs 2^BITS hashes).
    #[arg(
        long,
        value_name = "BITS",
        default_value_t = 0.0,
        allow_negative_numbers = true
    )]
    pub pow_bits: f64,

    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Direction in which a printed figure is rounded: to nearest for exact figures, and for bounds
/// away from what the data supports no further (a miss probability up, a detection probability
/// or a number of bits down), so that a printed bound is still a bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rounding {
    Nearest,
    Up,
    Down,
}

impl Rounding {
    /// `x` rounded to `decimals` decimal places in this direction.
    fn apply(self, x: f64, decimals: i32) -> f64 {
        let scale = 10f64.powi(decimals);
        match self {
            Self::Nearest => x,
            Self::Up => (x * scale).ceil() / scale,
            Self::Down => (x * scale).floor() / scale,
        }
    }
}

/// Beyond this `|log10|` of a probability, `f64` cannot resolve the mantissa of `10^log10`
/// (the fraction of `log10` is known to less than `1e-7`): such probabilities print as a power
/// of ten only.
const MANTISSA_LOG10_MAX: f64 = 1e9;

fn format_probability_rounded(log2: f64, rounding: Rounding) -> String {
    if log2 == f64::NEG_INFINITY {
        return "0".to_string();
    }
    let log10 = log2 * std::f64::consts::LOG10_2;
    if log10 >= -4.0 {
        let p = log2.exp2();
        let decimals = (5 - log10.floor() as i64).clamp(0, 12) as usize;
        let p = rounding.apply(p, decimals as i32).min(1.0);
        format!("{p:.decimals$}")
    } else if log10 < -MANTISSA_LOG10_MAX {
        let exponent = match rounding {
            Rounding::Nearest => log10.round(),
            Rounding::Up => log10.ceil(),
            Rounding::Down => log10.floor(),
        };
        format!("1e{exponent}")
    } else {
        let mut exponent = log10.floor();
        let mut mantissa = rounding.apply(10f64.powf(log10 - exponent), 5);
        if mantissa >= 9.999_995 {
            mantissa /= 10.0;
            exponent += 1.0;
        }
        format!("{mantissa:.5}e{exponent}")
    }
}

/// `2^log2` as a decimal with about six significant digits, or in scientific notation computed
/// from the logarithm (so that values below `f64::MIN_POSITIVE` print too); `0` for `-inf`;
/// beyond `10^-(10^9)`, where `f64` no longer resolves a mantissa, as `1e<exponent>`.
pub fn format_probability(log2: f64) -> String {
    format_probability_rounded(log2, Rounding::Nearest)
}

fn format_detection_rounded(log2_miss: f64, rounding: Rounding) -> String {
    if log2_miss * std::f64::consts::LOG10_2 < -4.0 {
        // 1 - miss: a lower bound on detection is 1 - (an upper bound on miss).
        let miss_rounding = match rounding {
            Rounding::Down => Rounding::Up,
            other => other,
        };
        format!(
            "1 - {}",
            format_probability_rounded(log2_miss, miss_rounding)
        )
    } else {
        let d = -(log2_miss * std::f64::consts::LN_2).exp_m1();
        let d = rounding.apply(d, 6).max(0.0);
        format!("{d:.6}")
    }
}

/// `1 - 2^log2_miss`, as a decimal, or as `1 - <miss>` when the miss probability is below
/// `10^-4` (a decimal would round to 1).
pub fn format_detection(log2_miss: f64) -> String {
    format_detection_rounded(log2_miss, Rounding::Nearest)
}

/// A percentage with four significant digits, trailing zeros trimmed (`1`, `33.33`, `0.00003`).
fn format_percent(pct: f64) -> String {
    let decimals = if pct > 0.0 {
        (3 - pct.log10().floor() as i64).clamp(0, 12) as usize
    } else {
        0
    };
    let s = format!("{pct:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

fn format_bits(bits: f64, rounding: Rounding) -> String {
    if bits.is_infinite() {
        "inf".to_string()
    } else {
        format!("{:.3}", rounding.apply(bits, 3))
    }
}

/// `log2` of a probability to four decimals, rounded in `rounding`'s direction.
fn format_log2(log2: f64, rounding: Rounding) -> String {
    format!("{:.4}", rounding.apply(log2, 4))
}

/// The analysis as aligned human-readable lines. When the miss probability is a closed-form
/// upper bound (`miss_method` not exact) the figures say so (`<=`, `>=`, a `method` line) and
/// are rounded in the safe direction.
pub fn report_to_text(r: &SoundnessReport) -> String {
    let exact = r.miss_method.is_exact();
    // Miss figures are upper bounds, detection and security figures lower bounds.
    let (le, ge, up, down) = if exact {
        ("", "", Rounding::Nearest, Rounding::Nearest)
    } else {
        ("<= ", ">= ", Rounding::Up, Rounding::Down)
    };
    let mut s = String::new();
    let pct = format_percent(100.0 * r.bad_cells as f64 / r.cells as f64);
    let round_word = if r.rounds == 1 { "round" } else { "rounds" };
    s += &format!("cells                {}\n", r.cells);
    s += &format!(
        "bad cells            {} ({pct}% of the cells)\n",
        r.bad_cells
    );
    s += &format!(
        "samples              {} per round, without replacement, {} {round_word}\n",
        r.samples, r.rounds
    );
    s += &format!("detection power      {} per sampled bad cell\n", r.power);
    if !exact {
        s += &format!("method               {}\n", r.miss_method.describe());
    }
    if r.rounds > 1 {
        s += &format!(
            "miss per round       {le}{} (2^{})\n",
            format_probability_rounded(r.log2_miss_per_round, up),
            format_log2(r.log2_miss_per_round, up)
        );
    }
    if r.certain_detection {
        s += "miss probability     0 (every sample holds a bad cell)\n";
        s += "detection            1\n";
    } else {
        s += &format!(
            "miss probability     {le}{} (2^{})\n",
            format_probability_rounded(r.log2_miss, up),
            format_log2(r.log2_miss, up)
        );
        s += &format!(
            "detection            {ge}{}\n",
            format_detection_rounded(r.log2_miss, down)
        );
    }
    s += if exact {
        "security (bits)\n"
    } else {
        "security (bits, lower bounds)\n"
    };
    s += &format!(
        "  interactive                      {ge}{}\n",
        format_bits(r.security_bits, down)
    );
    s += &format!(
        "  non-interactive, grinding        {ge}{}  (budget 2^{} hash evaluations, proof-of-work \
         {} bits: 2^{} attempts)\n",
        format_bits(r.security_bits_grinding, down),
        r.grind_bits,
        r.pow_bits,
        r.log2_grinding_attempts
    );
    if r.rounds > 1 {
        s += &format!(
            "  grinding round by round          {ge}{}  (if each round's challenge follows a fresh \
             prover message)\n",
            format_bits(r.security_bits_grinding_sequential, down)
        );
    }
    if !r.certain_detection {
        s += &format!(
            "grinding break-even  {ge}2^{:.3} hash evaluations (then a grinding prover expects one \
             success)\n",
            down.apply(r.grinding_break_even_bits, 3)
        );
    }
    s
}

/// The sizing as aligned human-readable lines; `security_bits` is the level asked for and
/// `size.lambda_bits` the miss-probability target after adding the grinding attempts.
pub fn sizing_to_text(
    size: &SampleSize,
    security_bits: f64,
    grind_bits: f64,
    pow_bits: f64,
) -> String {
    let mut s = String::new();
    s += &format!("cells                {}\n", size.cells);
    s += &format!(
        "cheat fraction       {} ({} bad cells)\n",
        size.cheat_fraction, size.bad_cells
    );
    s += &format!("detection power      {} per sampled bad cell\n", size.power);
    if size.lambda_bits > security_bits {
        s += &format!(
            "target               P(miss) <= 2^-{} ({security_bits} bits against a grinding \
             budget of 2^{grind_bits} hash evaluations, proof-of-work {pow_bits} bits)\n",
            size.lambda_bits
        );
    } else {
        s += &format!(
            "target               P(miss) <= 2^-{} ({} bits)\n",
            size.lambda_bits, security_bits
        );
    }
    let exact = size.miss_method.is_exact();
    let at = if size.log2_miss_probability == f64::NEG_INFINITY {
        "P(miss) = 0".to_string()
    } else if exact {
        format!("P(miss) = 2^{:.4}", size.log2_miss_probability)
    } else {
        format!(
            "P(miss) <= 2^{}",
            format_log2(size.log2_miss_probability, Rounding::Up)
        )
    };
    if exact {
        s += &format!(
            "samples needed       {} (without replacement, exact hypergeometric; {at})\n",
            size.samples
        );
    } else {
        s += &format!(
            "samples needed       {} (without replacement, enough by the bound below, possibly \
             more than the exact minimum; {at})\n",
            size.samples
        );
        s += &format!("method               {}\n", size.miss_method.describe());
    }
    match size.with_replacement_samples {
        Some(k) => {
            s += &format!("with replacement     {k} (closed form ceil(L ln 2 / -ln(1 - F P)))\n");
        }
        None => {
            s += "with replacement     more than 2^64 (closed form ceil(L ln 2 / -ln(1 - F P)))\n"
        }
    }
    s
}

/// Runs `veritrace soundness` and writes the result (text or JSON) to `out`.
///
/// # Errors
/// A [`veritrace_protocol::ProtocolError`] when a parameter is refused (the binary exits 2), or
/// an I/O error writing `out`.
pub fn run(args: &SoundnessArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let (power, freivalds_line) = match (args.freivalds_bound, args.deviation_norm) {
        (Some(bound), Some(norm)) => {
            if !(bound.is_finite() && bound >= 0.0 && norm.is_finite() && norm > 0.0) {
                return Err(ProtocolError::InvalidParameter(format!(
                    "--freivalds-bound {bound} must be finite and >= 0 and --deviation-norm \
                     {norm} finite and > 0"
                ))
                .into());
            }
            let accept = veritrace_model::freivalds::false_accept_probability(
                bound,
                norm,
                args.freivalds_repetitions,
            );
            let power = 1.0 - accept;
            (
                power,
                Some(format!(
                    "freivalds           P(a sampled bad cell passes) = erf(B / (sqrt2 |e|))^T = \
                     erf({bound} / (sqrt2 x {norm}))^{} = {accept:.6e}; power {power:.6}\n",
                    args.freivalds_repetitions
                )),
            )
        }
        _ => match (args.attention_heads, args.heads, args.bad_heads) {
            (Some(s), Some(h), Some(b)) => {
                if h == 0 || b == 0 || b > h || s == 0 || s > h {
                    return Err(ProtocolError::InvalidParameter(format!(
                        "--attention-heads {s} of --heads {h} with --bad-heads {b}: need \
                         1 <= S <= H and 1 <= B <= H"
                    ))
                    .into());
                }
                let miss = veritrace_protocol::soundness::miss_probability(h, b, s)?;
                let power = 1.0 - miss;
                (
                    power,
                    Some(format!(
                        "attention draw      P(a sampled bad cell passes) = C(H-B, S) / C(H, S) = \
                         C({}, {s}) / C({h}, {s}) = {miss:.6e}; power {power:.6}\n",
                        h - b
                    )),
                )
            }
            _ => (args.power, None),
        },
    };
    let text = match (args.bad, args.samples, args.cheat_fraction, args.bits) {
        (Some(bad), Some(samples), None, None) => {
            let report = soundness_report(&SoundnessParams {
                cells: args.cells,
                bad_cells: bad,
                samples,
                power,
                rounds: args.rounds.unwrap_or(1),
                grind_bits: args.grind_bits,
                pow_bits: args.pow_bits,
            })?;
            if args.json {
                format!("{}\n", serde_json::to_string(&report)?)
            } else {
                report_to_text(&report)
            }
        }
        (None, None, Some(fraction), Some(bits)) => {
            if !(bits.is_finite() && bits >= 0.0) {
                return Err(ProtocolError::InvalidParameter(format!(
                    "security level --bits {bits} must be a finite number >= 0"
                ))
                .into());
            }
            let attempts = log2_grinding_attempts(args.grind_bits, args.pow_bits)?;
            let size = samples_needed(args.cells, fraction, bits + attempts, power)?;
            if args.json {
                let mut value = serde_json::to_value(&size)?;
                if let Some(map) = value.as_object_mut() {
                    map.insert("security_bits".into(), bits.into());
                    map.insert("grind_bits".into(), args.grind_bits.into());
                    map.insert("pow_bits".into(), args.pow_bits.into());
                    map.insert("log2_grinding_attempts".into(), attempts.into());
                }
                format!("{value}\n")
            } else {
                sizing_to_text(&size, bits, args.grind_bits, args.pow_bits)
            }
        }
        // clap's argument group and `requires` rules make other combinations unreachable.
        _ => {
            return Err(ProtocolError::InvalidParameter(
                "give either --bad and --samples, or --cheat-fraction and --bits".into(),
            )
            .into())
        }
    };
    let text = match freivalds_line {
        Some(line) if !args.json => line + &text,
        _ => text,
    };
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("writing the result to standard output")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_format_readably() {
        assert_eq!(format_probability(f64::NEG_INFINITY), "0");
        assert_eq!(format_probability(0.0), "1.00000");
        assert_eq!(format_probability(-1.0), "0.500000");
        assert_eq!(format_probability((0.0468252_f64).log2()), "0.0468252");
        // python3 -c 'import mpmath as m; print(m.mpf(2)**-3000)' -> 8.1285486255577354405e-904
        assert_eq!(format_probability(-3000.0), "8.12855e-904");
        assert_eq!(format_probability(-20.0), "9.53674e-7");
        // 10^-5 exactly: the mantissa must not print as 10.00000.
        assert_eq!(format_probability((1e-5_f64).log2()), "1.00000e-5");
        assert_eq!(format_detection(-1.0), "0.500000");
        assert_eq!(format_detection(-40.0), "1 - 9.09495e-13");
        assert_eq!(format_percent(1.0), "1");
        assert_eq!(format_percent(100.0), "100");
        assert_eq!(format_percent(0.0), "0");
        assert_eq!(format_percent(100.0 / 3.0), "33.33");
        assert_eq!(format_percent(3e-5), "0.00003");
    }

    #[test]
    fn bounds_round_in_the_safe_direction() {
        // 2^-3000 = 8.1285486255577e-904: a miss bound rounds up, a detection bound down.
        assert_eq!(
            format_probability_rounded(-3000.0, Rounding::Up),
            "8.12855e-904"
        );
        assert_eq!(
            format_probability_rounded(-3000.0, Rounding::Down),
            "8.12854e-904"
        );
        assert_eq!(
            format_detection_rounded(-3000.0, Rounding::Down),
            "1 - 8.12855e-904"
        );
        // 2^-1.5 = 0.35355339...: the detection 0.64644660... rounds down.
        assert_eq!(format_probability_rounded(-1.5, Rounding::Up), "0.353554");
        assert_eq!(format_detection_rounded(-1.5, Rounding::Down), "0.646446");
        assert_eq!(format_bits(144.270_946_8, Rounding::Down), "144.270");
        assert_eq!(format_bits(144.270_946_8, Rounding::Nearest), "144.271");
        assert_eq!(format_log2(-144.270_946_8, Rounding::Up), "-144.2709");
        assert_eq!(format_log2(-144.270_96, Rounding::Nearest), "-144.2710");
        // Far below 10^-(10^9) f64 resolves no mantissa: a power of ten only.
        let log2 = -5e9 / std::f64::consts::LOG10_2;
        assert_eq!(format_probability(log2), "1e-5000000000");
        assert_eq!(
            format_probability_rounded(log2 - 1.0, Rounding::Up),
            "1e-5000000000"
        );
    }
}

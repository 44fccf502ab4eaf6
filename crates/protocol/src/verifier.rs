//! The verifier's side: the [`Recompute`] trait it asks for cell outputs, the opening check,
//! and the state machine over rounds.
//!
//! ```text
//!                       interactive: draw challenge r from own randomness
//! AwaitCommitment ──commitment──▶ Challenged(r) ──opening r──▶ Challenged(r + 1) … ──▶ Decided
//!                 non-interactive:  AwaitOpening(r) ──opening r──▶ AwaitOpening(r + 1) … ──▶ Decided
//! ```
//!
//! Any message in a state that does not expect it (a second commitment, in particular one that
//! follows a challenge; an opening before the commitment; an opening for another round) decides
//! the session with [`RejectReason::OutOfOrder`]. `Decided` is final.
//!
//! The round rules (interactive openings carry nonce 0; non-interactive rounds share round 0's
//! nonce, which must meet the proof of work) live in one place and serve both the live state
//! machine and [`verify_recorded`], which replays a recorded session through it. Every check is
//! bounded by [`VerifierLimits`] before anything proportional to the prover's claim is
//! allocated.

use std::borrow::Cow;
use std::io::Read;
use std::ops::Range;

use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use veritrace_commit::{verify_batch, BatchProof, CellId, Dtype, Hasher, TraceGeometry};

use crate::encoding::Message;
use crate::sampling::sample_cells;
use crate::statement::CellRange;
use crate::stream::OpeningReader;
use crate::tolerance::TolerancePolicy;
use crate::transcript::{challenge_seed, check_pow, ChallengeParams};
use crate::{
    AttentionDraw, Challenge, Commitment, OpenedCell, Opening, ProtocolError, RejectReason, Result,
    Statement, SubLayerOpening, SubLayerPart, TraceLevel, Verdict,
};

/// What an embedding verifier implements: recompute cells under the statement's numeric setup.
///
/// All byte buffers hold little-endian elements of the statement's dtype, row-major, `hidden`
/// elements per row. The protocol never interprets the setup: the implementation reads
/// `statement.setup` and must refuse (with [`ProtocolError::Engine`]) a setup it cannot run.
pub trait Recompute {
    /// Layer 0: the embeddings of the statement's tokens at positions `rows`.
    fn embed(&self, statement: &Statement, rows: Range<u32>) -> Result<Vec<u8>>;

    /// Layer `layer ≥ 1`: output rows `rows`, given the rows `input_rows` of layer `layer − 1`
    /// (`inputs` holds exactly those rows; which rows is given by the statement's
    /// [`crate::Dependency`]).
    fn layer(
        &self,
        statement: &Statement,
        layer: u32,
        rows: Range<u32>,
        input_rows: Range<u32>,
        inputs: &[u8],
    ) -> Result<Vec<u8>>;

    /// The token predicted at `position` from that position's last-layer row, under the
    /// statement's [`crate::OutputRule`].
    fn next_token(&self, statement: &Statement, position: u32, last_row: &[u8]) -> Result<u32>;

    /// Whether `claimed` is a greedy prediction at `position` that the claimed precision's
    /// rounding cannot tell from the argmax: `z_top − z_claimed ≤ B_top + B_claimed`, with `z`
    /// the logits this engine computes from `last_row` and `B_j` a bound on how far two
    /// engines of the statement's precision can differ on logit `j` (specs/protocol.md §11.2, the near-tie rule).
    /// A verifier whose tolerance accepts cross-engine noise (a threshold policy) asks this
    /// instead of comparing with [`Recompute::next_token`]. The default has no bound: the
    /// claimed token must be the argmax.
    fn token_within_rounding(
        &self,
        statement: &Statement,
        position: u32,
        last_row: &[u8],
        claimed: u32,
    ) -> Result<bool> {
        Ok(self.next_token(statement, position, last_row)? == claimed)
    }

    /// Statement-level checks made once per opening, before any cell: with text input
    /// ([`Statement::input_text`]), that the input tokens are what the engine's tokenizer
    /// (of the same digest) gives for the text. An engine without a tokenizer accepts a
    /// statement without text and refuses one with text ([`no_text_input`]). Required, so
    /// that a wrapper cannot silently skip the check of the engine it wraps.
    fn check_input(&self, statement: &Statement) -> Result<()>;

    /// The algebraic check of challenged cell `(layer, rows)` (`layer ≥ 1`) from its opened
    /// sub-layer values ([`crate::TraceLevel::SubLayer`], specs/protocol.md §11.4), for a
    /// verifier whose [`LayerCheck`] includes Freivalds:
    ///
    /// * `inputs`: rows `input_rows` of hidden layer `layer − 1` (as for [`Recompute::layer`]);
    /// * `context`: rows `input_rows` of the context trace at sub-layer `layer − 1`
    ///   (f32 little-endian, the statement's context width per row);
    /// * `cell`: rows `rows` of the cell trace at sub-layer `layer − 1` (the cell width).
    ///
    /// The engine checks the layer's linear maps against the opened inputs and outputs
    /// (Freivalds, with its secret key) and recomputes the nonlinear parts from them; it
    /// returns the cell's output rows derived from the opened values (in the statement's
    /// dtype), which the verifier compares with the opened cell under its tolerance, or the
    /// failed check. The default refuses: an engine without a verifier key cannot check
    /// sub-layer values.
    #[allow(clippy::too_many_arguments)]
    fn check_sublayers(
        &self,
        statement: &Statement,
        layer: u32,
        rows: Range<u32>,
        input_rows: Range<u32>,
        inputs: &[u8],
        context: &[u8],
        cell: &[u8],
    ) -> Result<AlgebraicCheck> {
        let _ = (statement, layer, rows, input_rows, inputs, context, cell);
        Err(ProtocolError::Engine(
            "this engine has no algebraic check of sub-layer values (no verifier key)".into(),
        ))
    }

    /// The algebraic check of a challenged cell of a [`crate::TraceLevel::SubLayerByHead`]
    /// statement from its opened values ([`HeadClaim`], specs/protocol.md §11.4): as
    /// [`Recompute::check_sublayers`], on the claim's checked rows and heads only when the
    /// opening was drawn. The default refuses.
    fn check_sublayer_heads(
        &self,
        statement: &Statement,
        claim: &HeadClaim<'_>,
    ) -> Result<AlgebraicCheck> {
        let _ = (statement, claim);
        Err(ProtocolError::Engine(
            "this engine has no algebraic check of sub-layer values by head (no verifier key)"
                .into(),
        ))
    }
}

/// The opened values of one challenged cell `[l, j]` (`l ≥ 1`, rows `rows`) of a
/// [`crate::TraceLevel::SubLayerByHead`] statement, gathered by the verifier for
/// [`Recompute::check_sublayer_heads`] (specs/protocol.md §11.4). With an attention draw
/// (`heads` is `Some`), the opening holds only what the draw names, and the engine checks exactly that:
/// the attention of `heads` over the keys and values of every context row, and the provenance
/// (the norm of the hidden input, the keys and values of every key-value head) of the
/// `checked` rows. Without one, everything is opened: `heads` is every head and `checked` is
/// `input_rows`.
#[derive(Debug, Clone)]
pub struct HeadClaim<'a> {
    /// The hidden layer `l`.
    pub layer: u32,
    /// The cell's rows `[a, e)`.
    pub rows: Range<u32>,
    /// Its input rows `[u, v)` (the statement's [`crate::Dependency`]).
    pub input_rows: Range<u32>,
    /// The query heads whose attention is checked, ascending: the draw's, or `None` for every
    /// head (no draw; the statement's head count is the prover's claim and is never listed).
    pub heads: Option<&'a [u32]>,
    /// The checked rows: disjoint ranges, ascending, within `input_rows`, the last one
    /// `rows`.
    pub checked: &'a [Range<u32>],
    /// Hidden layer `l − 1` at the checked rows, concatenated (the statement's dtype).
    pub inputs: &'a [u8],
    /// The context trace at sub-layer `l − 1`, the checked rows (f32).
    pub context: &'a [u8],
    /// Per key-value head `h` (`g` entries): its key-value trace rows at sub-layer `l − 1`,
    /// over `input_rows` when a checked head reads it, else over the checked rows (f32).
    pub kv: &'a [Vec<u8>],
    /// The cell trace at sub-layer `l − 1`, rows `rows` (f32).
    pub cell: &'a [u8],
}

/// What [`Recompute::check_sublayers`] found for one challenged cell.
#[derive(Debug, Clone, PartialEq)]
pub enum AlgebraicCheck {
    /// Every linear map passed its check and every nonlinear part was recomputed: the cell's
    /// output rows derived from the opened sub-layer values (little-endian, the statement's
    /// dtype), to compare with the opened cell.
    Output(Vec<u8>),
    /// A check failed: which one and by how much.
    Failed(String),
}

/// How a verifier checks a challenged cell of a layer `l ≥ 1` (specs/protocol.md §11.4).
/// Layer 0 (embeddings) and the output tokens are always recomputed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LayerCheck {
    /// Recompute the cell from the opened rows of the layer below (the default).
    #[default]
    Recompute,
    /// Check the opened sub-layer values algebraically ([`Recompute::check_sublayers`]) and
    /// compare the output they give with the opened cell. Needs a
    /// [`crate::TraceLevel::SubLayer`] statement.
    Freivalds,
    /// Both: recompute, and check the sub-layer values.
    Both,
}

impl LayerCheck {
    /// Whether the cell is recomputed.
    pub fn recomputes(self) -> bool {
        matches!(self, LayerCheck::Recompute | LayerCheck::Both)
    }

    /// Whether the sub-layer values are checked.
    pub fn checks_sublayers(self) -> bool {
        matches!(self, LayerCheck::Freivalds | LayerCheck::Both)
    }

    /// The name used in JSON and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            LayerCheck::Recompute => "recompute",
            LayerCheck::Freivalds => "freivalds",
            LayerCheck::Both => "both",
        }
    }
}

impl std::str::FromStr for LayerCheck {
    type Err = ProtocolError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "recompute" => Ok(LayerCheck::Recompute),
            "freivalds" => Ok(LayerCheck::Freivalds),
            "both" => Ok(LayerCheck::Both),
            _ => Err(ProtocolError::InvalidParameter(format!(
                "layer check {s:?}: expected recompute, freivalds or both"
            ))),
        }
    }
}

/// A reference to an engine is an engine (so that [`verify_recorded`] and a [`Verifier`] can
/// borrow one).
impl<T: Recompute + ?Sized> Recompute for &T {
    fn embed(&self, statement: &Statement, rows: Range<u32>) -> Result<Vec<u8>> {
        (**self).embed(statement, rows)
    }

    fn layer(
        &self,
        statement: &Statement,
        layer: u32,
        rows: Range<u32>,
        input_rows: Range<u32>,
        inputs: &[u8],
    ) -> Result<Vec<u8>> {
        (**self).layer(statement, layer, rows, input_rows, inputs)
    }

    fn next_token(&self, statement: &Statement, position: u32, last_row: &[u8]) -> Result<u32> {
        (**self).next_token(statement, position, last_row)
    }

    fn token_within_rounding(
        &self,
        statement: &Statement,
        position: u32,
        last_row: &[u8],
        claimed: u32,
    ) -> Result<bool> {
        (**self).token_within_rounding(statement, position, last_row, claimed)
    }

    fn check_input(&self, statement: &Statement) -> Result<()> {
        (**self).check_input(statement)
    }

    fn check_sublayers(
        &self,
        statement: &Statement,
        layer: u32,
        rows: Range<u32>,
        input_rows: Range<u32>,
        inputs: &[u8],
        context: &[u8],
        cell: &[u8],
    ) -> Result<AlgebraicCheck> {
        (**self).check_sublayers(statement, layer, rows, input_rows, inputs, context, cell)
    }

    fn check_sublayer_heads(
        &self,
        statement: &Statement,
        claim: &HeadClaim<'_>,
    ) -> Result<AlgebraicCheck> {
        (**self).check_sublayer_heads(statement, claim)
    }
}

/// [`Recompute::check_input`] of an engine that has no tokenizer: a statement without text
/// passes, one with text is refused (its tokens cannot be checked).
pub fn no_text_input(statement: &Statement) -> Result<()> {
    match &statement.input_text {
        None => Ok(()),
        Some(_) => Err(ProtocolError::Engine(
            "the statement gives text input, and this engine has no tokenizer to check its \
             tokens"
                .into(),
        )),
    }
}

/// Whether challenges come from the verifier (interactive) or from the transcript.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// The verifier draws each challenge from its own randomness after the commitment.
    Interactive,
    /// Fiat-Shamir: challenges derive from the transcript (with proof of work if
    /// `pow_bits > 0`).
    NonInteractive,
}

/// The verifier's policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifierConfig {
    /// Interactive or non-interactive.
    pub mode: Mode,
    /// Per-round challenge parameters (k, strategy, proof-of-work bits).
    pub params: ChallengeParams,
    /// Number of rounds, at least 1.
    pub rounds: u32,
    /// How recomputed cells are compared with opened ones.
    pub tolerance: TolerancePolicy,
    /// How challenged cells of layers `l ≥ 1` are checked (JSON may omit it: recompute).
    #[serde(default)]
    pub method: LayerCheck,
}

/// The verifier's resource limits: what a prover's claims may cost it.
///
/// A statement is the prover's: it may claim any geometry the commitment layer accepts (up to
/// 2^32 − 1 layers, 2^40 cells). The verifier checks every claim against these limits
/// **before** any allocation or loop proportional to the claim, and refuses a claim above one
/// with [`ProtocolError::LimitExceeded`] (in a verdict: [`RejectReason::GeometryMismatch`]
/// whose detail is that error's message, "… exceeds the verifier's limit of …"). Within the
/// limits, checking an opening costs O(opened bytes + k log k + log N) time and
/// O(opened bytes + k) memory beyond the messages themselves (specs/protocol.md §11.3).
///
/// The defaults admit real models (a 4096-layer, million-token trace is far beyond any
/// checkpoint in use) and keep a hostile claim's cost bounded:
///
/// | field | default | bounds |
/// |---|---|---|
/// | `max_layers` | 2^12 = 4096 | the statement's `layers` |
/// | `max_tokens` | 2^20 = 1,048,576 | the statement's `tokens` (input + output) |
/// | `max_cells` | 2^32 | the trace's cells N |
/// | `max_samples` | 2^20 | cells per challenge (k, configured or recorded) |
/// | `max_opening_cells` | 2^24 | cells an opening must hold (challenged and input cells) |
/// | `max_opening_bytes` | 2^32 = 4 GiB | element bytes of those cells |
/// | `max_message_bytes` | 2^33 = 8 GiB | a message file a front end reads (a JSON opening holds its bytes as hex) |
///
/// In JSON every field is optional (missing fields take their default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VerifierLimits {
    /// Largest `layers` a statement may claim.
    pub max_layers: u32,
    /// Largest `tokens` (input plus output) a statement may claim.
    pub max_tokens: u32,
    /// Largest number of cells N (layers × chunks per layer).
    pub max_cells: u64,
    /// Largest number of challenged cells in one round (the configured k, or a recorded
    /// challenge's length).
    pub max_samples: u32,
    /// Largest number of cells one opening may be required to hold (the opening set of a
    /// challenge, `specs/protocol.md` §4.2).
    pub max_opening_cells: u64,
    /// Largest total element bytes of the cells one opening must hold.
    pub max_opening_bytes: u64,
    /// Largest message a front end should read and decode (for
    /// [`crate::Message::from_bytes_with_limit`] and JSON files); the verifier itself receives
    /// decoded messages.
    pub max_message_bytes: u64,
}

impl VerifierLimits {
    /// The documented defaults (see the table above).
    pub const DEFAULT: VerifierLimits = VerifierLimits {
        max_layers: 1 << 12,
        max_tokens: 1 << 20,
        max_cells: 1 << 32,
        max_samples: 1 << 20,
        max_opening_cells: 1 << 24,
        max_opening_bytes: 1 << 32,
        max_message_bytes: 1 << 33,
    };

    /// No limit beyond what the types and the commitment layer allow (for measurements and
    /// tests: the verifier's cost is still bounded by k and the opening, not by the claim).
    pub const UNLIMITED: VerifierLimits = VerifierLimits {
        max_layers: u32::MAX,
        max_tokens: u32::MAX,
        max_cells: u64::MAX,
        max_samples: u32::MAX,
        max_opening_cells: u64::MAX,
        max_opening_bytes: u64::MAX,
        max_message_bytes: u64::MAX,
    };

    /// [`VerifierLimits::max_message_bytes`] as a `usize` (saturating), for
    /// [`crate::Message::from_bytes_with_limit`].
    pub fn message_limit(&self) -> usize {
        usize::try_from(self.max_message_bytes).unwrap_or(usize::MAX)
    }

    fn check(what: &'static str, limit: u64, claimed: u64) -> Result<()> {
        if claimed > limit {
            return Err(ProtocolError::LimitExceeded {
                what,
                limit,
                claimed,
            });
        }
        Ok(())
    }

    /// Checks a statement's claimed geometry (layers, tokens, cells): O(1).
    pub fn check_statement(&self, statement: &Statement) -> Result<()> {
        let g = &statement.geometry;
        Self::check("layers", self.max_layers.into(), g.layers.into())?;
        Self::check("tokens", self.max_tokens.into(), g.tokens.into())?;
        Self::check("cells", self.max_cells, g.num_cells())
    }

    /// Checks the number of challenged cells of one round.
    pub fn check_samples(&self, samples: u64) -> Result<()> {
        Self::check("challenged cells", self.max_samples.into(), samples)
    }

    /// Checks the size of a required opening: its cell count and element bytes.
    pub fn check_opening_size(&self, cells: u64, bytes: u64) -> Result<()> {
        Self::check("opening cells", self.max_opening_cells, cells)?;
        Self::check("opening bytes", self.max_opening_bytes, bytes)
    }
}

impl Default for VerifierLimits {
    fn default() -> Self {
        VerifierLimits::DEFAULT
    }
}

/// The verifier's state.
#[derive(Debug, Clone, PartialEq)]
pub enum VerifierState {
    /// Nothing received yet.
    AwaitCommitment,
    /// Interactive: the challenge of round `challenge.round` was sent.
    Challenged {
        /// The outstanding challenge.
        challenge: Challenge,
    },
    /// Non-interactive: awaiting the opening of round `round`.
    AwaitOpening {
        /// The round expected.
        round: u32,
        /// The session's proof-of-work nonce, fixed by the opening of round 0; later rounds
        /// must carry the same one.
        nonce: Option<u64>,
    },
    /// Final.
    Decided(Verdict),
}

impl VerifierState {
    /// Short name for messages.
    pub fn name(&self) -> &'static str {
        match self {
            VerifierState::AwaitCommitment => "await-commitment",
            VerifierState::Challenged { .. } => "challenged",
            VerifierState::AwaitOpening { .. } => "await-opening",
            VerifierState::Decided(_) => "decided",
        }
    }
}

/// What the verifier does after a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Send this challenge to the prover (interactive).
    Challenge(Challenge),
    /// Wait for the opening of the next round (non-interactive).
    AwaitOpening,
    /// The session is decided.
    Decided(Verdict),
}

/// Deliberate verifier defects, settable only with the `fault-injection` feature, so that the
/// model checker and tests can show they catch each one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Accept openings without checking the batch Merkle proof.
    pub skip_proof_check: bool,
    /// Derive non-interactive challenges from a transcript without the root.
    pub skip_root_binding: bool,
}

/// A verifier session.
#[derive(Debug)]
pub struct Verifier<R> {
    config: VerifierConfig,
    limits: VerifierLimits,
    recompute: R,
    state: VerifierState,
    commitment: Option<Commitment>,
    expected: Option<Statement>,
    faults: Faults,
}

/// Where an interactive verifier's challenges come from: fresh randomness (a live session) or
/// the verifier's own record of a past session ([`verify_recorded`]). Non-interactive rounds
/// never ask.
trait ChallengeSource {
    /// The challenge of round `round`, for `statement` (already checked against the limits).
    fn challenge(
        &mut self,
        statement: &Statement,
        round: u32,
        params: &ChallengeParams,
    ) -> Result<Challenge>;
}

/// A live session: a fresh seed from the verifier's generator, drawn only when asked.
struct Fresh<'a, G>(&'a mut G);

impl<G: RngCore + CryptoRng> ChallengeSource for Fresh<'_, G> {
    fn challenge(
        &mut self,
        statement: &Statement,
        round: u32,
        params: &ChallengeParams,
    ) -> Result<Challenge> {
        let mut seed = [0u8; 32];
        self.0.fill_bytes(&mut seed);
        let cells = sample_cells(statement, params.samples, params.strategy, seed)?;
        // the attention draw's seed: fresh too, sent with the challenge
        let attention = params.attention.map(|a| {
            let mut seed = [0u8; 32];
            self.0.fill_bytes(&mut seed);
            a.with_seed(seed)
        });
        Ok(Challenge {
            round,
            cells,
            attention,
        })
    }
}

/// A recorded session: the challenge the verifier issued in each round (validated by
/// [`verify_recorded`] before the replay). Past the end of the record (a session with fewer
/// openings than rounds) it answers an empty challenge, which leaves the state machine in
/// `Challenged` awaiting an opening that never comes; [`verify_recorded`] feeds nothing more
/// and reports the session as unfinished.
struct Replay<'a>(&'a [Challenge]);

impl ChallengeSource for Replay<'_> {
    fn challenge(
        &mut self,
        _statement: &Statement,
        round: u32,
        _params: &ChallengeParams,
    ) -> Result<Challenge> {
        Ok(self.0.get(round as usize).cloned().unwrap_or(Challenge {
            round,
            cells: Vec::new(),
            attention: None,
        }))
    }
}

/// The round rule of an interactive opening: it carries no proof of work, so its `pow_nonce`
/// must be 0 (exactly one valid encoding), else `BadProofOfWork { pow_bits: 0 }`
/// (specs/protocol.md §10.2).
fn interactive_round_rule(pow_nonce: u64) -> std::result::Result<(), RejectReason> {
    if pow_nonce != 0 {
        return Err(RejectReason::BadProofOfWork {
            pow_bits: 0,
            nonce: pow_nonce,
        });
    }
    Ok(())
}

/// The round rules of a non-interactive opening (specs/protocol.md §10.2): round 0's nonce
/// must meet the proof of work and fixes the session's nonce; later rounds must repeat it
/// (another nonce is refused even if valid). Returns the round's challenge (its cells and
/// attention draw), derived from the transcript with that nonce.
fn non_interactive_round_rule(
    commitment: &Commitment,
    params: &ChallengeParams,
    session_nonce: Option<u64>,
    (round, pow_nonce): (u32, u64),
    faults: Faults,
) -> std::result::Result<Challenge, RejectReason> {
    let pow_ok = match session_nonce {
        // later rounds repeat the nonce checked in round 0
        Some(n) => n == pow_nonce,
        None => matches!(check_pow(commitment, params, pow_nonce), Ok(true)),
    };
    if !pow_ok {
        return Err(RejectReason::BadProofOfWork {
            pow_bits: params.pow_bits,
            nonce: pow_nonce,
        });
    }
    #[cfg(feature = "fault-injection")]
    let seed = if faults.skip_root_binding {
        crate::transcript::challenge_seed_without_root(
            &commitment.statement,
            round,
            params,
            pow_nonce,
        )
    } else {
        challenge_seed(commitment, round, params, pow_nonce)
    };
    #[cfg(not(feature = "fault-injection"))]
    let seed = {
        let _ = faults;
        challenge_seed(commitment, round, params, pow_nonce)
    };
    let cells = sample_cells(&commitment.statement, params.samples, params.strategy, seed)
        .map_err(|e| RejectReason::GeometryMismatch {
            detail: e.to_string(),
        })?;
    Ok(Challenge {
        round,
        cells,
        attention: crate::transcript::attention_draw(commitment, round, params, pow_nonce),
    })
}

/// What the current state makes of an opening (computed before the state changes).
enum Received {
    /// Not expected here.
    OutOfOrder(&'static str),
    /// Judged: the rejection, or the session nonce to carry into the next round.
    Checked(std::result::Result<Option<u64>, RejectReason>),
}

impl<R: Recompute> Verifier<R> {
    /// A new session with the default [`VerifierLimits`]. Fails on an invalid policy (zero
    /// rounds or samples, invalid tolerance, proof of work above
    /// [`crate::transcript::MAX_POW_BITS`]).
    pub fn new(config: VerifierConfig, recompute: R) -> Result<Self> {
        Self::with_limits(config, recompute, VerifierLimits::default())
    }

    /// A new session with explicit resource limits. Fails as [`Verifier::new`] does, and with
    /// [`ProtocolError::LimitExceeded`] when the configured samples exceed
    /// `limits.max_samples`.
    pub fn with_limits(
        config: VerifierConfig,
        recompute: R,
        limits: VerifierLimits,
    ) -> Result<Self> {
        if config.rounds == 0 || config.params.samples == 0 {
            return Err(ProtocolError::InvalidParameter(
                "a verifier needs at least one round and one sample".into(),
            ));
        }
        if config.params.pow_bits > crate::transcript::MAX_POW_BITS {
            return Err(ProtocolError::InvalidParameter(format!(
                "pow_bits {} exceeds {}",
                config.params.pow_bits,
                crate::transcript::MAX_POW_BITS
            )));
        }
        limits.check_samples(config.params.samples.into())?;
        config.params.validate()?;
        if config.params.attention.is_some() && config.method.recomputes() {
            return Err(ProtocolError::InvalidParameter(format!(
                "an attention sample opens only the drawn heads and context chunks, which \
                 cannot be recomputed: the layer check must be freivalds, not {}",
                config.method.name()
            )));
        }
        config.tolerance.validate()?;
        Ok(Verifier {
            config,
            limits,
            recompute,
            state: VerifierState::AwaitCommitment,
            commitment: None,
            expected: None,
            faults: Faults::default(),
        })
    }

    /// Requires the commitment's statement to equal `statement` (the model, setup, tokens and
    /// geometry the verifier asked for); a commitment under any other statement is rejected with
    /// [`RejectReason::GeometryMismatch`] naming the first differing field. Without it the
    /// verifier checks the prover's own claim, whatever it is.
    pub fn expect_statement(&mut self, statement: Statement) {
        self.expected = Some(statement);
    }

    /// Injects deliberate defects (testing the tests; never in a real verifier).
    #[cfg(feature = "fault-injection")]
    pub fn inject_faults(&mut self, faults: Faults) {
        self.faults = faults;
    }

    /// The current state.
    pub fn state(&self) -> &VerifierState {
        &self.state
    }

    /// The verdict, once decided.
    pub fn verdict(&self) -> Option<&Verdict> {
        match &self.state {
            VerifierState::Decided(v) => Some(v),
            _ => None,
        }
    }

    /// The commitment received, if any.
    pub fn commitment(&self) -> Option<&Commitment> {
        self.commitment.as_ref()
    }

    /// The policy.
    pub fn config(&self) -> &VerifierConfig {
        &self.config
    }

    /// The resource limits.
    pub fn limits(&self) -> &VerifierLimits {
        &self.limits
    }

    fn decide(&mut self, verdict: Verdict) -> Step {
        self.state = VerifierState::Decided(verdict.clone());
        Step::Decided(verdict)
    }

    fn out_of_order(&mut self, message: &str) -> Step {
        if let VerifierState::Decided(v) = &self.state {
            return Step::Decided(v.clone());
        }
        let reason = RejectReason::OutOfOrder {
            state: self.state.name().to_string(),
            message: message.to_string(),
        };
        self.decide(Verdict::Reject(reason))
    }

    /// Receives the commitment. Interactive: draws and returns round 0's challenge from `rng`
    /// (randomness drawn only now, after the root is fixed).
    ///
    /// A commitment whose geometry exceeds the verifier's [`VerifierLimits`] is rejected with
    /// [`RejectReason::GeometryMismatch`] (detail: the [`ProtocolError::LimitExceeded`]
    /// message) before anything proportional to the claim is computed.
    pub fn receive_commitment<G: RngCore + CryptoRng>(
        &mut self,
        commitment: Commitment,
        rng: &mut G,
    ) -> Step {
        self.receive_commitment_from(commitment, &mut Fresh(rng))
    }

    fn receive_commitment_from(
        &mut self,
        commitment: Commitment,
        source: &mut dyn ChallengeSource,
    ) -> Step {
        if self.state != VerifierState::AwaitCommitment {
            return self.out_of_order("commitment");
        }
        if let Err(e) = commitment.validate() {
            return self.decide(Verdict::Reject(RejectReason::GeometryMismatch {
                detail: e.to_string(),
            }));
        }
        if let Some(field) = self
            .expected
            .as_ref()
            .and_then(|e| e.first_difference(&commitment.statement))
        {
            return self.decide(Verdict::Reject(RejectReason::GeometryMismatch {
                detail: format!(
                    "the statement's {field} differs from the one the verifier expects"
                ),
            }));
        }
        if let Err(e) = self.limits.check_statement(&commitment.statement) {
            return self.decide(Verdict::Reject(RejectReason::GeometryMismatch {
                detail: e.to_string(),
            }));
        }
        if self.config.method.checks_sublayers()
            && commitment.statement.trace_level == crate::TraceLevel::Hidden
        {
            return self.decide(Verdict::Reject(RejectReason::GeometryMismatch {
                detail: format!(
                    "the verifier checks layers by {} and the statement commits hidden states \
                     only (no sub-layer values)",
                    self.config.method.name()
                ),
            }));
        }
        if self.config.params.attention.is_some()
            && commitment.statement.trace_level.heads().is_none()
        {
            return self.decide(Verdict::Reject(RejectReason::GeometryMismatch {
                detail: "the verifier samples the attention of each cell, and the statement does \
                         not commit its sub-layer values by head"
                    .into(),
            }));
        }
        self.commitment = Some(commitment);
        self.next_round(0, None, source)
    }

    fn next_round(
        &mut self,
        round: u32,
        nonce: Option<u64>,
        source: &mut dyn ChallengeSource,
    ) -> Step {
        if round == self.config.rounds {
            return self.decide(Verdict::Accept);
        }
        match self.config.mode {
            Mode::NonInteractive => {
                self.state = VerifierState::AwaitOpening { round, nonce };
                Step::AwaitOpening
            }
            Mode::Interactive => {
                let Some(commitment) = self.commitment.as_ref() else {
                    return self.out_of_order("round before the commitment");
                };
                match source.challenge(&commitment.statement, round, &self.config.params) {
                    Ok(challenge) => {
                        self.state = VerifierState::Challenged {
                            challenge: challenge.clone(),
                        };
                        Step::Challenge(challenge)
                    }
                    Err(e) => self.decide(Verdict::Reject(RejectReason::GeometryMismatch {
                        detail: e.to_string(),
                    })),
                }
            }
        }
    }

    /// Receives the opening of the current round, checks it, and either decides or moves to the
    /// next round (returning its challenge in interactive mode).
    pub fn receive_opening<G: RngCore + CryptoRng>(
        &mut self,
        opening: &Opening,
        rng: &mut G,
    ) -> Step {
        let Ok(step) = self.receive_opening_from(Decoded { opening, next: 0 }, &mut Fresh(rng));
        step
    }

    /// [`Verifier::receive_opening`] for an opening read as it arrives (a file, a pipe, a
    /// socket): each cell is checked when it is read, and only the cells a later cell's check
    /// needs are kept (for a statement of hidden states, the opened cells of two layers), so
    /// the verifier holds one cell and two layers' openings instead of the whole opening. The
    /// step is the one [`Verifier::receive_opening`] gives on the decoded opening (tested).
    ///
    /// # Errors
    /// [`ProtocolError::Decode`] when the bytes are not a valid opening (exactly when
    /// [`Message::from_bytes_with_limit`] refuses them); the state is then unchanged, as if
    /// nothing had arrived. The whole message is read before the state changes.
    pub fn receive_opening_stream<S: Read, G: RngCore + CryptoRng>(
        &mut self,
        opening: OpeningReader<S>,
        rng: &mut G,
    ) -> Result<Step> {
        self.receive_opening_from(opening, &mut Fresh(rng))
    }

    /// The round rules and the check of an opening in the current state, without changing it
    /// (the source is read to its end whatever the verdict).
    fn judge<'d, S: OpeningSource<'d>>(
        &self,
        opening: S,
    ) -> std::result::Result<Received, S::Error> {
        let Some(commitment) = self.commitment.as_ref() else {
            drain(opening)?;
            return Ok(Received::OutOfOrder("opening"));
        };
        let (round, pow_nonce) = (opening.round(), opening.pow_nonce());
        let cells = match &self.state {
            VerifierState::Challenged { challenge } if challenge.round == round => {
                if let Err(reason) = interactive_round_rule(pow_nonce) {
                    drain(opening)?;
                    return Ok(Received::Checked(Err(reason)));
                }
                Cow::Borrowed(challenge)
            }
            VerifierState::AwaitOpening { round: r, nonce } if *r == round => {
                match non_interactive_round_rule(
                    commitment,
                    &self.config.params,
                    *nonce,
                    (round, pow_nonce),
                    self.faults,
                ) {
                    Ok(challenge) => Cow::Owned(challenge),
                    Err(reason) => {
                        drain(opening)?;
                        return Ok(Received::Checked(Err(reason)));
                    }
                }
            }
            VerifierState::Challenged { .. } | VerifierState::AwaitOpening { .. } => {
                drain(opening)?;
                return Ok(Received::OutOfOrder("opening for another round"));
            }
            _ => {
                drain(opening)?;
                return Ok(Received::OutOfOrder("opening"));
            }
        };
        let checked = check_source(
            commitment,
            (&cells.cells, cells.attention.as_ref()),
            opening,
            &self.config.tolerance,
            self.config.method,
            &self.recompute,
            &self.limits,
            self.faults,
        )?;
        Ok(Received::Checked(checked.map(
            |()| match self.config.mode {
                Mode::NonInteractive => Some(pow_nonce),
                Mode::Interactive => None,
            },
        )))
    }

    fn receive_opening_from<'a, S: OpeningSource<'a>>(
        &mut self,
        opening: S,
        source: &mut dyn ChallengeSource,
    ) -> std::result::Result<Step, S::Error> {
        let round = opening.round();
        Ok(match self.judge(opening)? {
            Received::OutOfOrder(message) => self.out_of_order(message),
            Received::Checked(Ok(nonce)) => self.next_round(round + 1, nonce, source),
            Received::Checked(Err(reason)) => self.decide(Verdict::Reject(reason)),
        })
    }
}

/// Decides a whole recorded session from its messages (for instance files), with the default
/// [`VerifierLimits`]: see [`verify_recorded_with_limits`].
pub fn verify_recorded<R: Recompute + ?Sized>(
    commitment: &Commitment,
    config: &VerifierConfig,
    challenges: Option<&[Challenge]>,
    openings: &[Opening],
    recompute: &R,
    expected: Option<&Statement>,
) -> Result<Verdict> {
    verify_recorded_with_limits(
        commitment,
        config,
        &VerifierLimits::default(),
        challenges,
        openings,
        recompute,
        expected,
    )
}

/// Decides a whole recorded session offline: the commitment, then each opening in order, through
/// the same state machine as a live [`Verifier`] (so the verdict is the one a live verifier
/// would have reached on the same messages).
///
/// * `config.mode` is [`Mode::Interactive`]: `challenges` must be the verifier's own recorded
///   challenges, one per opening, the i-th with `round = i` and valid
///   ([`crate::Message::validate`]: non-empty, distinct, sorted) and at most
///   `limits.max_samples` cells; they replace the fresh draws (their length is not compared
///   with `config.params.samples`: they are what was sent). Openings must carry `pow_nonce`
///   0, else `BadProofOfWork { pow_bits: 0 }` (specs/protocol.md §10.2).
/// * [`Mode::NonInteractive`]: `challenges` must be `None`; each round's cells are derived from
///   the transcript with the nonce of round 0's opening, which must meet the proof of work;
///   later rounds must carry the same nonce (one shared nonce), else `BadProofOfWork`.
/// * Openings are matched to rounds by position: an opening whose `round` is not its
///   position is rejected as [`RejectReason::OutOfOrder`] ("opening for another round").
/// * Fewer openings than `config.rounds`: rejected with [`RejectReason::OutOfOrder`] whose
///   `state` is the state the session stopped in (`challenged` or `await-opening`) and whose
///   `message` says how many of how many rounds were answered — a session is accepted only
///   after all its rounds.
///
/// # Errors
/// Bad input, not a verdict: an invalid `config` or one whose samples exceed the limits (as
/// [`Verifier::with_limits`]), challenges given in non-interactive mode or missing in
/// interactive mode, a number of challenges other than the number of openings, an invalid
/// recorded challenge or one whose round is not its position, and more openings than
/// `config.rounds` ([`ProtocolError::InvalidParameter`] or
/// [`ProtocolError::LimitExceeded`]). The verifier's own record being inconsistent is not the
/// prover's fault.
pub fn verify_recorded_with_limits<R: Recompute + ?Sized>(
    commitment: &Commitment,
    config: &VerifierConfig,
    limits: &VerifierLimits,
    challenges: Option<&[Challenge]>,
    openings: &[Opening],
    recompute: &R,
    expected: Option<&Statement>,
) -> Result<Verdict> {
    let sources = openings.iter().map(|opening| Decoded { opening, next: 0 });
    verify_recorded_sources(
        commitment, config, limits, challenges, sources, recompute, expected,
    )
}

/// [`verify_recorded_with_limits`] over openings read as they arrive ([`OpeningReader`], one
/// per round, in round order): each opening's cells are checked as they are read and only the
/// cells a later check needs are kept ([`Verifier::receive_opening_stream`]). The verdict is
/// the one [`verify_recorded_with_limits`] gives on the decoded openings, and a malformed
/// opening is an error here exactly when decoding it would be one: openings after the
/// decision are still read to their end (tested).
///
/// # Errors
/// As [`verify_recorded_with_limits`], and [`ProtocolError::Decode`] for an opening that is
/// not a valid binary envelope.
pub fn verify_recorded_streams<R: Recompute + ?Sized, S: Read>(
    commitment: &Commitment,
    config: &VerifierConfig,
    limits: &VerifierLimits,
    challenges: Option<&[Challenge]>,
    openings: Vec<OpeningReader<S>>,
    recompute: &R,
    expected: Option<&Statement>,
) -> Result<Verdict> {
    verify_recorded_sources(
        commitment,
        config,
        limits,
        challenges,
        openings.into_iter(),
        recompute,
        expected,
    )
}

fn verify_recorded_sources<'a, R, S, I>(
    commitment: &Commitment,
    config: &VerifierConfig,
    limits: &VerifierLimits,
    challenges: Option<&[Challenge]>,
    openings: I,
    recompute: &R,
    expected: Option<&Statement>,
) -> Result<Verdict>
where
    R: Recompute + ?Sized,
    S: OpeningSource<'a>,
    S::Error: Into<ProtocolError>,
    I: ExactSizeIterator<Item = S>,
{
    let count = openings.len();
    let mut verifier = Verifier::with_limits(config.clone(), recompute, *limits)?;
    let recorded: &[Challenge] = match (config.mode, challenges) {
        (Mode::Interactive, Some(cs)) => {
            if cs.len() != count {
                return Err(ProtocolError::InvalidParameter(format!(
                    "{} openings but {} recorded challenges: an interactive session records one \
                     challenge per opening",
                    count,
                    cs.len()
                )));
            }
            for (i, c) in cs.iter().enumerate() {
                c.validate()?;
                if u64::from(c.round) != i as u64 {
                    return Err(ProtocolError::InvalidParameter(format!(
                        "recorded challenge {i} is for round {}; challenges are recorded in \
                         round order from 0",
                        c.round
                    )));
                }
                limits.check_samples(c.cells.len() as u64)?;
                let sample = c.attention.map(|a| (a.heads, a.chunks));
                if sample != config.params.attention.map(|a| (a.heads, a.chunks)) {
                    return Err(ProtocolError::InvalidParameter(format!(
                        "recorded challenge {i} has attention draw {:?}; the configuration's \
                         attention sample is {:?}",
                        c.attention, config.params.attention
                    )));
                }
            }
            cs
        }
        (Mode::Interactive, None) => {
            return Err(ProtocolError::InvalidParameter(
                "an interactive session is checked against the verifier's recorded challenges"
                    .into(),
            ))
        }
        (Mode::NonInteractive, Some(_)) => {
            return Err(ProtocolError::InvalidParameter(
                "a non-interactive session derives its challenges; none may be given".into(),
            ))
        }
        (Mode::NonInteractive, None) => &[],
    };
    if count as u64 > u64::from(config.rounds) {
        return Err(ProtocolError::InvalidParameter(format!(
            "{} openings for a session of {} rounds",
            count, config.rounds
        )));
    }
    if let Some(s) = expected {
        verifier.expect_statement(s.clone());
    }
    let mut source = Replay(recorded);
    let mut step = verifier.receive_commitment_from(commitment.clone(), &mut source);
    for opening in openings {
        if let Step::Decided(_) = step {
            // decided: the rest is read only to report a malformed message as one
            drain(opening).map_err(Into::into)?;
            continue;
        }
        step = verifier
            .receive_opening_from(opening, &mut source)
            .map_err(Into::into)?;
    }
    Ok(match step {
        Step::Decided(v) => v,
        Step::Challenge(_) | Step::AwaitOpening => Verdict::Reject(RejectReason::OutOfOrder {
            state: verifier.state().name().to_string(),
            message: format!(
                "end of the recorded session: {} of {} rounds answered",
                count, config.rounds
            ),
        }),
    })
}

/// Checks one opening of the challenged cells `challenged` against a commitment — the
/// verification algorithm of `specs/protocol.md` — with the default [`VerifierLimits`]:
/// see [`check_opening_with_limits`].
pub fn check_opening<R: Recompute + ?Sized>(
    commitment: &Commitment,
    challenged: &[CellId],
    opening: &Opening,
    tolerance: &TolerancePolicy,
    recompute: &R,
) -> std::result::Result<(), RejectReason> {
    check_opening_with_limits(
        commitment,
        challenged,
        opening,
        tolerance,
        recompute,
        &VerifierLimits::default(),
    )
}

/// Checks one opening of the challenged cells `challenged` against a commitment — the
/// verification algorithm of `specs/protocol.md` §11.2:
///
/// 0. The statement's geometry and the number of challenged cells are checked against
///    `limits`; the opening set is computed as runs of chunks ([`Statement::opening_ranges`],
///    O(k log k)) and its cell count and byte size are checked against `limits` — all before
///    anything proportional to the claim is allocated (a claim above a limit:
///    [`RejectReason::GeometryMismatch`] with the [`ProtocolError::LimitExceeded`] message).
///    With text input, the input tokens must be the text's tokenization
///    ([`Recompute::check_input`]).
/// 1. The opened cells must be exactly [`Statement::opening_cells`] of the challenge, in order
///    (compared run by run, without listing the required cells).
/// 2. Each cell's data must have its shape's byte length.
/// 3. Leaf digests are computed from the data; the batch proof must open them under the root
///    with the tree size and indices from the statement.
/// 4. No opened value may be NaN or infinite.
/// 5. Each challenged cell is recomputed (layer 0 from the tokens; layer `l` from the opened
///    input rows of layer `l − 1`) and compared under the tolerance policy.
/// 6. For challenged cells of the last layer, each row that predicts an output token must give
///    that token.
pub fn check_opening_with_limits<R: Recompute + ?Sized>(
    commitment: &Commitment,
    challenged: &[CellId],
    opening: &Opening,
    tolerance: &TolerancePolicy,
    recompute: &R,
    limits: &VerifierLimits,
) -> std::result::Result<(), RejectReason> {
    check_opening_inner(
        commitment,
        (challenged, None),
        opening,
        tolerance,
        LayerCheck::Recompute,
        recompute,
        limits,
        Faults::default(),
    )
}

/// [`check_opening_with_limits`] with an explicit [`LayerCheck`]: with Freivalds (or both),
/// the opening's sub-layer cells are checked too (specs/protocol.md §11.4) and each
/// challenged cell of a layer `l ≥ 1` is checked by [`Recompute::check_sublayers`], whose
/// output is compared with the opened cell under `tolerance`. A statement without sub-layer
/// values cannot be checked by Freivalds ([`RejectReason::GeometryMismatch`]).
pub fn check_opening_by<R: Recompute + ?Sized>(
    commitment: &Commitment,
    challenged: &[CellId],
    opening: &Opening,
    tolerance: &TolerancePolicy,
    method: LayerCheck,
    recompute: &R,
    limits: &VerifierLimits,
) -> std::result::Result<(), RejectReason> {
    check_opening_inner(
        commitment,
        (challenged, None),
        opening,
        tolerance,
        method,
        recompute,
        limits,
        Faults::default(),
    )
}

/// [`check_opening_by`] for a whole challenge: its cells and, when it has one, its attention
/// draw (specs/protocol.md §4.4), under which the opening must hold exactly the drawn cells
/// ([`Statement::opening_ranges_drawn`], [`Statement::sublayer_ranges_drawn`]) and each
/// challenged cell of a layer `l ≥ 1` is checked by [`Recompute::check_sublayer_heads`] on
/// the drawn heads and rows. A drawn opening cannot be recomputed: a draw with a layer check
/// that recomputes, or on a statement that does not commit by head, is
/// [`RejectReason::GeometryMismatch`].
pub fn check_opening_drawn<R: Recompute + ?Sized>(
    commitment: &Commitment,
    challenge: &Challenge,
    opening: &Opening,
    tolerance: &TolerancePolicy,
    method: LayerCheck,
    recompute: &R,
    limits: &VerifierLimits,
) -> std::result::Result<(), RejectReason> {
    check_opening_inner(
        commitment,
        (&challenge.cells, challenge.attention.as_ref()),
        opening,
        tolerance,
        method,
        recompute,
        limits,
        Faults::default(),
    )
}

/// The cell count and element bytes of the cells of `runs`.
fn opening_size(g: &veritrace_commit::TraceGeometry, runs: &[CellRange]) -> (u64, u64) {
    let row = g.row_byte_len() as u64;
    runs.iter().fold((0u64, 0u64), |(cells, bytes), r| {
        (
            cells.saturating_add(r.len()),
            bytes.saturating_add(r.rows(g).saturating_mul(row)),
        )
    })
}

/// Step 1: the first difference between the opened cells and the required runs, as the reason
/// of specs/protocol.md §11.2 step 1, walking both lists once (the required cells are never
/// listed: the walk stops at the end of the opening or at the first difference).
fn first_opening_difference(required: &[CellRange], opened: &[OpenedCell]) -> Option<RejectReason> {
    let mut walk = RequiredWalk::new(required);
    opened
        .iter()
        .find_map(|oc| walk.step(required, oc.cell))
        .or_else(|| walk.missing(required))
}

/// Step 1's walk over the required runs, one opened cell at a time: where the next required
/// cell is (a run and a chunk; the runs themselves are passed to each call).
#[derive(Debug, Clone, Copy)]
struct RequiredWalk {
    run: usize,
    chunk: u32,
}

impl RequiredWalk {
    /// At the first cell of `runs`.
    fn new(runs: &[CellRange]) -> Self {
        RequiredWalk {
            run: 0,
            chunk: runs.first().map_or(0, |r| r.chunks.start),
        }
    }

    /// The next required cell, consumed.
    fn next(&mut self, runs: &[CellRange]) -> Option<CellId> {
        while let Some(r) = runs.get(self.run) {
            if self.chunk < r.chunks.end {
                let cell = CellId {
                    layer: r.layer,
                    chunk: self.chunk,
                };
                self.chunk += 1;
                return Some(cell);
            }
            self.run += 1;
            self.chunk = runs.get(self.run).map_or(0, |r| r.chunks.start);
        }
        None
    }

    /// The reason the opened cell `cell` is not the next required one (the required cell in
    /// its place is missing if `cell` is required elsewhere, else `cell` was not asked for).
    fn step(&mut self, runs: &[CellRange], cell: CellId) -> Option<RejectReason> {
        let contains = || {
            let i = runs.partition_point(|r| (r.layer, r.chunks.end) <= (cell.layer, cell.chunk));
            runs.get(i).is_some_and(|r| r.contains(cell))
        };
        match self.next(runs) {
            Some(want) if want == cell => None,
            Some(want) if contains() => Some(RejectReason::MissingCell { cell: want }),
            _ => Some(RejectReason::UnexpectedCell { cell }),
        }
    }

    /// After the last opened cell: the first required cell not opened.
    fn missing(&mut self, runs: &[CellRange]) -> Option<RejectReason> {
        self.next(runs)
            .map(|cell| RejectReason::MissingCell { cell })
    }
}

/// One opened cell as the check receives it: borrowed from a decoded [`Opening`], or owned
/// (read from a stream).
type CellBytes<'a> = (CellId, Cow<'a, [u8]>);

/// The batch proof and the sub-layer part of an opening, borrowed or owned.
type Tail<'a> = (Cow<'a, BatchProof>, Option<Cow<'a, SubLayerOpening>>);

/// An opening as the verifier reads it: the head (round, nonce), then the cells in order, then
/// the tail. A decoded [`Opening`] lends its parts ([`Decoded`]); an [`OpeningReader`] reads
/// them as they arrive.
trait OpeningSource<'a>: Sized {
    /// A decoding error (none for a decoded opening).
    type Error;
    /// Whether the cells arrive over time (a stream): challenged cells are then checked as
    /// they arrive. A decoded opening is checked in the order of the steps instead (the proof
    /// before any recompute), which costs nothing there, since every cell is already at hand.
    const ARRIVES: bool;
    /// The round it answers.
    fn round(&self) -> u32;
    /// Its proof-of-work nonce.
    fn pow_nonce(&self) -> u64;
    /// The next opened cell.
    fn next_cell(&mut self) -> std::result::Result<Option<CellBytes<'a>>, Self::Error>;
    /// The rest of the cells, skipped, and the tail.
    fn tail(self) -> std::result::Result<Tail<'a>, Self::Error>;
}

/// A decoded opening as an [`OpeningSource`]: its cells and tail are lent, not copied.
struct Decoded<'s> {
    opening: &'s Opening,
    next: usize,
}

impl<'a, 's: 'a> OpeningSource<'a> for Decoded<'s> {
    type Error = std::convert::Infallible;
    const ARRIVES: bool = false;

    fn round(&self) -> u32 {
        self.opening.round
    }

    fn pow_nonce(&self) -> u64 {
        self.opening.pow_nonce
    }

    fn next_cell(&mut self) -> std::result::Result<Option<CellBytes<'a>>, Self::Error> {
        let cell = self.opening.cells.get(self.next);
        self.next += 1;
        Ok(cell.map(|oc| (oc.cell, Cow::Borrowed(&oc.data[..]))))
    }

    fn tail(self) -> std::result::Result<Tail<'a>, Self::Error> {
        Ok((
            Cow::Borrowed(&self.opening.proof),
            self.opening.sublayers.as_ref().map(Cow::Borrowed),
        ))
    }
}

impl<'a, S: Read> OpeningSource<'a> for OpeningReader<S> {
    type Error = ProtocolError;
    const ARRIVES: bool = true;

    fn round(&self) -> u32 {
        OpeningReader::round(self)
    }

    fn pow_nonce(&self) -> u64 {
        OpeningReader::pow_nonce(self)
    }

    fn next_cell(&mut self) -> Result<Option<CellBytes<'a>>> {
        Ok(OpeningReader::next_cell(self)?.map(|oc| (oc.cell, Cow::Owned(oc.data))))
    }

    fn tail(self) -> Result<Tail<'a>> {
        let tail = self.finish()?;
        Ok((Cow::Owned(tail.proof), tail.sublayers.map(Cow::Owned)))
    }
}

/// Reads the rest of `source` without checking it (an opening the verifier has already
/// judged), so that a malformed message is still reported as one.
fn drain<'a, S: OpeningSource<'a>>(mut source: S) -> std::result::Result<(), S::Error> {
    while source.next_cell()?.is_some() {}
    source.tail().map(|_| ())
}

/// Checks the opening `source` reads against the challenged cells (specs/protocol.md §11.2;
/// see [`check_opening_with_limits`] for the steps): the outer `Err` is a decoding error of the
/// source, the inner result the verdict on the opening. The source is always read to its end.
#[allow(clippy::too_many_arguments)]
fn check_source<'v, 'd, R: Recompute + ?Sized, S: OpeningSource<'d>>(
    commitment: &'v Commitment,
    challenged: (&'v [CellId], Option<&'v AttentionDraw>),
    mut source: S,
    tolerance: &'v TolerancePolicy,
    method: LayerCheck,
    recompute: &'v R,
    limits: &VerifierLimits,
    faults: Faults,
) -> std::result::Result<std::result::Result<(), RejectReason>, S::Error> {
    let mut check = OpeningCheck::start(
        commitment, challenged, tolerance, method, recompute, limits, faults,
    );
    if let Ok(check) = &mut check {
        check.on_arrival &= S::ARRIVES;
    }
    while let Some((cell, data)) = source.next_cell()? {
        if let Ok(check) = &mut check {
            check.cell(cell, data);
        }
    }
    let (proof, sublayers) = source.tail()?;
    Ok(check.and_then(|check| check.finish(&proof, sublayers.as_deref())))
}

#[allow(clippy::too_many_arguments)]
fn check_opening_inner<R: Recompute + ?Sized>(
    commitment: &Commitment,
    challenged: (&[CellId], Option<&AttentionDraw>),
    opening: &Opening,
    tolerance: &TolerancePolicy,
    method: LayerCheck,
    recompute: &R,
    limits: &VerifierLimits,
    faults: Faults,
) -> std::result::Result<(), RejectReason> {
    let source = Decoded { opening, next: 0 };
    let Ok(verdict) = check_source(
        commitment, challenged, source, tolerance, method, recompute, limits, faults,
    );
    verdict
}

/// The check of one opening as its cells arrive (specs/protocol.md §11.2).
///
/// Each cell is checked on arrival against step 1 (the next required cell), steps 2-3 (its
/// length; its leaf digest is kept, 32 bytes) and step 4 (finite values). For a streamed
/// opening of a statement of hidden states whose challenge is sorted (always, from a
/// verifier), a challenged cell is recomputed and compared (steps 5-6) as soon as it arrives:
/// its inputs, the opened cells of the layer below, arrived before it (the opening is
/// layer-major), and only the cells of the current and the previous layer are kept. Otherwise
/// (a decoded opening, whose cells are lent, not copied; a sub-layer statement, whose
/// sub-layer values follow the cells) every cell is kept and the challenged cells are checked
/// after the tail, in the order of the steps.
///
/// The verdict is the one the steps give in their order, whatever the order of discovery: the
/// first failure of each step is recorded and [`OpeningCheck::finish`] reports the earliest
/// step's, so a streamed opening is judged exactly as the decoded one (tested). Once a
/// failure is recorded, no cell is recomputed any more (its result could not be the verdict).
struct OpeningCheck<'v, 'd, R: ?Sized> {
    commitment: &'v Commitment,
    challenged: &'v [CellId],
    /// The challenge's attention draw, if any.
    draw: Option<&'v AttentionDraw>,
    tolerance: &'v TolerancePolicy,
    method: LayerCheck,
    recompute: &'v R,
    faults: Faults,
    required: Vec<CellRange>,
    sub_required: Vec<(SubLayerPart, TraceGeometry, Vec<CellRange>)>,
    /// Step 1's walk over `required`.
    walk: RequiredWalk,
    /// Steps 2-3: the leaf digests of the cells so far, with their leaf indices.
    leaves: Vec<(u64, veritrace_commit::Digest)>,
    /// The cells a later check needs, in arrival (leaf) order.
    kept: Vec<CellBytes<'d>>,
    /// Whether challenged cells are checked on arrival (else after the tail).
    on_arrival: bool,
    /// Challenged cells checked so far (on arrival).
    checked: usize,
    /// The first failure of step 1, of steps 2-3, of step 4 and of steps 5-6.
    order: Option<RejectReason>,
    shape: Option<RejectReason>,
    finite: Option<RejectReason>,
    cells: Option<RejectReason>,
}

impl<'v, 'd, R: Recompute + ?Sized> OpeningCheck<'v, 'd, R> {
    /// Step 0: limits, the opening set and its size, the statement's input.
    fn start(
        commitment: &'v Commitment,
        (challenged, draw): (&'v [CellId], Option<&'v AttentionDraw>),
        tolerance: &'v TolerancePolicy,
        method: LayerCheck,
        recompute: &'v R,
        limits: &VerifierLimits,
        faults: Faults,
    ) -> std::result::Result<Self, RejectReason> {
        let statement = &commitment.statement;
        let g = &statement.geometry;
        // 0. limits first (O(1)), then the opening set as runs (O(k log k)) and its size
        limits.check_statement(statement).map_err(bad_statement)?;
        limits
            .check_samples(challenged.len() as u64)
            .map_err(bad_statement)?;
        if method.checks_sublayers() && statement.trace_level == TraceLevel::Hidden {
            return Err(RejectReason::GeometryMismatch {
                detail: format!(
                    "the verifier checks layers by {} and the statement commits hidden states only",
                    method.name()
                ),
            });
        }
        if let Some(d) = draw {
            if statement.trace_level.heads().is_none() {
                return Err(RejectReason::GeometryMismatch {
                    detail: "the challenge draws heads and context chunks, and the statement \
                             does not commit its sub-layer values by head"
                        .into(),
                });
            }
            if method.recomputes() {
                return Err(RejectReason::GeometryMismatch {
                    detail: format!(
                        "a drawn opening cannot be recomputed (layer check {})",
                        method.name()
                    ),
                });
            }
            if d.heads == 0 {
                return Err(RejectReason::GeometryMismatch {
                    detail: "an attention draw samples at least one head".into(),
                });
            }
        }
        if let Some((_, kv_heads)) = statement.trace_level.heads() {
            // every challenged cell above layer 0 opens its own chunk of every key-value head:
            // a claim of many heads is refused before any run is listed
            let above = challenged.iter().filter(|c| c.layer > 0).count() as u64;
            limits
                .check_opening_size(above.saturating_mul(u64::from(kv_heads)), 0)
                .map_err(bad_statement)?;
        }
        let required = statement
            .opening_ranges_drawn(challenged, draw)
            .map_err(bad_statement)?;
        let (mut required_cells, mut required_bytes) = opening_size(g, &required);
        // the sub-layer runs and geometries (none for a hidden-only statement)
        let mut sub_required: Vec<(SubLayerPart, TraceGeometry, Vec<CellRange>)> = Vec::new();
        for &part in statement.trace_level.parts() {
            if let Some(sg) = statement.sublayer_geometry(part).map_err(bad_statement)? {
                let runs = statement
                    .sublayer_ranges_drawn(challenged, part, draw)
                    .map_err(bad_statement)?;
                let (cells, bytes) = opening_size(&sg, &runs);
                required_cells = required_cells.saturating_add(cells);
                required_bytes = required_bytes.saturating_add(bytes);
                sub_required.push((part, sg, runs));
            }
        }
        limits
            .check_opening_size(required_cells, required_bytes)
            .map_err(bad_statement)?;
        // the input tokens are the statement's text, tokenized (when it has text)
        recompute.check_input(statement).map_err(bad_statement)?;
        let walk = RequiredWalk::new(&required);
        let on_arrival = sub_required.is_empty() && challenged.windows(2).all(|w| w[0] < w[1]);
        Ok(OpeningCheck {
            commitment,
            challenged,
            draw,
            tolerance,
            method,
            recompute,
            faults,
            required,
            sub_required,
            walk,
            leaves: Vec::new(),
            kept: Vec::new(),
            on_arrival,
            checked: 0,
            order: None,
            shape: None,
            finite: None,
            cells: None,
        })
    }

    /// Steps 1-4 (and 5-6 on arrival) for the next opened cell.
    fn cell(&mut self, cell: CellId, data: Cow<'d, [u8]>) {
        if self.order.is_some() {
            return;
        }
        // 1. the next required cell (the first difference names the missing or unexpected one)
        if let Some(reason) = self.walk.step(&self.required, cell) {
            self.order = Some(reason);
            return;
        }
        if self.shape.is_some() {
            return;
        }
        // 2-3. its length, and its leaf digest for the batch proof
        let statement = &self.commitment.statement;
        let g = &statement.geometry;
        match cell_leaf(g, statement, cell, &data, None) {
            Ok(leaf) => self.leaves.push(leaf),
            Err(reason) => {
                self.shape = Some(reason);
                return;
            }
        }
        // 4. finite values
        if self.finite.is_none() {
            if let Some(index) = first_non_finite(g.dtype, &data) {
                self.finite = Some(RejectReason::NonFinite { cell, index });
            }
        }
        if self.finite.is_some() || self.cells.is_some() {
            return;
        }
        if !self.on_arrival {
            self.kept.push((cell, data));
            return;
        }
        // only the previous layer's cells are inputs of this layer's challenged cells
        let stale = self.kept.partition_point(|(c, _)| c.layer + 1 < cell.layer);
        self.kept.drain(..stale);
        self.kept.push((cell, data));
        // 5-6. a challenged cell as soon as it is here (its inputs came before it)
        if self.challenged.get(self.checked) == Some(&cell) {
            self.checked += 1;
            if let Err(reason) = self.check_cell(cell, None) {
                self.cells = Some(reason);
            }
        }
    }

    /// The remaining steps once the cells are read: what was missing, the sub-layer cells, the
    /// batch proofs, and the challenged cells not yet checked; then the first failure in the
    /// order of the steps.
    fn finish(
        mut self,
        proof: &BatchProof,
        sublayers: Option<&SubLayerOpening>,
    ) -> std::result::Result<(), RejectReason> {
        let statement = &self.commitment.statement;
        let g = &statement.geometry;
        // 1. exactly the required cells, in order (sub-layer cells exactly when the statement
        //    has them)
        if let Some(reason) = self.order.take() {
            return Err(reason);
        }
        if let Some(reason) = self.walk.missing(&self.required) {
            return Err(reason);
        }
        match (sublayers, self.sub_required.is_empty()) {
            (None, false) => {
                return Err(RejectReason::GeometryMismatch {
                    detail: "the statement commits sub-layer values and the opening has none"
                        .into(),
                })
            }
            (Some(_), true) => {
                return Err(RejectReason::GeometryMismatch {
                    detail: "the opening has sub-layer values and the statement commits hidden \
                             states only"
                        .into(),
                })
            }
            (Some(sub), false) => {
                for (part, _, runs) in &self.sub_required {
                    if let Some(reason) = first_opening_difference(runs, sub.get(*part).0) {
                        return Err(reason);
                    }
                }
                // a part the statement does not commit has no cells
                for part in SubLayerPart::ALL {
                    if self.sub_required.iter().any(|(p, _, _)| *p == part) {
                        continue;
                    }
                    if let Some(oc) = sub.get(part).0.first() {
                        return Err(RejectReason::UnexpectedCell { cell: oc.cell });
                    }
                }
            }
            (None, true) => {}
        }

        // 2-3. lengths, leaves, batch proofs
        if let Some(reason) = self.shape.take() {
            return Err(reason);
        }
        check_leaves(
            statement,
            &self.commitment.root,
            g.num_cells(),
            &self.leaves,
            proof,
            self.faults,
        )?;
        if let (Some(sub), Some(roots)) = (sublayers, &self.commitment.sublayer_roots) {
            for (part, sg, _) in &self.sub_required {
                let (cells, proof) = sub.get(*part);
                let Some(root) = roots.get(*part) else {
                    return Err(RejectReason::GeometryMismatch {
                        detail: format!("the commitment has no {} root", part.name()),
                    });
                };
                check_cells_against_root(sg, statement, *part, root, cells, proof, self.faults)?;
            }
            // the parts the statement does not commit: no cells (step 1), an empty proof
            for part in SubLayerPart::ALL {
                if !self.sub_required.iter().any(|(p, _, _)| *p == part) {
                    check_leaves(
                        statement,
                        &self.commitment.root,
                        0,
                        &[],
                        sub.get(part).1,
                        self.faults,
                    )?;
                }
            }
        }
        debug_assert!(statement.hasher.is_canonical(&self.commitment.root));

        // 4. non-finite values are rejected before any comparison
        if let Some(reason) = self.finite.take() {
            return Err(reason);
        }
        if let Some(sub) = sublayers {
            let dtype = statement.trace_level.dtype().unwrap_or(Dtype::F32);
            for (part, _, _) in &self.sub_required {
                for oc in sub.get(*part).0 {
                    if let Some(index) = first_non_finite(dtype, &oc.data) {
                        // reported in hidden-trace coordinates (sub-layer s is layer s + 1)
                        return Err(RejectReason::NonFinite {
                            cell: hidden_cell(statement, *part, oc.cell),
                            index,
                        });
                    }
                }
            }
        }

        // 5-6. recompute or check algebraically, and compare
        if let Some(reason) = self.cells.take() {
            return Err(reason);
        }
        for &cell in &self.challenged[self.checked..] {
            self.check_cell(cell, sublayers)?;
        }
        Ok(())
    }

    /// The algebraic check of challenged cell `cell` (layer `l ≥ 1`) of a statement that
    /// commits by head: gathers its [`HeadClaim`] from the kept hidden cells and the opened
    /// sub-layer cells (all present: step 1 passed) and asks the engine.
    fn check_by_head(
        &self,
        cell: CellId,
        rows: Range<u32>,
        input_rows: Range<u32>,
        sub: &SubLayerOpening,
    ) -> std::result::Result<AlgebraicCheck, RejectReason> {
        let statement = &self.commitment.statement;
        let g = &statement.geometry;
        let failed = |e: ProtocolError| RejectReason::RecomputeFailed {
            cell,
            detail: e.to_string(),
        };
        let (h, kv_heads) = statement
            .trace_level
            .heads()
            .ok_or_else(|| failed(ProtocolError::Engine("not a by-head statement".into())))?;
        let geometry = |part| -> std::result::Result<&TraceGeometry, RejectReason> {
            self.sub_required
                .iter()
                .find(|(p, _, _)| *p == part)
                .map(|(_, sg, _)| sg)
                .ok_or(RejectReason::MissingCell { cell })
        };
        let (ctx_g, kv_g, cell_g) = (
            geometry(SubLayerPart::Context)?,
            geometry(SubLayerPart::Kv)?,
            geometry(SubLayerPart::Cell)?,
        );
        let drawn = self
            .draw
            .map(|d| d.cell(statement, cell))
            .transpose()
            .map_err(failed)?;
        let c = g.chunk;
        let (heads, checked): (Option<&[u32]>, Vec<Range<u32>>) = match &drawn {
            None => (None, vec![input_rows.clone()]),
            Some(d) => (
                Some(&d.heads[..]),
                d.checked_chunks(cell.chunk)
                    .map(|m| {
                        let lo = (m * c).max(input_rows.start);
                        let hi = m.saturating_add(1).saturating_mul(c).min(input_rows.end);
                        lo..hi.max(lo)
                    })
                    .collect(),
            ),
        };
        let s = cell.layer - 1;
        let gather = |geom: &TraceGeometry, cells: &[OpenedCell], layer: u32| -> Vec<u8> {
            let mut out = Vec::new();
            for r in &checked {
                out.extend(gather_rows(geom, cells, opened_cell, layer, r.clone()));
            }
            out
        };
        let mut inputs = Vec::new();
        for r in &checked {
            inputs.extend(gather_rows(g, &self.kept, kept_cell, s, r.clone()));
        }
        let context = gather(ctx_g, &sub.context, s);
        let kv: Vec<Vec<u8>> = (0..kv_heads)
            .map(|group| {
                let layer = s * kv_heads + group;
                match &drawn {
                    Some(d) if !d.reads_group(group, h, kv_heads) => gather(kv_g, &sub.kv, layer),
                    _ => gather_rows(kv_g, &sub.kv, opened_cell, layer, input_rows.clone()),
                }
            })
            .collect();
        let cell_values = rows_of(cell_g, &sub.cell, opened_cell, s, rows.clone());
        let claim = HeadClaim {
            layer: cell.layer,
            rows,
            input_rows,
            heads,
            checked: &checked,
            inputs: &inputs,
            context: &context,
            kv: &kv,
            cell: &cell_values,
        };
        self.recompute
            .check_sublayer_heads(statement, &claim)
            .map_err(failed)
    }

    /// Steps 5-6 for challenged cell `cell`, from the kept cells (and the sub-layer values).
    fn check_cell(
        &self,
        cell: CellId,
        sublayers: Option<&SubLayerOpening>,
    ) -> std::result::Result<(), RejectReason> {
        let statement = &self.commitment.statement;
        let g = &statement.geometry;
        let recompute = self.recompute;
        let row_len = g.row_byte_len();
        let rows = g.cell_rows(cell).map_err(|e| bad_statement(e.into()))?;
        let failed = |e: ProtocolError| RejectReason::RecomputeFailed {
            cell,
            detail: e.to_string(),
        };
        // every challenged cell is in the opening (step 1), which is sorted
        let Ok(at) = self.kept.binary_search_by_key(&cell, |(c, _)| *c) else {
            return Err(RejectReason::MissingCell { cell });
        };
        let claimed = &self.kept[at].1;
        let compare = |recomputed: &[u8]| -> std::result::Result<(), RejectReason> {
            if recomputed.len() != claimed.len() {
                return Err(failed(ProtocolError::Engine(format!(
                    "the engine returned {} bytes for a cell of {} bytes",
                    recomputed.len(),
                    claimed.len()
                ))));
            }
            self.tolerance
                .check(cell.layer, g.dtype, claimed, recomputed)
                .map_err(failed)?
                .map_err(|violation| RejectReason::Tolerance { cell, violation })?;
            Ok(())
        };
        match statement.input_rows(cell).map_err(bad_statement)? {
            None => compare(&recompute.embed(statement, rows.clone()).map_err(failed)?)?,
            Some(input_rows) => {
                // every input row (a drawn opening, checked by head, has only some)
                let inputs =
                    || gather_rows(g, &self.kept, kept_cell, cell.layer - 1, input_rows.clone());
                if self.method.recomputes() {
                    let recomputed = recompute
                        .layer(
                            statement,
                            cell.layer,
                            rows.clone(),
                            input_rows.clone(),
                            &inputs(),
                        )
                        .map_err(failed)?;
                    compare(&recomputed)?;
                }
                if self.method.checks_sublayers() && statement.trace_level.heads().is_some() {
                    let sub = sublayers.ok_or(RejectReason::MissingCell { cell })?;
                    match self.check_by_head(cell, rows.clone(), input_rows, sub)? {
                        AlgebraicCheck::Output(output) => compare(&output)?,
                        AlgebraicCheck::Failed(detail) => {
                            return Err(RejectReason::AlgebraicCheck { cell, detail })
                        }
                    }
                } else if self.method.checks_sublayers() {
                    let sub = sublayers.ok_or(RejectReason::MissingCell { cell })?;
                    let (ctx_g, cell_g) = match &self.sub_required[..] {
                        [(_, a, _), (_, b, _)] => (a, b),
                        _ => return Err(RejectReason::MissingCell { cell }),
                    };
                    let context = gather_rows(
                        ctx_g,
                        &sub.context,
                        opened_cell,
                        cell.layer - 1,
                        input_rows.clone(),
                    );
                    let cell_values =
                        rows_of(cell_g, &sub.cell, opened_cell, cell.layer - 1, rows.clone());
                    match recompute
                        .check_sublayers(
                            statement,
                            cell.layer,
                            rows.clone(),
                            input_rows.clone(),
                            &inputs(),
                            &context,
                            &cell_values,
                        )
                        .map_err(failed)?
                    {
                        AlgebraicCheck::Output(output) => compare(&output)?,
                        AlgebraicCheck::Failed(detail) => {
                            return Err(RejectReason::AlgebraicCheck { cell, detail })
                        }
                    }
                }
            }
        }

        if cell.layer + 1 == g.layers {
            for (i, position) in rows.clone().enumerate() {
                let Some(claimed_token) = statement.predicted_output(position) else {
                    continue;
                };
                let row = &claimed[i * row_len..(i + 1) * row_len];
                // under a threshold policy (cross-engine noise accepted) a greedy token the
                // precision's rounding cannot tell from the argmax is accepted too
                let near_tie = matches!(self.tolerance, TolerancePolicy::Threshold(_))
                    && matches!(statement.output_rule, crate::OutputRule::Greedy)
                    && recompute
                        .token_within_rounding(statement, position, row, claimed_token)
                        .map_err(failed)?;
                if near_tie {
                    continue;
                }
                let token = recompute
                    .next_token(statement, position, row)
                    .map_err(failed)?;
                if token != claimed_token {
                    return Err(RejectReason::OutputTokenMismatch {
                        position,
                        claimed: claimed_token,
                        recomputed: token,
                    });
                }
            }
        }
        Ok(())
    }
}

/// A rejection for a statement the verifier cannot check (over a limit, or inconsistent).
fn bad_statement(e: ProtocolError) -> RejectReason {
    RejectReason::GeometryMismatch {
        detail: e.to_string(),
    }
}

/// Step 2 for one cell of tree `g`: its byte length (reported in hidden-trace coordinates,
/// `shift` layers up for a sub-layer tree); then its leaf index and digest.
fn cell_leaf(
    g: &TraceGeometry,
    statement: &Statement,
    cell: CellId,
    data: &[u8],
    part: Option<SubLayerPart>,
) -> std::result::Result<(u64, veritrace_commit::Digest), RejectReason> {
    let bad = |e: veritrace_commit::CommitError| RejectReason::GeometryMismatch {
        detail: e.to_string(),
    };
    let range = g.cell_byte_range(cell).map_err(bad)?;
    if data.len() != range.len() {
        return Err(RejectReason::WrongCellLength {
            cell: match part {
                None => cell,
                Some(part) => hidden_cell(statement, part, cell),
            },
            expected: range.len() as u64,
            got: data.len() as u64,
        });
    }
    let leaf = g.hash_cell(&statement.hasher, cell, data).map_err(bad)?;
    let index = g.cell_index(cell).map_err(bad)?;
    Ok((index, leaf))
}

/// The hidden cell a sub-layer cell of `part` belongs to, for reports: sub-layer `s` is hidden
/// layer `s + 1`; the key-value trace's layer `s · g + h` is sub-layer `s`.
fn hidden_cell(statement: &Statement, part: SubLayerPart, cell: CellId) -> CellId {
    let per = match part {
        SubLayerPart::Kv => statement.trace_level.heads().map_or(1, |(_, g)| g.max(1)),
        SubLayerPart::Context | SubLayerPart::Cell => 1,
    };
    CellId {
        layer: cell.layer / per + 1,
        chunk: cell.chunk,
    }
}

/// Step 3 for one tree: the batch proof opens `leaves` under `root` (a tree of `size` leaves).
fn check_leaves(
    statement: &Statement,
    root: &veritrace_commit::Digest,
    size: u64,
    leaves: &[(u64, veritrace_commit::Digest)],
    proof: &BatchProof,
    faults: Faults,
) -> std::result::Result<(), RejectReason> {
    if leaves.is_empty() {
        // a sub-layer part with no cell (a challenge of layer-0 cells only) has an empty proof
        if !proof.siblings.is_empty() {
            return Err(RejectReason::BadProof {
                detail: format!(
                    "a proof of no cells has no siblings, this one has {}",
                    proof.siblings.len()
                ),
            });
        }
        return Ok(());
    }
    if !faults.skip_proof_check {
        verify_batch(&statement.hasher, root, size, leaves, proof).map_err(|e| {
            RejectReason::BadProof {
                detail: e.to_string(),
            }
        })?;
    }
    Ok(())
}

/// Steps 2-3 for a tree whose cells are all at hand (a sub-layer part): every opened cell has
/// its shape's byte length, and the batch proof opens their leaves under `root`.
fn check_cells_against_root(
    g: &TraceGeometry,
    statement: &Statement,
    part: SubLayerPart,
    root: &veritrace_commit::Digest,
    cells: &[OpenedCell],
    proof: &BatchProof,
    faults: Faults,
) -> std::result::Result<(), RejectReason> {
    let leaves = cells
        .iter()
        .map(|oc| cell_leaf(g, statement, oc.cell, &oc.data, Some(part)))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    check_leaves(statement, root, g.num_cells(), &leaves, proof, faults)
}

/// A kept cell's position and bytes (for [`gather_rows`]).
fn kept_cell<'c>(c: &'c CellBytes<'_>) -> (CellId, &'c [u8]) {
    (c.0, &c.1)
}

/// An opened cell's position and bytes (for [`gather_rows`]).
fn opened_cell(c: &OpenedCell) -> (CellId, &[u8]) {
    (c.cell, &c.data)
}

/// Concatenates rows `rows` of `layer` from the opened cells (all present and sorted: checked
/// before), visiting only the opened cells that cover them.
fn gather_rows<C>(
    g: &TraceGeometry,
    cells: &[C],
    part: fn(&C) -> (CellId, &[u8]),
    layer: u32,
    rows: Range<u32>,
) -> Vec<u8> {
    let row_len = g.row_byte_len();
    let mut out = Vec::with_capacity((rows.end - rows.start) as usize * row_len);
    let first = CellId {
        layer,
        chunk: rows.start / g.chunk,
    };
    let start = cells.partition_point(|c| part(c).0 < first);
    for (cell, data) in cells[start..]
        .iter()
        .map(part)
        .take_while(|(cell, _)| cell.layer == layer)
    {
        let Ok(cell_rows) = g.cell_rows(cell) else {
            break;
        };
        if cell_rows.start >= rows.end {
            break;
        }
        let lo = rows.start.max(cell_rows.start);
        let hi = rows.end.min(cell_rows.end);
        if lo < hi {
            let a = (lo - cell_rows.start) as usize * row_len;
            let b = (hi - cell_rows.start) as usize * row_len;
            out.extend_from_slice(&data[a..b]);
        }
    }
    out
}

/// [`gather_rows`] without a copy where `rows` lie in one cell (a challenged cell's own rows):
/// that cell's bytes, borrowed.
fn rows_of<'a, C>(
    g: &TraceGeometry,
    cells: &'a [C],
    part: fn(&C) -> (CellId, &[u8]),
    layer: u32,
    rows: Range<u32>,
) -> std::borrow::Cow<'a, [u8]> {
    let row_len = g.row_byte_len();
    let first = CellId {
        layer,
        chunk: rows.start / g.chunk,
    };
    let at = cells.partition_point(|c| part(c).0 < first);
    if let Some((id, data)) = cells.get(at).map(part) {
        if let Ok(cell_rows) = g.cell_rows(id) {
            let a = rows.start.saturating_sub(cell_rows.start) as usize * row_len;
            let b = rows.end.saturating_sub(cell_rows.start) as usize * row_len;
            if id == first && rows.end <= cell_rows.end && a <= b && b <= data.len() {
                return std::borrow::Cow::Borrowed(&data[a..b]);
            }
        }
    }
    std::borrow::Cow::Owned(gather_rows(g, cells, part, layer, rows))
}

fn first_non_finite(dtype: Dtype, data: &[u8]) -> Option<u64> {
    // a partial element is a length error found elsewhere, not a value
    if dtype == Dtype::I8 || !data.len().is_multiple_of(dtype.size()) {
        return None;
    }
    crate::tolerance::first_non_finite_bytes(dtype, data).map(|i| i as u64)
}

#[cfg(test)]
mod tests {
    //! The opening check discovers failures as cells arrive; these tests compare its verdicts
    //! with the same check evaluated in the order of the steps (every cell kept, challenged
    //! cells checked after the tail, as the decoded opening was checked before streaming), and
    //! bound what it keeps.

    use rand_chacha::ChaCha20Rng;
    use rand_core::{RngCore, SeedableRng};
    use veritrace_commit::{Digest, HasherId};

    use super::*;
    use crate::toy::ToyEngine;
    use crate::{Dependency, OutputRule, Prover, PROTOCOL_VERSION};

    fn statement(dependency: Dependency, layers: u32, chunk: u32) -> Statement {
        let n_out = if dependency == Dependency::Bidirectional {
            0
        } else {
            5
        };
        let input: Vec<u32> = (0..14 - n_out as u32).map(|i| 3 + 7 * i).collect();
        let output = ToyEngine::default()
            .generate(dependency, layers, 4, &input, n_out)
            .unwrap();
        Statement {
            version: PROTOCOL_VERSION,
            model_digest: Digest([0xab; 32]),
            setup: b"toy/f32".to_vec(),
            geometry: TraceGeometry::new(layers, 14, 4, chunk, Dtype::F32).unwrap(),
            input_tokens: input,
            output_tokens: output,
            hasher: HasherId::Blake3,
            dependency,
            output_rule: OutputRule::Greedy,
            input_text: None,
            engine: None,
            trace_level: TraceLevel::Hidden,
        }
    }

    /// The verdict with challenged cells checked on arrival (`on_arrival`) or in step order,
    /// and the most layers the check kept at once.
    fn verdict(
        commitment: &Commitment,
        challenged: &[CellId],
        opening: &Opening,
        tolerance: &TolerancePolicy,
        on_arrival: bool,
    ) -> (std::result::Result<(), RejectReason>, u32) {
        let engine = ToyEngine::default();
        let mut check = match OpeningCheck::start(
            commitment,
            (challenged, None),
            tolerance,
            LayerCheck::Recompute,
            &engine,
            &VerifierLimits::default(),
            Faults::default(),
        ) {
            Ok(check) => check,
            Err(reason) => return (Err(reason), 0),
        };
        check.on_arrival &= on_arrival;
        let mut most = 0;
        for oc in &opening.cells {
            check.cell(oc.cell, Cow::Borrowed(&oc.data));
            if let (Some(first), Some(last)) = (check.kept.first(), check.kept.last()) {
                most = most.max(last.0.layer - first.0.layer + 1);
            }
        }
        (
            check.finish(&opening.proof, opening.sublayers.as_ref()),
            most,
        )
    }

    /// A random trace change before the commitment (a cheat the proof covers) or a random
    /// change of the opening after it (one the proof may not cover).
    fn tamper(
        s: &Statement,
        trace: &mut [Vec<u8>],
        opening: Option<&mut Opening>,
        r: &mut ChaCha20Rng,
    ) {
        let pick = |r: &mut ChaCha20Rng, n: usize| (r.next_u32() as usize) % n.max(1);
        match opening {
            None => {
                let l = pick(r, trace.len());
                let i = pick(r, trace[l].len() / 4) * 4;
                let v = match r.next_u32() % 4 {
                    0 => f32::NAN,
                    1 => f32::INFINITY,
                    2 => 1e3,
                    _ => f32::from_le_bytes(trace[l][i..i + 4].try_into().unwrap()) + 1e-3,
                };
                trace[l][i..i + 4].copy_from_slice(&v.to_le_bytes());
            }
            Some(o) => match r.next_u32() % 6 {
                0 if !o.cells.is_empty() => {
                    let c = pick(r, o.cells.len());
                    let b = pick(r, o.cells[c].data.len());
                    o.cells[c].data[b] ^= 1 << (r.next_u32() % 8);
                }
                1 if !o.cells.is_empty() => {
                    let c = pick(r, o.cells.len());
                    o.cells.remove(c);
                }
                2 if o.cells.len() > 1 => {
                    let c = pick(r, o.cells.len() - 1);
                    o.cells.swap(c, c + 1);
                }
                3 if !o.cells.is_empty() => {
                    let c = pick(r, o.cells.len());
                    o.cells[c].data.truncate(4);
                }
                4 if !o.proof.siblings.is_empty() => {
                    let c = pick(r, o.proof.siblings.len());
                    o.proof.siblings[c].0[0] ^= 1;
                }
                _ => {
                    let c = pick(r, o.cells.len());
                    let extra = CellId {
                        layer: (r.next_u32() % s.geometry.layers),
                        chunk: (r.next_u32() % s.geometry.chunks_per_layer()),
                    };
                    o.cells.insert(
                        c,
                        OpenedCell {
                            cell: extra,
                            data: vec![0; s.geometry.row_byte_len()],
                        },
                    );
                }
            },
        }
    }

    #[test]
    fn failures_found_on_arrival_give_the_verdict_of_the_steps_in_order() {
        let mut r = ChaCha20Rng::from_seed([7; 32]);
        let mut rejected = 0;
        for case in 0..600u32 {
            let dependency = match case % 3 {
                0 => Dependency::Causal,
                1 => Dependency::Bidirectional,
                _ => Dependency::Window { size: 5 },
            };
            let s = statement(dependency, 2 + case % 4, 1 + case % 4);
            let mut trace = ToyEngine::default().trace_bytes(&s).unwrap();
            for _ in 0..r.next_u32() % 4 {
                tamper(&s, &mut trace, None, &mut r);
            }
            let mut prover = Prover::new(s.clone(), trace).unwrap();
            let commitment = prover.commit().unwrap();
            let seed = {
                let mut seed = [0u8; 32];
                r.fill_bytes(&mut seed);
                seed
            };
            let challenged = sample_cells(
                &s,
                1 + r.next_u32() % 4,
                crate::SamplingStrategy::Uniform,
                seed,
            )
            .unwrap();
            let mut opening = prover.open_cells(0, &challenged, 0).unwrap();
            // a third of the openings are changed after the commitment
            for _ in 0..(r.next_u32() % 6).saturating_sub(3) {
                tamper(&s, &mut [], Some(&mut opening), &mut r);
            }
            let tolerance = if case % 2 == 0 {
                TolerancePolicy::Exact
            } else {
                TolerancePolicy::Threshold(crate::tolerance::ThresholdPolicy::new(
                    crate::tolerance::Metric::MaxAbs,
                    crate::tolerance::PerLayer {
                        default: 1e-2,
                        overrides: Default::default(),
                    },
                ))
            };
            let (streamed, most) = verdict(&commitment, &challenged, &opening, &tolerance, true);
            let (in_order, _) = verdict(&commitment, &challenged, &opening, &tolerance, false);
            assert_eq!(streamed, in_order, "case {case}");
            assert!(most <= 2, "case {case}: kept {most} layers");
            rejected += usize::from(streamed.is_err());
        }
        // both kinds of outcome occur, many times
        assert!((100..500).contains(&rejected), "{rejected} of 600 rejected");
    }
}

//! # veritrace-protocol
//!
//! The commit-challenge-reveal protocol by which a verifier checks an inference it did not run.
//! The crate knows no inference engine: the verifier asks a [`Recompute`] implementation for the
//! cells it samples, so other verifiers can embed it with their own engine.
//!
//! * [`Statement`]: what the prover claims (model digest, setup, tokens, trace geometry, hasher,
//!   attention [`Dependency`], [`OutputRule`]).
//! * Messages: [`Commitment`], [`Challenge`], [`Opening`], [`Verdict`] (with a typed
//!   [`RejectReason`]); JSON and a strict binary form through [`Message`].
//! * [`Prover`] and [`Verifier`]: explicit state machines; interactive or non-interactive
//!   ([`transcript`]: merlin, with optional proof of work) over one or more rounds.
//!   [`verify_recorded`] decides a recorded session (files) through the same state machine;
//!   [`verify_recorded_streams`] does so reading each opening as it arrives ([`stream`]),
//!   checking cells as they are read and keeping only what later checks need.
//! * [`VerifierLimits`]: the verifier's explicit resource limits, checked before anything
//!   proportional to a prover's claim is allocated, so that its time and memory are
//!   O(k × opened cell bytes + k log k + log N) whatever the prover claims.
//! * [`sampling`]: portable cell sampling (uniform, stratified, cost-weighted) from a seed.
//! * [`tolerance`]: exact, max-abs, relative-L2 and noise-floor policies, and calibration.
//! * [`calibration`]: thresholds from independent honest runs (upper confidence bounds on a
//!   quantile, a rounding floor, held-out evidence) and the calibrated policy file.
//! * [`soundness`]: miss probabilities, samples needed, security against grinding.
//!
//! The normative description is `specs/protocol.md`.

#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod calibration;
pub mod encoding;
mod error;
mod messages;
mod prover;
pub mod sampling;
pub mod soundness;
mod statement;
pub mod stream;
pub mod tolerance;
pub mod toy;
pub mod transcript;
mod verifier;

pub use encoding::{Message, MessageKind};
pub use error::{ProtocolError, Result};
pub use messages::{
    AttentionDraw, Challenge, Commitment, OpenedCell, Opening, RejectReason, SubLayerOpening,
    SubLayerRoots, Verdict,
};
pub use prover::{Prover, ProverState};
pub use sampling::SamplingStrategy;
pub use statement::{
    CellRange, Dependency, InputText, OutputRule, Statement, SubLayerPart, TraceLevel,
    MAX_ENGINE_BYTES, MAX_INPUT_TEXT_BYTES, PROTOCOL_VERSION,
};
pub use transcript::{AttentionSample, ChallengeParams};
pub use verifier::{
    check_opening, check_opening_by, check_opening_drawn, check_opening_with_limits, no_text_input,
    verify_recorded, verify_recorded_streams, verify_recorded_with_limits, AlgebraicCheck, Faults,
    HeadClaim, LayerCheck, Mode, Recompute, Step, Verifier, VerifierConfig, VerifierLimits,
    VerifierState,
};

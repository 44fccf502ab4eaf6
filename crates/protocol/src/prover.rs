//! The prover's side: commit once, then answer each round's challenge.
//!
//! ```text
//! Ready ──commit()──▶ Committed ──open(challenge r)──▶ Committed (next round r + 1)
//! ```
//!
//! A commitment is produced exactly once, before any challenge: calling [`Prover::commit`]
//! again fails with [`ProtocolError::OutOfOrder`], so a prover cannot commit after seeing a
//! challenge through this API (the "late commitment" attack is an API error, and a simulator can
//! report the attempt). Opening before committing, or answering rounds out of order, fails the
//! same way.

use veritrace_commit::{commit_trace, CellId, CommitError, Digest, MerkleTree};

use crate::encoding::Message;
use crate::transcript::{derive_challenge, find_pow_nonce, ChallengeParams};
use crate::{
    Challenge, Commitment, OpenedCell, Opening, ProtocolError, Result, Statement, SubLayerOpening,
    SubLayerPart, SubLayerRoots, TraceLevel,
};

/// The prover's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProverState {
    /// The trace is committed locally; nothing has been sent.
    Ready,
    /// The commitment was sent; `next_round` is the round the next opening answers.
    Committed {
        /// Next round to answer.
        next_round: u32,
        /// Non-interactive mode: the session's proof-of-work nonce and the parameters it was
        /// found for (searched once, reused by every round).
        session: Option<(ChallengeParams, u64)>,
    },
}

impl ProverState {
    fn name(&self) -> &'static str {
        match self {
            ProverState::Ready => "ready",
            ProverState::Committed { .. } => "committed",
        }
    }
}

/// An honest prover holding a trace in memory (`layers[l]`: layer `l`'s little-endian elements,
/// row-major `[tokens, hidden]`; any byte container, e.g. `Vec<u8>` or a memory-mapped slice).
#[derive(Debug)]
pub struct Prover<L> {
    statement: Statement,
    layers: Vec<L>,
    tree: MerkleTree,
    sublayers: Option<SubLayerTraces<L>>,
    state: ProverState,
}

/// The sub-layer traces of a sub-layer statement and their trees, in the order of
/// [`TraceLevel::parts`].
#[derive(Debug)]
struct SubLayerTraces<L> {
    parts: Vec<(SubLayerPart, Vec<L>, MerkleTree)>,
}

impl<L> SubLayerTraces<L> {
    fn part(&self, part: SubLayerPart) -> Option<(&[L], &MerkleTree)> {
        self.parts
            .iter()
            .find(|(p, _, _)| *p == part)
            .map(|(_, layers, tree)| (&layers[..], tree))
    }
}

impl<L: AsRef<[u8]> + Sync> Prover<L> {
    /// Validates the statement against the trace and builds the Merkle tree (cells hashed in
    /// parallel).
    pub fn new(statement: Statement, layers: Vec<L>) -> Result<Self> {
        statement.validate()?;
        let refs: Vec<&[u8]> = layers.iter().map(AsRef::as_ref).collect();
        let tree = commit_trace(statement.hasher, &statement.geometry, &refs)?;
        Ok(Prover {
            statement,
            layers,
            tree,
            sublayers: None,
            state: ProverState::Ready,
        })
    }

    /// Adds the sub-layer traces of a [`TraceLevel::SubLayer`] statement (specs/protocol.md
    /// §3.5): `context[s]` and `cell[s]` hold sub-layer `s` (hidden layer `s + 1`), f32
    /// little-endian, row-major `[tokens, width]`. Builds their trees. Required before
    /// [`Prover::commit`] for such a statement; refused for a hidden-only statement, after the
    /// commitment, or with the wrong shapes.
    pub fn with_sublayers(self, context: Vec<L>, cell: Vec<L>) -> Result<Self> {
        self.with_sublayer_parts(vec![
            (SubLayerPart::Context, context),
            (SubLayerPart::Cell, cell),
        ])
    }

    /// [`Prover::with_sublayers`] for a [`TraceLevel::SubLayerByHead`] statement: also the
    /// key-value trace, `kv[s · g + h]` holding sub-layer `s`'s key-value head `h`.
    pub fn with_sublayers_by_head(self, context: Vec<L>, kv: Vec<L>, cell: Vec<L>) -> Result<Self> {
        self.with_sublayer_parts(vec![
            (SubLayerPart::Context, context),
            (SubLayerPart::Kv, kv),
            (SubLayerPart::Cell, cell),
        ])
    }

    /// Adds the sub-layer traces of any sub-layer statement, one per part of
    /// [`TraceLevel::parts`], in that order.
    pub fn with_sublayer_parts(mut self, parts: Vec<(SubLayerPart, Vec<L>)>) -> Result<Self> {
        if self.state != ProverState::Ready {
            return Err(ProtocolError::OutOfOrder {
                state: self.state.name(),
                message: "sub-layer traces after the commitment",
            });
        }
        let want = self.statement.trace_level.parts();
        if want.is_empty() {
            return Err(ProtocolError::InvalidParameter(
                "the statement commits hidden states only: it has no sub-layer traces".into(),
            ));
        }
        if parts.len() != want.len() || parts.iter().zip(want).any(|((p, _), w)| p != w) {
            return Err(ProtocolError::InvalidParameter(format!(
                "the statement's sub-layer traces are {:?}; given {:?}",
                want.iter().map(|p| p.name()).collect::<Vec<_>>(),
                parts.iter().map(|(p, _)| p.name()).collect::<Vec<_>>()
            )));
        }
        let mut built = Vec::with_capacity(parts.len());
        for (part, layers) in parts {
            let Some(g) = self.statement.sublayer_geometry(part)? else {
                return Err(ProtocolError::InvalidParameter(format!(
                    "the statement has no {} sub-layer trace",
                    part.name()
                )));
            };
            let refs: Vec<&[u8]> = layers.iter().map(AsRef::as_ref).collect();
            let tree = commit_trace(self.statement.hasher, &g, &refs)?;
            built.push((part, layers, tree));
        }
        self.sublayers = Some(SubLayerTraces { parts: built });
        Ok(self)
    }

    /// A prover whose cells were already hashed elsewhere — on the GPU that produced the trace,
    /// as the layers finished — so building it only combines the `leaves` into the tree.
    ///
    /// `leaves` must be the leaf digests of the statement's cells, layer-major, computed with
    /// its hasher from exactly these `layers` (the caller vouches for that; the device backend
    /// tests that its digests equal [`commit_trace`]'s). The counts and lengths are checked: a
    /// wrong number of leaves or a layer of the wrong length is an error. A leaf that does not
    /// match its cell is not detected here; every opening of that cell then fails at the
    /// verifier.
    pub fn with_leaves(statement: Statement, layers: Vec<L>, leaves: Vec<Digest>) -> Result<Self> {
        statement.validate()?;
        let g = &statement.geometry;
        if layers.len() != g.layers as usize {
            return Err(ProtocolError::Commit(CommitError::InvalidGeometry(
                format!(
                    "geometry has {} layers but {} were given",
                    g.layers,
                    layers.len()
                ),
            )));
        }
        for l in &layers {
            if l.as_ref().len() != g.layer_byte_len() {
                return Err(ProtocolError::Commit(CommitError::WrongLength {
                    what: "layer",
                    expected: g.layer_byte_len() as u64,
                    got: l.as_ref().len() as u64,
                }));
            }
        }
        if leaves.len() as u64 != g.num_cells() {
            return Err(ProtocolError::Commit(CommitError::WrongLength {
                what: "leaf digests",
                expected: g.num_cells(),
                got: leaves.len() as u64,
            }));
        }
        let tree = MerkleTree::from_leaf_digests(statement.hasher, leaves)?;
        Ok(Prover {
            statement,
            layers,
            tree,
            sublayers: None,
            state: ProverState::Ready,
        })
    }

    /// The statement.
    pub fn statement(&self) -> &Statement {
        &self.statement
    }

    /// The state machine's state.
    pub fn state(&self) -> ProverState {
        self.state
    }

    /// The Merkle tree over the trace.
    pub fn tree(&self) -> &MerkleTree {
        &self.tree
    }

    /// Sends the commitment. Only once, and only before any challenge.
    pub fn commit(&mut self) -> Result<Commitment> {
        if self.state != ProverState::Ready {
            return Err(ProtocolError::OutOfOrder {
                state: self.state.name(),
                message: "commitment (a prover commits once, before any challenge)",
            });
        }
        if self.statement.trace_level != TraceLevel::Hidden && self.sublayers.is_none() {
            return Err(ProtocolError::InvalidParameter(
                "the statement commits sub-layer values: add them (Prover::with_sublayers) \
                 before committing"
                    .into(),
            ));
        }
        self.state = ProverState::Committed {
            next_round: 0,
            session: None,
        };
        Ok(self.commitment())
    }

    fn commitment(&self) -> Commitment {
        Commitment {
            statement: self.statement.clone(),
            root: self.tree.root(),
            sublayer_roots: self.sublayers.as_ref().map(|s| {
                let root = |p| s.part(p).map(|(_, tree)| tree.root());
                SubLayerRoots {
                    context: root(SubLayerPart::Context).unwrap_or_default(),
                    cell: root(SubLayerPart::Cell).unwrap_or_default(),
                    kv: root(SubLayerPart::Kv),
                }
            }),
        }
    }

    fn expect_round(&self, round: u32) -> Result<()> {
        match self.state {
            ProverState::Committed { next_round, .. } if next_round == round => Ok(()),
            _ => Err(ProtocolError::OutOfOrder {
                state: self.state.name(),
                message: "challenge for another round",
            }),
        }
    }

    /// Answers an interactive challenge.
    pub fn open(&mut self, challenge: &Challenge) -> Result<Opening> {
        challenge.validate()?;
        self.expect_round(challenge.round)?;
        let opening = self.open_drawn(
            challenge.round,
            &challenge.cells,
            challenge.attention.as_ref(),
            0,
        )?;
        self.state = ProverState::Committed {
            next_round: challenge.round + 1,
            session: None,
        };
        Ok(opening)
    }

    /// Answers the next non-interactive round: on the first round searches the session's
    /// proof-of-work nonce (reused by later rounds), derives the round's challenge from the
    /// transcript and opens it. Returns the challenge too. Every round must use the same
    /// parameters.
    pub fn open_non_interactive(
        &mut self,
        params: &ChallengeParams,
    ) -> Result<(Challenge, Opening)> {
        let ProverState::Committed {
            next_round,
            session,
        } = self.state
        else {
            return Err(ProtocolError::OutOfOrder {
                state: self.state.name(),
                message: "opening before the commitment",
            });
        };
        let commitment = self.commitment();
        let nonce = match session {
            Some((p, nonce)) if p == *params => nonce,
            Some(_) => {
                return Err(ProtocolError::InvalidParameter(
                    "the challenge parameters changed within a session".into(),
                ))
            }
            None => find_pow_nonce(&commitment, params)?,
        };
        let challenge = derive_challenge(&commitment, next_round, params, nonce)?;
        let opening = self.open_drawn(
            next_round,
            &challenge.cells,
            challenge.attention.as_ref(),
            nonce,
        )?;
        self.state = ProverState::Committed {
            next_round: next_round + 1,
            session: Some((*params, nonce)),
        };
        Ok((challenge, opening))
    }

    /// Builds an opening of `challenged` (plus their input cells) without touching the state:
    /// the building block of [`Prover::open`], public for simulators of cheating provers.
    pub fn open_cells(&self, round: u32, challenged: &[CellId], pow_nonce: u64) -> Result<Opening> {
        self.open_drawn(round, challenged, None, pow_nonce)
    }

    /// [`Prover::open_cells`] under a challenge's attention draw (specs/protocol.md §4.4):
    /// the cells of [`Statement::opening_ranges_drawn`] and, per sub-layer trace,
    /// [`Statement::sublayer_ranges_drawn`].
    pub fn open_drawn(
        &self,
        round: u32,
        challenged: &[CellId],
        draw: Option<&crate::AttentionDraw>,
        pow_nonce: u64,
    ) -> Result<Opening> {
        let g = &self.statement.geometry;
        let runs = self.statement.opening_ranges_drawn(challenged, draw)?;
        let mut indices = Vec::new();
        let mut opened = Vec::new();
        for cell in runs.iter().flat_map(crate::CellRange::cells) {
            indices.push(g.cell_index(cell)?);
            let range = g.cell_byte_range(cell)?;
            opened.push(OpenedCell {
                cell,
                data: self.layers[cell.layer as usize].as_ref()[range].to_vec(),
            });
        }
        let sublayers = match &self.sublayers {
            None => None,
            Some(sub) => {
                let open = |part| -> Result<(Vec<OpenedCell>, veritrace_commit::BatchProof)> {
                    match sub.part(part) {
                        Some((layers, tree)) => {
                            self.open_sublayer(challenged, draw, part, layers, tree)
                        }
                        None => Ok((Vec::new(), veritrace_commit::BatchProof::default())),
                    }
                };
                let (context, context_proof) = open(SubLayerPart::Context)?;
                let (cell, cell_proof) = open(SubLayerPart::Cell)?;
                let (kv, kv_proof) = open(SubLayerPart::Kv)?;
                Some(SubLayerOpening {
                    context,
                    context_proof,
                    cell,
                    cell_proof,
                    kv,
                    kv_proof,
                })
            }
        };
        Ok(Opening {
            round,
            cells: opened,
            proof: self.tree.prove(&indices)?,
            pow_nonce,
            sublayers,
        })
    }

    fn open_sublayer(
        &self,
        challenged: &[CellId],
        draw: Option<&crate::AttentionDraw>,
        part: SubLayerPart,
        layers: &[L],
        tree: &MerkleTree,
    ) -> Result<(Vec<OpenedCell>, veritrace_commit::BatchProof)> {
        let g = self
            .statement
            .sublayer_geometry(part)?
            .ok_or_else(|| ProtocolError::InvalidParameter("no sub-layer trace".into()))?;
        let runs = self
            .statement
            .sublayer_ranges_drawn(challenged, part, draw)?;
        let mut indices = Vec::new();
        let mut opened = Vec::new();
        for cell in runs.iter().flat_map(crate::CellRange::cells) {
            indices.push(g.cell_index(cell)?);
            let range = g.cell_byte_range(cell)?;
            opened.push(OpenedCell {
                cell,
                data: layers[cell.layer as usize].as_ref()[range].to_vec(),
            });
        }
        // a challenge of layer-0 cells only opens no sub-layer cell: an empty proof
        let proof = if indices.is_empty() {
            veritrace_commit::BatchProof::default()
        } else {
            tree.prove(&indices)?
        };
        Ok((opened, proof))
    }
}

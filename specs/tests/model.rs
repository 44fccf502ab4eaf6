//! Model checks of the real verifier (see the crate docs): the correct verifier satisfies every
//! property, with pinned state counts; each injected defect is caught with a counterexample.

use std::time::Instant;

use stateright::{Checker, Model};
use veritrace_protocol::{Faults, Mode};
use veritrace_spec::{
    Action, Behaviour, ModelConfig, Move, Msg, OpenKind, ProtocolModel, State, TraceId,
    ACCEPTED_CELLS_SOUND, CHEATING_SOMETIMES_ACCEPTED, COMMITMENT_PRECEDES_CHALLENGE,
    EQUIVOCATION_NEVER_ACCEPTED, HONEST_ENDS_ACCEPTED, HONEST_NEVER_REJECTED,
};

type Path = stateright::Path<State, Action>;

/// Runs a full breadth-first check of `cfg` and returns the checker.
fn check(cfg: ModelConfig) -> impl Checker<ProtocolModel> {
    let start = Instant::now();
    let checker = ProtocolModel::new(cfg)
        .checker()
        .threads(2)
        .spawn_bfs()
        .join();
    eprintln!(
        "{:?} rounds={} k={} {:?}: {} unique states, depth {}, {:.0?}",
        cfg.mode,
        cfg.rounds,
        cfg.samples,
        cfg.faults,
        checker.unique_state_count(),
        checker.max_depth(),
        start.elapsed()
    );
    let mut found: Vec<&str> = checker.discoveries().into_keys().collect();
    found.sort_unstable();
    eprintln!("  discoveries: {found:?}");
    checker
}

const PROOF: Faults = Faults {
    skip_proof_check: true,
    skip_root_binding: false,
};
const ROOT: Faults = Faults {
    skip_proof_check: false,
    skip_root_binding: true,
};

/// (mode, rounds, samples, unique states) of every configuration checked.
const PINNED: [(Mode, u32, u32, usize); 8] = [
    (Mode::Interactive, 1, 1, 478),
    (Mode::Interactive, 1, 2, 1117),
    (Mode::Interactive, 2, 1, 2046),
    (Mode::Interactive, 2, 2, 7991),
    (Mode::NonInteractive, 1, 1, 134),
    (Mode::NonInteractive, 1, 2, 134),
    (Mode::NonInteractive, 2, 1, 196),
    (Mode::NonInteractive, 2, 2, 196),
];

fn config(mode: Mode, rounds: u32, samples: u32) -> ModelConfig {
    match mode {
        Mode::Interactive => ModelConfig::interactive(rounds, samples),
        Mode::NonInteractive => ModelConfig::non_interactive(rounds, samples),
    }
}

fn pinned(mode: Mode) {
    let mut expected = Vec::new();
    let mut found = Vec::new();
    for (m, rounds, samples, states) in PINNED {
        if m != mode {
            continue;
        }
        let checker = check(config(mode, rounds, samples));
        checker.assert_properties();
        expected.push((rounds, samples, states));
        found.push((rounds, samples, checker.unique_state_count()));
    }
    assert_eq!(
        found, expected,
        "{mode:?}: (rounds, k, unique states) changed"
    );
}

#[test]
fn the_interactive_verifier_satisfies_every_property() {
    pinned(Mode::Interactive);
}

#[test]
fn the_non_interactive_verifier_satisfies_every_property() {
    pinned(Mode::NonInteractive);
}

/// Openings delivered as byte streams (checked as they are read) give the same state space
/// and satisfy every property, in both modes.
#[test]
fn the_streaming_verifier_satisfies_every_property() {
    for (mode, rounds, samples, states) in PINNED {
        let checker = check(config(mode, rounds, samples).streamed());
        checker.assert_properties();
        assert_eq!(
            checker.unique_state_count(),
            states,
            "{mode:?} rounds={rounds} k={samples}: streamed openings change the state space"
        );
    }
}

#[test]
fn the_model_covers_every_challenge_and_behaviour() {
    // interactive: one coin per distinct challenge, so the checker explores all of them
    assert_eq!(
        ProtocolModel::new(ModelConfig::interactive(1, 1))
            .coins()
            .len(),
        6
    );
    assert_eq!(
        ProtocolModel::new(ModelConfig::interactive(1, 2))
            .coins()
            .len(),
        15
    );
    // honest, 6 cheat-cell, other setup, 6 + 6 + 1 equivocating, late, early, wrong round
    let m = ProtocolModel::new(ModelConfig::interactive(2, 2));
    assert_eq!(m.behaviours().len(), 24);
    // non-interactive: and the adaptive prover
    for (rounds, samples) in [(1, 1), (1, 2), (2, 1), (2, 2)] {
        let m = ProtocolModel::new(ModelConfig::non_interactive(rounds, samples));
        assert_eq!(m.behaviours().len(), 25);
        eprintln!(
            "rounds={rounds} k={samples}: predicted {:?}, adaptive trace cheats on {:?}",
            m.predicted(),
            m.adaptive_cheats()
        );
    }
}

fn discovery(checker: &impl Checker<ProtocolModel>, name: &'static str) -> Path {
    let path = checker
        .discovery(name)
        .unwrap_or_else(|| panic!("no counterexample to {name:?}"));
    eprintln!("counterexample to {name:?}:\n{path}messages delivered:");
    for d in &path.last_state().log {
        eprintln!("  {:?} (verifier before: {:?})", d.msg, d.before);
    }
    eprintln!("  verifier: {:?}", path.last_state().verifier);
    path
}

fn planned_opening_delivered(s: &State) -> bool {
    s.log.iter().any(|d| {
        matches!(
            d.msg,
            Msg::Open {
                kind: OpenKind::Planned,
                ..
            }
        )
    })
}

#[test]
fn skipping_the_proof_check_lets_equivocation_through() {
    // decoded and streamed openings alike: the streaming check honours the same defect
    for cfg in [
        ModelConfig::interactive(1, 1),
        ModelConfig::interactive(2, 2),
        ModelConfig::non_interactive(1, 2),
        ModelConfig::non_interactive(2, 1),
        ModelConfig::interactive(2, 2).streamed(),
        ModelConfig::non_interactive(2, 1).streamed(),
    ] {
        let checker = check(cfg.with_faults(PROOF));
        for name in [EQUIVOCATION_NEVER_ACCEPTED, ACCEPTED_CELLS_SOUND] {
            let path = discovery(&checker, name);
            let last = path.last_state();
            assert!(last.accepted());
            // the counterexample opens a cell other than the committed one
            assert!(
                matches!(
                    last.behaviour,
                    Some(Behaviour::EquivocateHide(_) | Behaviour::EquivocateSetup)
                ),
                "{:?}",
                last.behaviour
            );
            assert!(last.log.iter().any(|d| matches!(
                d.msg,
                Msg::Open {
                    kind: OpenKind::Tampered(_),
                    ..
                }
            )));
        }
        // the defect does not touch honest runs or the binding of the commitment
        for name in [
            HONEST_NEVER_REJECTED,
            HONEST_ENDS_ACCEPTED,
            COMMITMENT_PRECEDES_CHALLENGE,
        ] {
            assert!(checker.discovery(name).is_none(), "{name}");
        }
        assert!(checker.discovery(CHEATING_SOMETIMES_ACCEPTED).is_some());
    }
}

#[test]
fn leaving_the_root_out_lets_an_adaptive_prover_through() {
    for (rounds, samples) in [(1, 1), (1, 2), (2, 1), (2, 2)] {
        let checker = check(ModelConfig::non_interactive(rounds, samples).with_faults(ROOT));
        let path = discovery(&checker, COMMITMENT_PRECEDES_CHALLENGE);
        let last = path.last_state();
        assert!(last.accepted());
        assert_eq!(last.behaviour, Some(Behaviour::Adaptive));
        // it committed to a trace fixed after the challenge, then opened that challenge
        assert!(matches!(last.bound(), Some((_, TraceId::Adaptive, _))));
        assert!(planned_opening_delivered(last));
        assert!(path
            .into_actions()
            .contains(&Action::Send(Move::OpenPlanned)));
    }
}

#[test]
fn leaving_the_root_out_does_not_affect_interactive_sessions() {
    for (m, rounds, samples, states) in PINNED {
        if m != Mode::Interactive || rounds * samples > 2 {
            continue;
        }
        let checker = check(config(m, rounds, samples).with_faults(ROOT));
        checker.assert_properties();
        assert_eq!(checker.unique_state_count(), states);
    }
}

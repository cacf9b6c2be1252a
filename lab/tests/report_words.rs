//! The experiment's summaries on synthetic data with a known truth: identical configurations
//! are never called different; a real shift is found, with its direction and size; too few
//! rounds, fixed rates and a load generator that is the bottleneck are said out loud.

mod common;

use common::{Numbers, experiment, jitter};
use krpc_lab::{
    record::Load,
    summary::{Verdict, summarize},
    text,
};

const STRATEGIES: [&str; 4] = ["local", "global", "per-conn", "per-core"];
const CLOSED: Load = Load::CLOSED;
const RATE: Load = Load { rate: Some(3000.0) };

fn base(round: usize) -> Numbers {
    // Round-to-round drift of up to ±15%, the same for every configuration of a round.
    let drift = 1.0 + 0.15 * jitter(0, 0, round);
    Numbers {
        rpc_s: 60_000.0 * drift,
        latency_us: (300.0 * drift) as u64,
        server_cpu_us: 20.0 * drift,
        free_path_share: 0.02,
        misses_per_1k: 50.0,
    }
}

#[test]
fn identical_configurations_show_no_difference() {
    let exp = experiment(&STRATEGIES, &[CLOSED, RATE], 6, |_, _, r| base(r));
    for load in summarize(&exp) {
        for c in &load.configs {
            for cmp in &c.comparisons {
                assert_eq!(
                    cmp.verdict,
                    Verdict::NoDifference,
                    "{} {}: {}",
                    c.label,
                    cmp.figure.name,
                    cmp.describe()
                );
            }
        }
        let pairs: Vec<&String> = load
            .words
            .iter()
            .filter(|w| w.contains(" vs local"))
            .collect();
        assert_eq!(pairs.len(), 3, "{:?}", load.words);
        for w in pairs {
            assert!(w.contains(": no difference beyond noise in "), "{w}");
            assert!(!w.contains("higher") && !w.contains("lower"), "{w}");
        }
        assert!(
            !load
                .words
                .iter()
                .any(|w| w.contains("beyond noise against each")),
            "{:?}",
            load.words
        );
    }
}

#[test]
fn a_real_shift_is_found_with_its_direction_and_size() {
    // per-core (index 3): 20% more RPC/s, a quarter of the free-path share, far fewer misses;
    // the same latency. Independent noise of ±2% on every trial.
    let exp = experiment(&STRATEGIES, &[CLOSED], 6, |c, l, r| {
        let mut n = base(0);
        let noise = 1.0 + 0.02 * jitter(c, l, r);
        n.rpc_s *= noise;
        n.server_cpu_us *= noise;
        if c == 3 {
            n.rpc_s *= 1.2;
            n.free_path_share /= 4.0;
            n.misses_per_1k = 1.0;
        }
        n
    });
    let load = &summarize(&exp)[0];
    let per_core = load.configs.iter().find(|c| c.label == "per-core").unwrap();
    let verdict = |name: &str| {
        per_core
            .comparisons
            .iter()
            .find(|c| c.figure.name == name)
            .unwrap()
    };
    let rpc = verdict("RPC/s");
    assert_eq!(rpc.verdict, Verdict::Better);
    assert!(
        rpc.interval.lo > 1.1 && rpc.interval.hi < 1.3,
        "{}",
        rpc.describe()
    );
    let share = verdict("free-path share");
    assert_eq!(share.verdict, Verdict::Better);
    assert!(
        (share.interval.estimate - 0.25).abs() < 0.01,
        "{}",
        share.describe()
    );
    assert_eq!(verdict("misses/1k allocs").verdict, Verdict::Better);
    assert_eq!(verdict("p99").verdict, Verdict::NoDifference);
    let words = load.words.join("\n");
    assert!(
        words.contains("per-core vs local: higher RPC/s (x1.2"),
        "{words}"
    );
    assert!(words.contains("lower free-path share (x0.25"), "{words}");
    assert!(
        words.contains("no difference beyond noise in p50, p99, p99.9"),
        "{words}"
    );
    assert!(
        words.contains(
            "per-core has the best RPC/s of the 4 at closed loop, beyond noise against each"
        ),
        "{words}"
    );
    // The others are not called different from local.
    for c in load
        .configs
        .iter()
        .filter(|c| c.label == "global" || c.label == "per-conn")
    {
        assert!(
            c.comparisons
                .iter()
                .all(|x| x.verdict == Verdict::NoDifference),
            "{}: {:?}",
            c.label,
            c.comparisons
                .iter()
                .map(|x| x.describe())
                .collect::<Vec<_>>()
        );
    }
    // Every ratio printed carries its interval.
    let report = text::report(&exp);
    for line in report.lines() {
        for (i, _) in line.match_indices(" (x") {
            assert!(
                line[i..].contains(" ["),
                "a ratio without its interval: {line}"
            );
        }
    }
}

#[test]
fn fixed_rates_few_rounds_and_a_busy_generator_are_said_out_loud() {
    let exp = experiment(&STRATEGIES, &[RATE], 3, |_, _, r| base(r));
    let report = text::report(&exp);
    assert!(
        report.contains("With 3 rounds per configuration no difference can be established"),
        "{report}"
    );
    assert!(
        report.contains("covers 75.0%: fewer rounds than a 95% interval needs"),
        "{report}"
    );
    assert!(
        report.contains("RPC/s not shown: every round kept the asked 3000 RPC/s"),
        "{report}"
    );
    let header = report.lines().find(|l| l.starts_with("config")).unwrap();
    assert!(!header.contains("RPC/s"), "{header}");
    assert!(report.contains("SHARE CPUs"), "{report}");

    // Closed loop on shared CPUs where the generator burns more CPU than the server.
    let mut exp = experiment(&STRATEGIES, &[CLOSED], 6, |_, _, r| base(r));
    for t in &mut exp.trials {
        t.loadgen_cpu_s = Some(3.0 * t.server_cpu_s().unwrap());
    }
    let report = text::report(&exp);
    assert!(
        report.contains("WARNING: local: on shared CPUs the LOAD GENERATOR took 75%"),
        "{report}"
    );
}

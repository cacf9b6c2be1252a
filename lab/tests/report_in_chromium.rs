//! The HTML report as a person sees it: opened in headless Chromium (Debian's; scripts/test
//! installs it), the DOM after load has, per load, one spectrum line and one band per
//! configuration, one interval per configuration in each interval chart, the labels, and no
//! throughput chart at a fixed rate every round kept.

mod common;

use common::{Numbers, experiment, jitter};
use krpc_lab::record::Load;
use krpc_testkit::{chromium_binary, dump_dom};

const STRATEGIES: [&str; 4] = ["local", "global", "per-conn", "per-core"];

/// The `<section>` of one load in the DOM.
fn section<'a>(dom: &'a str, load: &str) -> &'a str {
    let start = dom
        .find(&format!("<section class=\"load\" data-load=\"{load}\""))
        .unwrap_or_else(|| panic!("no section for {load}"));
    let end = dom[start..].find("</section>").unwrap() + start;
    &dom[start..end]
}

#[test]
fn the_report_shows_a_line_and_an_interval_per_configuration() {
    let Some(chromium) = chromium_binary() else {
        return;
    };
    let loads = [Load::CLOSED, Load { rate: Some(5000.0) }];
    let exp = experiment(&STRATEGIES, &loads, 6, |c, l, r| Numbers {
        rpc_s: if l == 0 {
            60_000.0 * (1.0 + 0.1 * jitter(c, l, r))
        } else {
            5000.0
        },
        latency_us: (300.0 * (1.0 + 0.2 * jitter(c, l, r))) as u64,
        server_cpu_us: 20.0,
        free_path_share: if c == 3 { 0.005 } else { 0.02 },
        misses_per_1k: 10.0,
    });
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("report.html");
    std::fs::write(&page, krpc_lab::html::report(&exp).unwrap()).unwrap();
    let dom = dump_dom(&chromium, &page);
    assert!(dom.contains("<title>krpc-lab experiment</title>"), "{dom}");

    for (load, charts) in [
        (
            "closed loop",
            ["rpc_s", "p99", "p999", "server_cpu", "free_path"].as_slice(),
        ),
        // A fixed rate every round kept: no throughput chart.
        ("5000 RPC/s", &["p99", "p999", "server_cpu", "free_path"]),
    ] {
        let s = section(&dom, load);
        assert_eq!(
            s.matches("class=\"spectrum\"").count(),
            STRATEGIES.len(),
            "{load}"
        );
        assert_eq!(
            s.matches("class=\"band\"").count(),
            STRATEGIES.len(),
            "{load}"
        );
        assert_eq!(
            s.matches("class=\"interval-chart\"").count(),
            charts.len(),
            "{load}"
        );
        for label in STRATEGIES {
            assert_eq!(
                s.matches(&format!("class=\"spectrum\" data-label=\"{label}\""))
                    .count(),
                1,
                "{load}: one spectrum line of {label}"
            );
            for chart in charts {
                assert_eq!(
                    s.matches(&format!(
                        "class=\"interval\" data-label=\"{label}\" data-figure=\"{chart}\""
                    ))
                    .count(),
                    1,
                    "{load}: one interval of {label} in {chart}"
                );
            }
            // The label a person reads: in the legend, the chart rows and the tables.
            assert!(
                s.matches(&format!(">{label}</text>")).count() > charts.len(),
                "{load}: {label} in the legend and every chart"
            );
            assert!(
                s.contains(&format!(" {label}</td>")),
                "{load}: {label} in the tables"
            );
        }
        assert!(
            s.contains("Latency by percentile") && s.contains("Against local"),
            "{load}"
        );
        assert_eq!(
            s.contains("data-figure=\"rpc_s\""),
            load == "closed loop",
            "{load}"
        );
    }
    // The shift built in: per-core's free-path share, a quarter of local's, found.
    let closed = section(&dom, "closed loop");
    assert!(
        closed.contains("lower free-path share (x0.25 ["),
        "{closed}"
    );
}

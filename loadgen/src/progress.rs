//! Live progress: a bar on a terminal (RPS, p99, errors of the last second), one plain line a
//! second otherwise (CI logs, pipes).

use std::{io::IsTerminal, time::Duration};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};

use crate::result::fmt_us;

#[derive(Debug)]
pub(crate) struct Progress {
    mode: Option<Output>,
    asked: Option<f64>,
}

#[derive(Debug)]
enum Output {
    Bar(ProgressBar),
    Lines,
}

impl Progress {
    pub(crate) fn new(enabled: bool, duration: Duration, asked: Option<f64>) -> Self {
        let mode = enabled.then(|| {
            if std::io::stderr().is_terminal() {
                let bar = ProgressBar::new(duration.as_secs().max(1));
                bar.set_style(
                    ProgressStyle::with_template("{bar:30} {pos}/{len}s {msg}")
                        .expect("valid template"),
                );
                Output::Bar(bar)
            } else {
                Output::Lines
            }
        });
        Self { mode, asked }
    }

    pub(crate) fn second(&mut self, index: u64, h: &Histogram<u64>, errors: u64) {
        let line = format!(
            "{:>6} RPC/s{}  p99 {:>8}  errors {errors}",
            h.len(),
            self.asked
                .map(|a| format!(" (asked {a})"))
                .unwrap_or_default(),
            fmt_us(h.value_at_percentile(99.0)),
        );
        match &self.mode {
            Some(Output::Bar(bar)) => {
                bar.set_position(index + 1);
                bar.set_message(line);
            }
            Some(Output::Lines) => eprintln!("[{:>3}s] {line}", index + 1),
            None => {}
        }
    }

    pub(crate) fn finish(&mut self) {
        if let Some(Output::Bar(bar)) = &self.mode {
            bar.finish_and_clear();
        }
    }
}

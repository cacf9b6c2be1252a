//! The HdrHistogram interval log: one histogram per second of the measured window, in the
//! format HdrHistogram's own tools read (`HistogramLogProcessor`, HdrHistogramVisualizer).
//! Values are microseconds; `MaxValueDivisor` 1000 makes the max column milliseconds.

use std::{collections::BTreeMap, io::Write, path::Path, time::Duration};

use hdrhistogram::{
    Histogram,
    serialization::{
        Deserializer, V2DeflateSerializer,
        interval_log::{IntervalLogIterator, IntervalLogWriterBuilder, LogEntry},
    },
};

use crate::{
    error::{LoadgenError, Result},
    result::new_histogram,
};

/// Seconds (from the start of measurement) → that second's latency histogram.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct IntervalLog {
    pub start_time: f64,
    pub intervals: BTreeMap<u64, Histogram<u64>>,
}

impl IntervalLog {
    pub fn push(&mut self, second: u64, h: Histogram<u64>) {
        match self.intervals.get_mut(&second) {
            // Same bounds everywhere: adding cannot fail.
            Some(existing) => {
                let _ = existing.add(&h);
            }
            None => {
                self.intervals.insert(second, h);
            }
        }
    }

    /// Writes the log with `StartTime`/`BaseTime` = `start_time` (Unix seconds).
    pub fn write(&self, path: &Path, start_time: f64) -> Result<()> {
        let mut out = Vec::new();
        let base = Duration::from_secs_f64(start_time.max(0.0));
        {
            let mut serializer = V2DeflateSerializer::new();
            let mut writer = IntervalLogWriterBuilder::new()
                .add_comment("krpc-loadgen interval log: latency in microseconds, corrected for coordinated omission")
                .with_start_time(std::time::UNIX_EPOCH + base)
                .with_base_time(std::time::UNIX_EPOCH + base)
                .with_max_value_divisor(1000.0)
                .begin_log_with(&mut out, &mut serializer)
                .map_err(|e| LoadgenError::file("write", path, e))?;
            for (second, h) in &self.intervals {
                writer
                    .write_histogram(
                        h,
                        Duration::from_secs(*second),
                        Duration::from_secs(1),
                        None,
                    )
                    .map_err(|e| {
                        LoadgenError::file("write", path, std::io::Error::other(format!("{e:?}")))
                    })?;
            }
        }
        // The legend line HdrHistogram's Java writer puts before the intervals (readers skip
        // it; people and spreadsheet imports read it).
        let text = String::from_utf8(out).expect("the log is ASCII");
        let split = text
            .lines()
            .take_while(|l| l.starts_with('#'))
            .map(|l| l.len() + 1)
            .sum::<usize>();
        let (head, body) = text.split_at(split);
        let text = format!(
            "{head}\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n{body}"
        );
        std::fs::File::create(path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| LoadgenError::file("write", path, e))
    }

    /// Reads a log written by [`Self::write`] (or any log with a BaseTime and 1 s intervals).
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| LoadgenError::file("read", path, e))?;
        let not_a_log = |detail: String| LoadgenError::NotALog {
            path: path.to_owned(),
            detail,
        };
        let mut log = Self::default();
        let mut deserializer = Deserializer::new();
        for entry in IntervalLogIterator::new(&bytes) {
            match entry {
                Ok(LogEntry::BaseTime(t)) | Ok(LogEntry::StartTime(t)) => {
                    log.start_time = t.as_secs_f64()
                }
                Ok(LogEntry::Interval(i)) => {
                    let bytes = base64::Engine::decode(
                        &base64::engine::general_purpose::STANDARD,
                        i.encoded_histogram(),
                    )
                    .map_err(|e| not_a_log(format!("an interval is not base64: {e}")))?;
                    let h: Histogram<u64> = deserializer
                        .deserialize(&mut bytes.as_slice())
                        .map_err(|e| not_a_log(format!("an interval does not decode: {e:?}")))?;
                    let mut widened = new_histogram();
                    widened
                        .add(&h)
                        .map_err(|e| not_a_log(format!("an interval is out of range: {e:?}")))?;
                    log.push(i.start_timestamp().as_secs(), widened);
                }
                Err(e) => return Err(not_a_log(format!("{e:?}"))),
            }
        }
        Ok(log)
    }

    /// Every interval added up.
    pub fn total(&self) -> Histogram<u64> {
        let mut total = new_histogram();
        for h in self.intervals.values() {
            let _ = total.add(h);
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_round_trip() {
        let mut log = IntervalLog::default();
        for second in 0..3u64 {
            let mut h = new_histogram();
            for v in 0..(100 * (second + 1)) {
                h.record(10 + v).unwrap();
            }
            log.push(second, h);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.hlog");
        log.write(&path, 1_700_000_000.0).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("#[BaseTime: 1700000000.000"), "{text}");
        assert!(
            text.contains("\"StartTimestamp\",\"Interval_Length\""),
            "{text}"
        );
        let back = IntervalLog::read(&path).unwrap();
        assert_eq!(back.intervals.len(), 3);
        assert_eq!(back.total().len(), 600);
        assert_eq!(back.intervals[&2].len(), 300);
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.hlog");
        std::fs::write(&path, "not a log at all\n").unwrap();
        let e = IntervalLog::read(&path).unwrap_err().to_string();
        assert!(e.contains("not an HdrHistogram interval log"), "{e}");
    }
}

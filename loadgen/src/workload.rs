//! What each RPC is: the method (one, or a weighted mix), the key, the payload; and when the
//! open loop sends them (the arrival process).

use std::{fmt, str::FromStr};

use bytes::Bytes;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// A Bench method the load generator can call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Echo,
    Put,
    Get,
}

impl Method {
    pub const ALL: [Method; 3] = [Self::Echo, Self::Put, Self::Get];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Echo => "echo",
            Self::Put => "put",
            Self::Get => "get",
        }
    }
}

impl FromStr for Method {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("unknown method {s:?} (expected echo, put or get)"))
    }
}

/// `echo`, or a weighted mix such as `echo:8,put:1,get:1`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mix(Vec<(Method, u32)>);

impl Mix {
    pub fn single(method: Method) -> Self {
        Self(vec![(method, 1)])
    }

    pub fn parts(&self) -> &[(Method, u32)] {
        &self.0
    }

    /// Picks a method with probability proportional to its weight.
    pub fn pick(&self, rng: &mut impl Rng) -> Method {
        if let [(only, _)] = self.0.as_slice() {
            return *only;
        }
        let total: u32 = self.0.iter().map(|(_, w)| w).sum();
        let mut roll = rng.random_range(0..total);
        for &(method, weight) in &self.0 {
            if roll < weight {
                return method;
            }
            roll -= weight;
        }
        self.0[0].0
    }
}

impl FromStr for Mix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = Vec::new();
        for part in s.split(',') {
            let (name, weight) = match part.split_once(':') {
                Some((name, weight)) => {
                    let weight: u32 = weight.trim().parse().map_err(|_| {
                        format!("weight {weight:?} of {name:?} is not a whole number")
                    })?;
                    (name, weight)
                }
                None => (part, 1),
            };
            let method: Method = name.trim().parse()?;
            if parts.iter().any(|(m, _)| *m == method) {
                return Err(format!("{name:?} appears twice in the mix"));
            }
            if weight > 0 {
                parts.push((method, weight));
            }
        }
        if parts.is_empty() {
            return Err(format!(
                "{s:?} has no method with a weight above 0 (examples: echo, echo:8,put:1,get:1)"
            ));
        }
        Ok(Self(parts))
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let [(only, _)] = self.0.as_slice() {
            return f.write_str(only.as_str());
        }
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(m, w)| format!("{}:{w}", m.as_str()))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// The request generator: shared payload (cloned, never copied), keys `key-0 .. key-(n-1)`.
#[derive(Clone, Debug)]
pub struct Workload {
    pub mix: Mix,
    pub payload: Bytes,
    pub keys: Vec<Bytes>,
}

impl Workload {
    pub fn new(mix: Mix, payload_bytes: usize, keys: u64) -> Self {
        // Not all zeroes: a compressing or deduplicating layer must not make it cheaper.
        let payload: Vec<u8> = (0..payload_bytes)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(7))
            .collect();
        Self {
            mix,
            payload: Bytes::from(payload),
            keys: (0..keys.max(1))
                .map(|i| Bytes::from(format!("key-{i}")))
                .collect(),
        }
    }

    pub fn key(&self, rng: &mut impl Rng) -> Bytes {
        self.keys[rng.random_range(0..self.keys.len())].clone()
    }
}

/// Inter-arrival times of the open loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Evenly spaced, as wrk2.
    Uniform,
    /// Exponential gaps (a Poisson process): bursts, as independent clients make.
    Poisson,
}

impl Arrival {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Uniform => "uniform",
            Self::Poisson => "poisson",
        }
    }
}

impl FromStr for Arrival {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "uniform" => Ok(Self::Uniform),
            "poisson" => Ok(Self::Poisson),
            other => Err(format!(
                "unknown arrival {other:?} (expected uniform or poisson)"
            )),
        }
    }
}

impl fmt::Display for Arrival {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes_parse_and_print() {
        assert_eq!("echo".parse::<Mix>().unwrap(), Mix::single(Method::Echo));
        let mix: Mix = "echo:8, put:1,get:1".parse().unwrap();
        assert_eq!(mix.to_string(), "echo:8,put:1,get:1");
        assert!("echo,echo".parse::<Mix>().unwrap_err().contains("twice"));
        assert!("post".parse::<Mix>().unwrap_err().contains("expected echo"));
        assert!(
            "echo:x"
                .parse::<Mix>()
                .unwrap_err()
                .contains("whole number")
        );
        assert!("echo:0".parse::<Mix>().unwrap_err().contains("above 0"));
    }

    #[test]
    fn picks_follow_the_weights() {
        let mix: Mix = "echo:3,get:1".parse().unwrap();
        let mut rng = rand::rng();
        let echoes = (0..40_000)
            .filter(|_| mix.pick(&mut rng) == Method::Echo)
            .count();
        // 30,000 expected; 6 standard deviations is about ±520.
        assert!((29_400..30_600).contains(&echoes), "{echoes}");
    }
}

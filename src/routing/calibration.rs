//! Calibration: make the router's probabilities mean what they say. A
//! temperature is fitted on held-out data (minimising negative log-likelihood),
//! and a confidence threshold can be chosen from the same data so that the
//! traffic answered automatically reaches a target accuracy.

use serde::{Deserialize, Serialize};

/// What calibration measured on the held-out split at training time.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Calibration {
    /// Logits are divided by this before the softmax.
    pub temperature: f32,
    pub holdout_examples: usize,
    pub holdout_accuracy: f64,
    pub ece_before: f64,
    pub ece_after: f64,
    /// The accuracy `threshold` was chosen for, if one was asked for.
    pub target_accuracy: Option<f64>,
    /// Lowest top probability answered automatically to reach `target_accuracy`
    /// on the held-out data; `None` when no threshold reaches it.
    pub threshold: Option<f64>,
    /// Share of held-out traffic at or above `threshold`.
    pub coverage: Option<f64>,
}

/// Softmax of `logits / temperature`.
pub fn softmax(logits: &[f32], temperature: f32) -> Vec<f32> {
    let t = temperature.max(1e-3);
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut out: Vec<f32> = logits.iter().map(|z| ((z - max) / t).exp()).collect();
    let sum: f32 = out.iter().sum();
    for p in &mut out {
        *p /= sum;
    }
    out
}

fn nll(rows: &[(Vec<f32>, usize)], temperature: f32) -> f64 {
    rows.iter()
        .map(|(z, y)| -f64::from(softmax(z, temperature)[*y].max(1e-12)).ln())
        .sum::<f64>()
        / rows.len().max(1) as f64
}

/// The temperature minimising held-out negative log-likelihood
/// (golden-section search over log T in [0.05, 20]).
pub fn fit_temperature(rows: &[(Vec<f32>, usize)]) -> f32 {
    if rows.is_empty() {
        return 1.0;
    }
    let (mut lo, mut hi) = (0.05f64.ln(), 20f64.ln());
    let phi = (5f64.sqrt() - 1.0) / 2.0;
    let f = |x: f64| nll(rows, x.exp() as f32);
    let (mut a, mut b) = (hi - phi * (hi - lo), lo + phi * (hi - lo));
    let (mut fa, mut fb) = (f(a), f(b));
    for _ in 0..50 {
        if fa < fb {
            hi = b;
            b = a;
            fb = fa;
            a = hi - phi * (hi - lo);
            fa = f(a);
        } else {
            lo = a;
            a = b;
            fa = fb;
            b = lo + phi * (hi - lo);
            fb = f(b);
        }
    }
    ((lo + hi) / 2.0).exp() as f32
}

/// The lowest confidence threshold at which answered items (confidence at or
/// above it) are at least `target` accurate, with the coverage it gives.
pub fn threshold_for_accuracy(pairs: &[(f64, bool)], target: f64) -> Option<(f64, f64)> {
    let mut sorted: Vec<(f64, bool)> = pairs.to_vec();
    sorted.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut correct = 0usize;
    let mut best: Option<usize> = None;
    for (k, (_, ok)) in sorted.iter().enumerate() {
        correct += usize::from(*ok);
        // Only cut between distinct confidences, so the threshold means what it says.
        let boundary = sorted.get(k + 1).is_none_or(|next| next.0 < sorted[k].0);
        if boundary && correct as f64 / (k + 1) as f64 >= target {
            best = Some(k);
        }
    }
    best.map(|k| (sorted[k].0, (k + 1) as f64 / sorted.len() as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperature_undoes_overconfidence() {
        // Logits twice as sharp as the truth: 75% correct at confidence ~0.9.
        let rows: Vec<(Vec<f32>, usize)> = (0..400)
            .map(|i| {
                let z = vec![2.2f32, 0.0];
                (z, usize::from(i % 4 == 0))
            })
            .collect();
        let t = fit_temperature(&rows);
        let p = softmax(&rows[0].0, t)[0];
        assert!((p - 0.75).abs() < 0.01, "calibrated p={p} t={t}");
    }

    #[test]
    fn threshold_reaches_the_target() {
        let pairs = vec![
            (0.99, true),
            (0.95, true),
            (0.9, true),
            (0.8, false),
            (0.7, true),
            (0.6, false),
        ];
        assert_eq!(threshold_for_accuracy(&pairs, 0.99), Some((0.9, 0.5)));
        assert_eq!(threshold_for_accuracy(&pairs, 0.75), Some((0.7, 5.0 / 6.0)));
        assert_eq!(threshold_for_accuracy(&[(0.5, false)], 0.9), None);
    }
}

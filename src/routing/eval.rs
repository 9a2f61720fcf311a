//! How good is a router? Accuracy, macro-F1, calibration error, risk–coverage
//! and out-of-scope detection on a labelled test set. The same numbers are
//! kept with every trained model and printed by `sopr eval`.

use std::collections::BTreeMap;

use serde::Serialize;

/// The label for messages no intent covers. Test rows with it measure
/// out-of-scope detection; training rows with it teach the router known
/// off-topic traffic, and a message it routes to `oos` goes to review (no SOP
/// answers it), however confident the model is.
pub const OUT_OF_SCOPE: &str = "oos";

/// One scored test example: the true label, the predicted one and its confidence.
#[derive(Debug, Clone)]
pub struct Scored {
    pub label: String,
    pub predicted: String,
    pub confidence: f64,
    /// Whether the router abstained (sent the message to review).
    pub abstained: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub examples: usize,
    /// Rows not labelled `oos`: what accuracy, calibration and risk–coverage
    /// are measured on (all 0 when there are none).
    pub in_scope_examples: usize,
    /// Accuracy over in-scope examples, abstentions included as answers.
    pub accuracy: f64,
    pub macro_f1: f64,
    /// Expected calibration error (15 equal-width bins of the top probability).
    pub ece: f64,
    /// Coverage reachable while keeping at least this accuracy.
    pub coverage_at_accuracy: BTreeMap<String, f64>,
    /// Accuracy of the most confident share of the traffic.
    pub accuracy_at_coverage: BTreeMap<String, f64>,
    /// Share of in-scope traffic answered automatically (not abstained) and its accuracy.
    pub auto_coverage: f64,
    pub auto_accuracy: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out_of_scope: Option<OutOfScope>,
    /// The intent pairs mistaken most often (in-scope rows), most frequent
    /// first: where SOP authors should add examples or merge intents.
    pub confused: Vec<Confusion>,
    /// Every intent of the in-scope test rows, weakest (lowest F1) first.
    pub intents: Vec<IntentScore>,
}

/// How one intent fares: `macro_f1` is the mean of their `f1`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IntentScore {
    pub intent: String,
    /// Test rows labelled with it.
    pub support: usize,
    /// Share of the rows routed to it that were labelled with it (0 when
    /// none were routed to it).
    pub precision: f64,
    /// Share of its rows routed to it.
    pub recall: f64,
    pub f1: f64,
    /// Share of its rows the router answered (did not abstain on).
    pub answered: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Confusion {
    /// The true intent.
    pub label: String,
    /// What the router chose instead.
    pub predicted: String,
    pub count: usize,
    /// How many of those it was confident enough to answer (did not abstain).
    pub answered: usize,
}

/// Pairs listed in `Report::confused`.
const CONFUSED_PAIRS: usize = 10;

#[derive(Debug, Clone, Serialize)]
pub struct OutOfScope {
    pub examples: usize,
    /// Share of `oos` rows the router abstained on.
    pub recall: f64,
    /// Share of abstentions that were `oos` rows.
    pub precision: f64,
    /// How well confidence alone separates them, whatever the threshold: the
    /// chance that an `oos` row gets a lower confidence than an in-scope row
    /// (ties count half). 0.5 is chance, 1 is perfect.
    pub auroc: f64,
}

fn correct(s: &Scored) -> bool {
    s.label == s.predicted
}

/// What ranks a row for risk–coverage and out-of-scope AUROC: its
/// confidence, except that a row routed to `oos` is never answered, whatever
/// the threshold, so it ranks below every row that could be.
fn answer_score(s: &Scored) -> f64 {
    if s.predicted == OUT_OF_SCOPE {
        -1.0
    } else {
        s.confidence
    }
}

pub fn report(scored: &[Scored]) -> Report {
    let in_scope: Vec<&Scored> = scored.iter().filter(|s| s.label != OUT_OF_SCOPE).collect();
    let n = in_scope.len().max(1) as f64;
    let accuracy = in_scope.iter().filter(|s| correct(s)).count() as f64 / n;

    let mut by_conf: Vec<&Scored> = in_scope.clone();
    by_conf.sort_by(|a, b| answer_score(b).total_cmp(&answer_score(a)));
    let mut prefix_correct = Vec::with_capacity(by_conf.len());
    let mut running = 0usize;
    for s in &by_conf {
        running += usize::from(correct(s));
        prefix_correct.push(running);
    }
    let mut coverage_at_accuracy = BTreeMap::new();
    for target in [0.95, 0.98, 0.99] {
        let best = prefix_correct
            .iter()
            .enumerate()
            .filter(|(k, c)| **c as f64 / (*k + 1) as f64 >= target)
            .map(|(k, _)| k + 1)
            .max()
            .unwrap_or(0);
        coverage_at_accuracy.insert(format!("{target:.2}"), best as f64 / n);
    }
    let mut accuracy_at_coverage = BTreeMap::new();
    for coverage in [0.7, 0.8, 0.9] {
        let k = ((coverage * by_conf.len() as f64).ceil() as usize).clamp(1, by_conf.len().max(1));
        let acc = prefix_correct
            .get(k - 1)
            .map_or(0.0, |c| *c as f64 / k as f64);
        accuracy_at_coverage.insert(format!("{coverage:.2}"), acc);
    }

    let answered: Vec<&&Scored> = in_scope.iter().filter(|s| !s.abstained).collect();
    let auto_coverage = answered.len() as f64 / n;
    let auto_accuracy = if answered.is_empty() {
        0.0
    } else {
        answered.iter().filter(|s| correct(s)).count() as f64 / answered.len() as f64
    };

    let oos: Vec<&Scored> = scored.iter().filter(|s| s.label == OUT_OF_SCOPE).collect();
    let out_of_scope = (!oos.is_empty()).then(|| {
        let abstained_total = scored.iter().filter(|s| s.abstained).count();
        let caught = oos.iter().filter(|s| s.abstained).count();
        OutOfScope {
            examples: oos.len(),
            recall: caught as f64 / oos.len() as f64,
            precision: if abstained_total == 0 {
                0.0
            } else {
                caught as f64 / abstained_total as f64
            },
            auroc: auroc(
                &oos.iter().map(|s| answer_score(s)).collect::<Vec<_>>(),
                &in_scope.iter().map(|s| answer_score(s)).collect::<Vec<_>>(),
            ),
        }
    });

    let mut pairs: BTreeMap<(&str, &str), (usize, usize)> = BTreeMap::new();
    for s in in_scope.iter().filter(|s| !correct(s)) {
        let entry = pairs.entry((&s.label, &s.predicted)).or_default();
        entry.0 += 1;
        entry.1 += usize::from(!s.abstained);
    }
    let mut confused: Vec<Confusion> = pairs
        .into_iter()
        .map(|((label, predicted), (count, answered))| Confusion {
            label: label.to_string(),
            predicted: predicted.to_string(),
            count,
            answered,
        })
        .collect();
    // Stable: equal counts stay in name order.
    confused.sort_by_key(|c| std::cmp::Reverse(c.count));
    confused.truncate(CONFUSED_PAIRS);
    let intents = intent_scores(&in_scope);

    Report {
        examples: scored.len(),
        in_scope_examples: in_scope.len(),
        accuracy,
        macro_f1: macro_f1(&intents),
        ece: ece(in_scope.iter().map(|s| (s.confidence, correct(s)))),
        coverage_at_accuracy,
        accuracy_at_coverage,
        auto_coverage,
        auto_accuracy,
        out_of_scope,
        confused,
        intents,
    }
}

/// Share of in-scope rows routed to the SOP that answers their intent
/// (`sop_of`: intent → SOP id). Two intents of one SOP get the same answer,
/// so confusing them is no routing error. A row of an intent no SOP answers
/// (learnt from labelled traffic) is right when it is routed to no SOP
/// either, that is, to review.
pub fn sop_accuracy<'a>(scored: &'a [Scored], sop_of: impl Fn(&'a str) -> Option<&'a str>) -> f64 {
    let in_scope: Vec<&Scored> = scored.iter().filter(|s| s.label != OUT_OF_SCOPE).collect();
    let right = in_scope
        .iter()
        .filter(|s| sop_of(&s.label) == sop_of(&s.predicted))
        .count();
    right as f64 / in_scope.len().max(1) as f64
}

/// The chance that a value drawn from `low` is below one drawn from `high`,
/// ties counting half (the Mann–Whitney statistic); 0.5 when either is empty.
fn auroc(low: &[f64], high: &[f64]) -> f64 {
    if low.is_empty() || high.is_empty() {
        return 0.5;
    }
    let mut high = high.to_vec();
    high.sort_by(f64::total_cmp);
    let wins: f64 = low
        .iter()
        .map(|x| {
            let below = high.partition_point(|h| h < x);
            let up_to = high.partition_point(|h| h <= x);
            // In-scope rows above `x`, plus half the ties.
            (high.len() - up_to) as f64 + (up_to - below) as f64 / 2.0
        })
        .sum();
    wins / (low.len() as f64 * high.len() as f64)
}

/// Precision, recall and F1 of every intent with in-scope test rows,
/// weakest first (ties in name order).
fn intent_scores(scored: &[&Scored]) -> Vec<IntentScore> {
    #[derive(Default)]
    struct Counts {
        support: usize,
        right: usize,
        answered: usize,
    }
    let mut counts: BTreeMap<&str, Counts> = BTreeMap::new();
    let mut routed: BTreeMap<&str, usize> = BTreeMap::new();
    for s in scored {
        let own = counts.entry(&s.label).or_default();
        own.support += 1;
        own.answered += usize::from(!s.abstained);
        own.right += usize::from(correct(s));
        *routed.entry(&s.predicted).or_default() += 1;
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let mut scores: Vec<IntentScore> = counts
        .into_iter()
        .map(|(intent, c)| {
            let precision = ratio(c.right, routed.get(intent).copied().unwrap_or(0));
            let recall = ratio(c.right, c.support);
            let f1 = if c.right == 0 {
                0.0
            } else {
                2.0 * precision * recall / (precision + recall)
            };
            IntentScore {
                intent: intent.to_string(),
                support: c.support,
                precision,
                recall,
                f1,
                answered: ratio(c.answered, c.support),
            }
        })
        .collect();
    scores.sort_by(|a, b| a.f1.total_cmp(&b.f1));
    scores
}

fn macro_f1(intents: &[IntentScore]) -> f64 {
    if intents.is_empty() {
        return 0.0;
    }
    intents.iter().map(|i| i.f1).sum::<f64>() / intents.len() as f64
}

/// Expected calibration error over `(confidence, correct)` pairs, 15 bins.
pub fn ece(pairs: impl Iterator<Item = (f64, bool)>) -> f64 {
    const BINS: usize = 15;
    let mut count = [0usize; BINS];
    let mut conf = [0f64; BINS];
    let mut hits = [0f64; BINS];
    let mut total = 0usize;
    for (c, ok) in pairs {
        let b = ((c * BINS as f64) as usize).min(BINS - 1);
        count[b] += 1;
        conf[b] += c;
        hits[b] += f64::from(u8::from(ok));
        total += 1;
    }
    if total == 0 {
        return 0.0;
    }
    (0..BINS)
        .filter(|&b| count[b] > 0)
        .map(|b| (count[b] as f64 / total as f64) * ((hits[b] - conf[b]) / count[b] as f64).abs())
        .sum()
}

/// Nearest-rank percentile of durations in microseconds.
pub fn percentile(sorted_us: &[f64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted_us.len() as f64).ceil() as usize;
    sorted_us[rank.clamp(1, sorted_us.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(label: &str, predicted: &str, confidence: f64) -> Scored {
        Scored {
            label: label.into(),
            predicted: predicted.into(),
            confidence,
            abstained: confidence < 0.5,
        }
    }

    #[test]
    fn metrics_on_a_small_case() {
        let scored = vec![
            s("a", "a", 0.9),
            s("a", "a", 0.8),
            s("b", "a", 0.7),
            s("b", "b", 0.4),
            s("oos", "a", 0.3),
        ];
        let r = report(&scored);
        assert_eq!(r.accuracy, 0.75);
        // The two most confident are right: 50% coverage at 99% accuracy.
        assert_eq!(r.coverage_at_accuracy["0.99"], 0.5);
        assert_eq!(r.auto_coverage, 0.75);
        let oos = r.out_of_scope.unwrap();
        assert_eq!((oos.examples, oos.recall, oos.precision), (1, 1.0, 0.5));
        // 0.3 is below all four in-scope confidences.
        assert_eq!(oos.auroc, 1.0);
        // F1: a = 2*(2/3*1)/(2/3+1) = 0.8, b = 2*(1*0.5)/1.5 = 0.667
        assert!((r.macro_f1 - (0.8 + 2.0 / 3.0) / 2.0).abs() < 1e-9);
        // Per intent, weakest first; the oos row (routed to a) is not an
        // intent of its own and does not count against a's precision.
        let intents: Vec<(&str, usize, f64, f64, f64)> = r
            .intents
            .iter()
            .map(|i| {
                (
                    i.intent.as_str(),
                    i.support,
                    i.precision,
                    i.recall,
                    i.answered,
                )
            })
            .collect();
        assert_eq!(
            intents,
            [("b", 2, 1.0, 0.5, 0.5), ("a", 2, 2.0 / 3.0, 1.0, 1.0)]
        );
        assert!((r.intents[0].f1 - 2.0 / 3.0).abs() < 1e-9);
        // The oos row is not a confusion between intents.
        assert_eq!(
            r.confused,
            vec![Confusion {
                label: "b".into(),
                predicted: "a".into(),
                count: 1,
                answered: 1
            }]
        );
    }

    #[test]
    fn routing_to_oos_is_review_whatever_the_confidence() {
        let mut scored = vec![
            s("a", "a", 0.9),
            s("a", "a", 0.8),
            s("b", "b", 0.7),
            s("b", "oos", 0.95), // in scope, sent to review: wrong, never covered
            s("oos", "oos", 0.99),
            s("oos", "a", 0.6),
        ];
        for row in &mut scored {
            row.abstained |= row.predicted == OUT_OF_SCOPE;
        }
        let r = report(&scored);
        assert_eq!(r.accuracy, 0.75);
        // The three answerable in-scope rows are right: 75% at 99%.
        assert_eq!(r.coverage_at_accuracy["0.99"], 0.75);
        assert_eq!(r.accuracy_at_coverage["0.70"], 1.0);
        let oos = r.out_of_scope.unwrap();
        assert_eq!((oos.recall, oos.precision), (0.5, 0.5));
        // The row routed to oos ties the in-scope one routed there (half),
        // and is below the other three; 0.6 is below 0.7, 0.8, 0.9 only.
        assert_eq!(oos.auroc, (3.5 + 3.0) / 8.0);
        assert_eq!(r.confused[0].predicted, "oos");
    }

    #[test]
    fn sop_accuracy_forgives_confusions_within_one_sop() {
        let sops: BTreeMap<&str, &str> = [("a", "cards"), ("b", "cards"), ("c", "transfers")]
            .into_iter()
            .collect();
        let sop_of = |intent: &str| sops.get(intent).copied();
        let scored = vec![
            s("a", "a", 0.9),
            s("a", "b", 0.9),   // same SOP: right
            s("c", "a", 0.9),   // another SOP: wrong
            s("d", "e", 0.9),   // no SOP answers d, nor e: right, it goes to review
            s("d", "c", 0.9),   // a SOP answers a message none should: wrong
            s("oos", "a", 0.2), // not counted
        ];
        assert_eq!(sop_accuracy(&scored, sop_of), 0.6);
        assert_eq!(report(&scored).accuracy, 0.2, "a of five by intent");
    }

    #[test]
    fn auroc_counts_pairs_and_half_ties() {
        assert_eq!(auroc(&[0.1, 0.2], &[0.3, 0.4]), 1.0);
        assert_eq!(auroc(&[0.3, 0.4], &[0.1, 0.2]), 0.0);
        // 0.2 < 0.3 and 0.2 < 0.5; 0.5 ties 0.5 (half) and is above 0.3.
        assert_eq!(auroc(&[0.2, 0.5], &[0.3, 0.5]), 2.5 / 4.0);
        assert_eq!(auroc(&[], &[0.3]), 0.5);
    }

    #[test]
    fn confused_pairs_are_counted_and_ranked() {
        let mut scored = vec![s("c", "d", 0.9), s("a", "b", 0.3)];
        scored.extend((0..3).map(|_| s("b", "a", 0.6)));
        scored.push(s("b", "a", 0.2));
        let r = report(&scored);
        let pairs: Vec<(&str, &str, usize, usize)> = r
            .confused
            .iter()
            .map(|c| (c.label.as_str(), c.predicted.as_str(), c.count, c.answered))
            .collect();
        assert_eq!(
            pairs,
            vec![("b", "a", 4, 3), ("a", "b", 1, 0), ("c", "d", 1, 1)]
        );
    }

    #[test]
    fn ece_is_zero_when_confidence_matches_accuracy() {
        let pairs = (0..100).map(|i| (0.75, i % 4 != 0));
        assert!(ece(pairs) < 1e-9);
        let overconfident = (0..100).map(|i| (0.99, i % 2 == 0));
        assert!((ece(overconfident) - 0.49).abs() < 1e-9);
    }
}

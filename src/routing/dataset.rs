//! Labelled utterances from CSV files (`text,intent` or `text,category`) and
//! the fixed-seed stratified splits used to train, calibrate and evaluate.

use std::collections::BTreeMap;
use std::path::Path;

use super::classifier::{SplitMix64, wording_hash};

/// One `(intent, text)` pair per example.
pub type Examples = Vec<(String, String)>;

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    /// The CSV error's text already includes its cause (an I/O error, say),
    /// so it is shown here and not chained as a source: `error: {err:#}`
    /// would print the cause twice.
    #[error("{path}: {error}")]
    Csv { path: String, error: csv::Error },
}

/// Reads a CSV with a header naming a `text` (or `utterance`, `message`,
/// `sentence`, `query`) column and an `intent` (or `category`, `label`)
/// column; other columns are ignored. Columns may be separated by commas,
/// tabs or semicolons: the header line tells which.
pub fn read_csv(path: &Path) -> Result<Examples, DatasetError> {
    let shown = path.display().to_string();
    let csv_err = |error| DatasetError::Csv {
        path: shown.clone(),
        error,
    };
    let bytes = std::fs::read(path).map_err(|e| csv_err(e.into()))?;
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .delimiter(delimiter_of(&bytes))
        .from_reader(bytes.as_slice());
    let headers = reader.headers().map_err(csv_err)?.clone();
    let find = |names: &[&str]| {
        headers
            .iter()
            .position(|h| names.iter().any(|n| h.trim().eq_ignore_ascii_case(n)))
    };
    let text_col =
        find(&["text", "utterance", "message", "sentence", "query"]).ok_or_else(|| DatasetError::Invalid {
            path: shown.clone(),
            message: format!(
                "no `text` column in header {:?} (columns are separated by commas, tabs or semicolons)",
                headers.iter().collect::<Vec<_>>()
            ),
        })?;
    let label_col =
        find(&["intent", "category", "label"]).ok_or_else(|| DatasetError::Invalid {
            path: shown.clone(),
            message: format!(
                "no `intent` or `category` column in header {:?}",
                headers.iter().collect::<Vec<_>>()
            ),
        })?;
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(csv_err)?;
        let (Some(text), Some(label)) = (record.get(text_col), record.get(label_col)) else {
            return Err(DatasetError::Invalid {
                path: shown.clone(),
                message: format!("row {} has too few columns", i + 2),
            });
        };
        let (text, label) = (text.trim(), label.trim());
        if text.is_empty() || label.is_empty() {
            skipped.push(i + 2);
            continue;
        }
        out.push((label.to_string(), text.to_string()));
    }
    if let Some(first) = skipped.first() {
        // Not an error: exports often carry a few blank rows. But a file
        // that loses rows silently hides a broken export.
        tracing::warn!(
            file = %shown,
            skipped = skipped.len(),
            first_row = first,
            "rows without a text or an intent are not used"
        );
    }
    if out.is_empty() {
        return Err(DatasetError::Invalid {
            path: shown,
            message: "no labelled rows".into(),
        });
    }
    Ok(out)
}

/// The indices of each label's examples (labels in sorted order).
fn indices_by_label(examples: &[(String, String)]) -> BTreeMap<&str, Vec<usize>> {
    let mut by_label: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, (label, _)) in examples.iter().enumerate() {
        by_label.entry(label).or_default().push(i);
    }
    by_label
}

/// Each label's indices (labels in sorted order), each list shuffled by one
/// generator seeded with `seed`: the draw `sopr eval`'s splits share. Adding
/// or removing one example reshuffles every label after it.
fn shuffled_by_label(examples: &[(String, String)], seed: u64) -> Vec<Vec<usize>> {
    let mut rng = SplitMix64::new(seed);
    indices_by_label(examples)
        .into_values()
        .map(|mut indices| {
            rng.shuffle(&mut indices);
            indices
        })
        .collect()
}

/// Each label's indices (labels in sorted order) in the order of a keyed hash
/// of the example's wording ([`wording_hash`]): where an example falls
/// depends on its own wording, its label and `seed`, not on the other
/// examples, and copies of one wording sit side by side.
fn hashed_by_label(examples: &[(String, String)], seed: u64) -> Vec<Vec<usize>> {
    indices_by_label(examples)
        .into_values()
        .map(|mut indices| {
            indices.sort_by_cached_key(|&i| (wording_hash(&examples[i].1, seed), i));
            indices
        })
        .collect()
}

/// The first `test_fraction` of each label's ordered indices (rounded, at
/// least one left for training) as the test part, the rest as training.
fn split_in_order(
    examples: &[(String, String)],
    ordered: impl IntoIterator<Item = Vec<usize>>,
    test_fraction: f64,
) -> (Examples, Examples) {
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for indices in ordered {
        let n_test = ((indices.len() as f64) * test_fraction).round() as usize;
        // Keep at least one training example per label.
        let n_test = n_test.min(indices.len().saturating_sub(1));
        for (k, &i) in indices.iter().enumerate() {
            if k < n_test {
                test.push(examples[i].clone());
            } else {
                train.push(examples[i].clone());
            }
        }
    }
    (train, test)
}

/// Splits per label so every intent keeps its share in both parts. The same
/// seed and data always give the same split.
pub fn stratified_split(
    examples: &[(String, String)],
    test_fraction: f64,
    seed: u64,
) -> (Examples, Examples) {
    split_in_order(examples, shuffled_by_label(examples, seed), test_fraction)
}

/// Assigns every example one of `k` folds, stratified per label: each
/// label's examples, shuffled with `seed`, are dealt round the folds in turn,
/// continuing where the previous label stopped, so that even labels with fewer
/// than `k` examples spread the folds' sizes evenly.
pub fn stratified_folds(examples: &[(String, String)], k: usize, seed: u64) -> Vec<usize> {
    let k = k.max(1);
    let mut fold = vec![0; examples.len()];
    let mut next = 0;
    for indices in shuffled_by_label(examples, seed) {
        for i in indices {
            fold[i] = next % k;
            next += 1;
        }
    }
    fold
}

/// A per-label split like [`stratified_split`] that moves little when the
/// data changes: each label's examples in the order of [`hashed_by_label`],
/// the first `test_fraction` held out. An added example joins the test part
/// only if it hashes among the first, and pushes at most one other example
/// across. Calibration uses it, so that the held-out accuracies of two models
/// trained on nearly the same data are measured on nearly the same examples
/// (the "not worse" check of a retrain compares them).
pub fn stable_split(
    examples: &[(String, String)],
    test_fraction: f64,
    seed: u64,
) -> (Examples, Examples) {
    split_in_order(examples, hashed_by_label(examples, seed), test_fraction)
}

/// The examples outside fold `fold` (to train on) and those in it (to test
/// on), given every example's fold from [`stratified_folds`].
pub fn fold_split(
    examples: &[(String, String)],
    folds: &[usize],
    fold: usize,
) -> (Examples, Examples) {
    let (held, rest): (Vec<_>, Vec<_>) = examples.iter().zip(folds).partition(|(_, f)| **f == fold);
    let strip =
        |part: Vec<(&(String, String), &usize)>| part.into_iter().map(|(e, _)| e.clone()).collect();
    (strip(rest), strip(held))
}

/// A share of the intents of `examples` to treat as unknown (`sopr eval
/// --unknown-intents`): at least one, and never so many that fewer than two
/// remain (none with fewer than three intents). The choice depends only on
/// the intents and `seed`. Sorted.
pub fn choose_intents(examples: &[(String, String)], share: f64, seed: u64) -> Vec<String> {
    let mut intents: Vec<String> = examples
        .iter()
        .map(|(label, _)| label.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let count = ((share * intents.len() as f64).round() as usize)
        .max(1)
        .min(intents.len().saturating_sub(2));
    SplitMix64::new(seed ^ 0x6f6f_735f_6865_6c64).shuffle(&mut intents);
    intents.truncate(count);
    intents.sort();
    intents
}

/// The separator of the header line: the most frequent of comma, tab and
/// semicolon outside quotes (a comma when there is none).
fn delimiter_of(bytes: &[u8]) -> u8 {
    let header = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut quoted = false;
    let mut counts = [0usize; 3];
    for &b in header {
        match b {
            b'"' => quoted = !quoted,
            b',' if !quoted => counts[0] += 1,
            b'\t' if !quoted => counts[1] += 1,
            b';' if !quoted => counts[2] += 1,
            _ => {}
        }
    }
    let best = (0..3).max_by_key(|&i| (counts[i], std::cmp::Reverse(i)));
    [b',', b'\t', b';'][best.unwrap_or(0)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_csv_finds_the_columns_whatever_the_separator() {
        let dir = tempfile::tempdir().unwrap();
        let expected: Examples = vec![
            ("card_arrival".into(), "where is my card, please?".into()),
            ("top_up".into(), "top up; how".into()),
        ];
        for (name, content) in [
            (
                "comma.csv",
                "text,intent\n\"where is my card, please?\",card_arrival\n\"top up; how\",top_up\n",
            ),
            (
                "tab.tsv",
                "id\tsentence\tlabel\n1\twhere is my card, please?\tcard_arrival\n2\ttop up; how\ttop_up\n",
            ),
            (
                "semicolon.csv",
                "\u{feff}Category;Text\r\ncard_arrival;where is my card, please?\r\ntop_up;\"top up; how\"\r\n",
            ),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, content).unwrap();
            assert_eq!(read_csv(&path).unwrap(), expected, "{name}");
        }
        let path = dir.path().join("pipes.csv");
        std::fs::write(&path, "text|intent\na|b\n").unwrap();
        let err = read_csv(&path).unwrap_err().to_string();
        assert!(
            err.contains("no `text` column in header [\"text|intent\"] (columns are separated by commas, tabs or semicolons)"),
            "{err}"
        );
        assert_eq!(delimiter_of(b""), b',');
    }

    #[test]
    fn unknown_intents_are_a_seeded_share() {
        let rows = |intents: &[&str]| -> Examples {
            intents
                .iter()
                .flat_map(|i| (0..4).map(move |k| (i.to_string(), format!("{i} {k}"))))
                .collect()
        };
        let data = rows(&["a", "b", "c", "d", "e", "f", "g", "h"]);
        let unknown = choose_intents(&data, 0.25, 7);
        assert_eq!(unknown.len(), 2);
        assert!(unknown.windows(2).all(|w| w[0] < w[1]), "sorted");
        // Deterministic for a seed; other seeds pick others.
        assert_eq!(choose_intents(&data, 0.25, 7), unknown);
        let picks: std::collections::BTreeSet<Vec<String>> = (0..10)
            .map(|seed| choose_intents(&data, 0.25, seed))
            .collect();
        assert!(picks.len() > 1);
        // At least one unknown, at least two known.
        assert_eq!(choose_intents(&rows(&["a", "b", "c"]), 0.9, 1).len(), 1);
        assert_eq!(choose_intents(&rows(&["a", "b", "c"]), 0.01, 1).len(), 1);
        assert!(choose_intents(&rows(&["a", "b"]), 0.5, 1).is_empty());
    }

    #[test]
    fn split_is_stratified_and_deterministic() {
        let data: Examples = (0..100)
            .map(|i| {
                (
                    if i % 4 == 0 { "a" } else { "b" }.to_string(),
                    format!("text {i}"),
                )
            })
            .collect();
        let (train, test) = stratified_split(&data, 0.2, 7);
        assert_eq!(train.len() + test.len(), 100);
        assert_eq!(test.iter().filter(|(l, _)| l == "a").count(), 5);
        assert_eq!(test.iter().filter(|(l, _)| l == "b").count(), 15);
        assert_eq!(stratified_split(&data, 0.2, 7).1, test);
        assert_ne!(stratified_split(&data, 0.2, 8).1, test);
    }

    #[test]
    fn folds_are_stratified_balanced_and_deterministic() {
        let data: Examples = (0..103)
            .map(|i| (format!("l{}", i % 7), format!("text {i}")))
            .collect();
        let folds = stratified_folds(&data, 5, 3);
        let sizes: Vec<usize> = (0..5)
            .map(|f| folds.iter().filter(|&&x| x == f).count())
            .collect();
        assert!(sizes.iter().all(|&n| n == 20 || n == 21), "{sizes:?}");
        // Each label's examples are spread over the folds.
        for label in 0..7 {
            let mut per_fold = [0usize; 5];
            for (i, (l, _)) in data.iter().enumerate() {
                if *l == format!("l{label}") {
                    per_fold[folds[i]] += 1;
                }
            }
            let (lo, hi) = (per_fold.iter().min(), per_fold.iter().max());
            assert!(
                hi.unwrap() - lo.unwrap() <= 1,
                "label {label}: {per_fold:?}"
            );
        }
        assert_eq!(stratified_folds(&data, 5, 3), folds);
        assert_ne!(stratified_folds(&data, 5, 4), folds);
    }

    #[test]
    fn stable_split_is_stratified_and_deterministic() {
        let data: Examples = (0..103)
            .map(|i| (format!("l{}", i % 7), format!("text {i}")))
            .collect();
        let (train, test) = stable_split(&data, 0.2, 7);
        assert_eq!(train.len() + test.len(), 103);
        for label in 0..7 {
            let label = format!("l{label}");
            let n = data.iter().filter(|(l, _)| *l == label).count();
            let held = test.iter().filter(|(l, _)| *l == label).count();
            assert_eq!(held, ((n as f64) * 0.2).round() as usize, "{label}");
        }
        assert_eq!(stable_split(&data, 0.2, 7), (train, test.clone()));
        assert_ne!(stable_split(&data, 0.2, 8).1, test);
    }

    #[test]
    fn stable_split_barely_moves_when_an_example_is_added() {
        let data: Examples = (0..400)
            .map(|i| (format!("l{}", i % 4), format!("message number {i}")))
            .collect();
        let mut more = data.clone();
        more.push(("l2".into(), "one more message".into()));

        let (_, before) = stable_split(&data, 0.15, 1);
        let (_, after) = stable_split(&more, 0.15, 1);
        let kept = before.iter().filter(|e| after.contains(e)).count();
        assert!(kept + 1 >= before.len(), "{kept} of {}", before.len());
        // The shuffled split draws a new sample of every label after l2.
        let (_, shuffled_before) = stratified_split(&data, 0.15, 1);
        let (_, shuffled_after) = stratified_split(&more, 0.15, 1);
        let kept_shuffled = shuffled_before
            .iter()
            .filter(|e| shuffled_after.contains(e))
            .count();
        assert!(kept_shuffled + 5 < shuffled_before.len(), "{kept_shuffled}");
    }

    #[test]
    fn copies_of_one_wording_sit_side_by_side() {
        let mut data: Examples = (0..200)
            .map(|i| ("a".to_string(), format!("question {i}")))
            .collect();
        for copy in ["How do I TOP UP?", "how do i top up", "How do I top-up ?!"] {
            data.push(("a".into(), copy.into()));
        }
        for seed in 0..20 {
            let ordered = &hashed_by_label(&data, seed)[0];
            let at = |i: usize| ordered.iter().position(|&j| j == i).unwrap();
            let mut places = [at(200), at(201), at(202)];
            places.sort_unstable();
            assert_eq!(places[2] - places[0], 2, "seed {seed}: {places:?}");
        }
        // Different wordings do not hash alike.
        assert_ne!(
            wording_hash("how do i top up", 1),
            wording_hash("how do i top", 1)
        );
        assert_ne!(
            wording_hash("how do i top up", 1),
            wording_hash("how do i top up", 2)
        );
    }

    #[test]
    fn reads_text_category_and_text_intent_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.csv");
        std::fs::write(&a, "text,category\n\"hello, there\",greet\nbye,leave\n").unwrap();
        assert_eq!(
            read_csv(&a).unwrap()[0],
            ("greet".to_string(), "hello, there".to_string())
        );
        let b = dir.path().join("b.csv");
        std::fs::write(&b, "intent,text\ngreet,hi\n").unwrap();
        assert_eq!(
            read_csv(&b).unwrap(),
            vec![("greet".to_string(), "hi".to_string())]
        );
        let c = dir.path().join("c.csv");
        std::fs::write(&c, "words,label\nhi,greet\n").unwrap();
        assert!(
            read_csv(&c)
                .unwrap_err()
                .to_string()
                .contains("no `text` column")
        );
    }
}

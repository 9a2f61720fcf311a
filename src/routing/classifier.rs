//! The built-in intent classifier: word uni/bigrams and character 3–5-grams,
//! sublinear TF-IDF, L2-normalised, into a multinomial logistic regression
//! trained by AdaGrad SGD. Pure Rust, trained in-process at start-up from the SOP
//! examples, deterministic for a given seed and data.
//!
//! The interface is the contract the rest of sopr relies on:
//! `classify(text) -> ranked (intent, probability)`. A message with no known
//! feature gets a uniform distribution, so it can never look confident.

use std::collections::HashMap;

use sha2::{Digest, Sha256};
use unicode_normalization::UnicodeNormalization;

/// Intents ranked by probability, best first. Probabilities sum to 1.
pub type Ranked = Vec<(String, f64)>;

/// Hyper-parameters. The defaults suit tens to thousands of examples per intent.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub epochs: usize,
    pub learning_rate: f32,
    pub l2: f32,
    pub seed: u64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            epochs: 40,
            learning_rate: 0.5,
            l2: 1e-5,
            seed: 42,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("no training examples")]
    Empty,
    #[error("need at least two intents to route between, found {0}")]
    TooFewIntents(usize),
}

pub struct Classifier {
    labels: Vec<String>,
    vocab: HashMap<String, u32>,
    idf: Vec<f32>,
    /// Row-major: `weights[feature * n_labels + label]`.
    weights: Vec<f32>,
    bias: Vec<f32>,
    version: String,
}

impl std::fmt::Debug for Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Classifier")
            .field("version", &self.version)
            .field("labels", &self.labels.len())
            .field("features", &self.vocab.len())
            .finish()
    }
}

/// Lowercased, NFKC-normalised, letters and digits only, split into words.
pub fn tokens(text: &str) -> Vec<String> {
    let normalised: String = text.nfkc().flat_map(char::to_lowercase).collect();
    normalised
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .map(|w| w.trim_matches('\''))
        .filter(|w| !w.is_empty())
        .map(|w| w.chars().take(40).collect())
        .collect()
}

/// Feature strings of a text; the vocabulary decides which of them count.
fn features(text: &str) -> Vec<String> {
    let words = tokens(text);
    let mut out = Vec::with_capacity(words.len() * 8);
    for (i, w) in words.iter().enumerate() {
        out.push(format!("w:{w}"));
        if let Some(next) = words.get(i + 1) {
            out.push(format!("b:{w} {next}"));
        }
        let chars: Vec<char> = format!("<{w}>").chars().collect();
        for n in 3..=5 {
            for gram in chars.windows(n) {
                out.push(format!("c:{}", gram.iter().collect::<String>()));
            }
        }
    }
    out
}

impl Classifier {
    /// Trains on `(intent, text)` pairs.
    pub fn train(
        examples: &[(String, String)],
        options: &TrainOptions,
    ) -> Result<Classifier, TrainError> {
        if examples.is_empty() {
            return Err(TrainError::Empty);
        }
        let mut labels: Vec<String> = examples.iter().map(|(l, _)| l.clone()).collect();
        labels.sort();
        labels.dedup();
        if labels.len() < 2 {
            return Err(TrainError::TooFewIntents(labels.len()));
        }
        let label_index: HashMap<String, usize> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.clone(), i))
            .collect();

        // Vocabulary and document frequencies.
        let mut vocab: HashMap<String, u32> = HashMap::new();
        let mut df: Vec<u32> = Vec::new();
        let docs: Vec<Vec<String>> = examples.iter().map(|(_, t)| features(t)).collect();
        for doc in &docs {
            let mut seen: Vec<u32> = doc
                .iter()
                .map(|f| {
                    let next = vocab.len() as u32;
                    *vocab.entry(f.clone()).or_insert(next)
                })
                .collect();
            seen.sort_unstable();
            seen.dedup();
            df.resize(vocab.len(), 0);
            for id in seen {
                df[id as usize] += 1;
            }
        }
        let n_docs = docs.len() as f32;
        let idf: Vec<f32> = df
            .iter()
            .map(|&d| ((1.0 + n_docs) / (1.0 + d as f32)).ln() + 1.0)
            .collect();

        let mut model = Classifier {
            weights: vec![0.0; vocab.len() * labels.len()],
            bias: vec![0.0; labels.len()],
            labels,
            vocab,
            idf,
            version: String::new(),
        };
        let rows: Vec<(Vec<(u32, f32)>, usize)> = examples
            .iter()
            .map(|(label, text)| (model.vectorise(text), label_index[label.as_str()]))
            .collect();
        model.fit(&rows, options);
        model.version = version_of(examples, options);
        Ok(model)
    }

    fn fit(&mut self, rows: &[(Vec<(u32, f32)>, usize)], options: &TrainOptions) {
        let k = self.labels.len();
        let mut grad_sq = vec![1e-8f32; self.weights.len()];
        let mut bias_sq = vec![1e-8f32; k];
        let mut order: Vec<usize> = (0..rows.len()).collect();
        let mut rng = SplitMix64(options.seed);
        let mut probs = vec![0.0f32; k];
        for _ in 0..options.epochs {
            shuffle(&mut order, &mut rng);
            for &r in &order {
                let (x, y) = &rows[r];
                self.scores_into(x, &mut probs);
                softmax_in_place(&mut probs);
                for (c, p) in probs.iter().enumerate() {
                    let g = p - if c == *y { 1.0 } else { 0.0 };
                    bias_sq[c] += g * g;
                    self.bias[c] -= options.learning_rate * g / bias_sq[c].sqrt();
                    for &(f, v) in x {
                        let i = f as usize * k + c;
                        let gw = g * v + options.l2 * self.weights[i];
                        grad_sq[i] += gw * gw;
                        self.weights[i] -= options.learning_rate * gw / grad_sq[i].sqrt();
                    }
                }
            }
        }
    }

    /// Sparse TF-IDF vector (sublinear TF, L2-normalised) over known features.
    fn vectorise(&self, text: &str) -> Vec<(u32, f32)> {
        let mut counts: HashMap<u32, f32> = HashMap::new();
        for f in features(text) {
            if let Some(&id) = self.vocab.get(&f) {
                *counts.entry(id).or_default() += 1.0;
            }
        }
        let mut v: Vec<(u32, f32)> = counts
            .into_iter()
            .map(|(id, tf)| (id, (1.0 + tf.ln()) * self.idf[id as usize]))
            .collect();
        // Sorted before summing: float addition order must not depend on hashing.
        v.sort_unstable_by_key(|(id, _)| *id);
        let norm = v.iter().map(|(_, x)| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            for (_, x) in &mut v {
                *x /= norm;
            }
        }
        v
    }

    fn scores_into(&self, x: &[(u32, f32)], out: &mut [f32]) {
        let k = self.labels.len();
        out.copy_from_slice(&self.bias);
        for &(f, v) in x {
            let row = &self.weights[f as usize * k..(f as usize + 1) * k];
            for (o, w) in out.iter_mut().zip(row) {
                *o += w * v;
            }
        }
    }

    /// Ranks every intent for a message. Text without any known feature (empty,
    /// emoji, another script) gets a uniform distribution.
    pub fn classify(&self, text: &str) -> Ranked {
        // Beyond a few thousand characters more text adds no signal, only cost.
        let text = match text.char_indices().nth(4000) {
            Some((cut, _)) => &text[..cut],
            None => text,
        };
        let x = self.vectorise(text);
        let k = self.labels.len();
        let mut probs = vec![0.0f32; k];
        if x.is_empty() {
            probs.fill(1.0 / k as f32);
        } else {
            self.scores_into(&x, &mut probs);
            softmax_in_place(&mut probs);
        }
        let mut ranked: Ranked = self
            .labels
            .iter()
            .cloned()
            .zip(probs.into_iter().map(f64::from))
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        ranked
    }

    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Identifies the model: algorithm, training data and options.
    pub fn version(&self) -> &str {
        &self.version
    }
}

fn version_of(examples: &[(String, String)], options: &TrainOptions) -> String {
    let mut hasher = Sha256::new();
    for (label, text) in examples {
        hasher.update(label.as_bytes());
        hasher.update([0]);
        hasher.update(text.as_bytes());
        hasher.update([0]);
    }
    hasher.update(format!("{options:?}").as_bytes());
    format!("lr1-{}", &hex::encode(hasher.finalize())[..12])
}

fn softmax_in_place(v: &mut [f32]) {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for x in v.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    for x in v.iter_mut() {
        *x /= sum;
    }
}

/// Small, fixed PRNG so a seed gives the same model on every platform and version.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn shuffle(v: &mut [usize], rng: &mut SplitMix64) {
    for i in (1..v.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> Vec<(String, String)> {
        let mut out = Vec::new();
        for t in [
            "my card has not arrived",
            "still waiting for my card",
            "card never came in the post",
            "where is my new card",
        ] {
            out.push(("card_arrival".to_string(), t.to_string()));
        }
        for t in [
            "what is the exchange rate",
            "how much is the euro rate",
            "exchange rate for dollars",
            "rate for converting pounds",
        ] {
            out.push(("exchange_rate".to_string(), t.to_string()));
        }
        out
    }

    #[test]
    fn learns_and_ranks() {
        let model = Classifier::train(&data(), &TrainOptions::default()).unwrap();
        let ranked = model.classify("my card still has not arrived");
        assert_eq!(ranked[0].0, "card_arrival");
        assert!(ranked[0].1 > 0.5);
        let total: f64 = ranked.iter().map(|r| r.1).sum();
        assert!((total - 1.0).abs() < 1e-4);
    }

    #[test]
    fn unknown_text_is_uniform() {
        let model = Classifier::train(&data(), &TrainOptions::default()).unwrap();
        for text in ["", "🙂🙂🙂", "00000000", "Привет"] {
            let ranked = model.classify(text);
            assert!((ranked[0].1 - 0.5).abs() < 1e-6, "{text}: {ranked:?}");
        }
        let huge = "card ".repeat(100_000);
        assert_eq!(model.classify(&huge)[0].0, "card_arrival");
    }

    #[test]
    fn deterministic_for_a_seed() {
        let a = Classifier::train(&data(), &TrainOptions::default()).unwrap();
        let b = Classifier::train(&data(), &TrainOptions::default()).unwrap();
        assert_eq!(a.version(), b.version());
        assert_eq!(a.classify("euro rate"), b.classify("euro rate"));
    }

    #[test]
    fn refuses_degenerate_data() {
        assert!(matches!(
            Classifier::train(&[], &TrainOptions::default()),
            Err(TrainError::Empty)
        ));
        let one = vec![("a".to_string(), "x".to_string())];
        assert!(matches!(
            Classifier::train(&one, &TrainOptions::default()),
            Err(TrainError::TooFewIntents(1))
        ));
    }
}

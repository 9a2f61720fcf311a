//! Router speed on Banking77 (77 intents, read from ../shared/datasets):
//! training time for the whole file and the latency of classifying one message.
//!
//!     cargo bench --bench router

use std::path::PathBuf;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use sopr::routing::Classifier;
use sopr::routing::classifier::TrainOptions;
use sopr::routing::dataset::read_csv;

fn router(c: &mut Criterion) {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets/banking77/train.csv");
    let examples = read_csv(&path).expect("Banking77 beside the checkout");
    let started = Instant::now();
    let model = Classifier::train(&examples, &TrainOptions::default()).expect("trains");
    println!(
        "setup: {} examples, {} intents; training (calibration split + final model) took {:.2}s",
        examples.len(),
        model.labels().len(),
        started.elapsed().as_secs_f64()
    );
    let texts: Vec<&str> = examples
        .iter()
        .step_by(97)
        .map(|(_, t)| t.as_str())
        .collect();
    let mut i = 0;
    c.bench_function("classify one message (77 intents)", |b| {
        b.iter(|| {
            i = (i + 1) % texts.len();
            std::hint::black_box(model.classify(texts[i]))
        })
    });
    c.bench_function("route one message (top 5 of 77 intents)", |b| {
        b.iter(|| {
            i = (i + 1) % texts.len();
            std::hint::black_box(model.classify_top(texts[i], 5))
        })
    });
    let options = TrainOptions {
        mlp_hidden: 0,
        ..TrainOptions::default()
    };
    let started = Instant::now();
    let linear = Classifier::train(&examples, &options).expect("trains");
    println!(
        "setup: without the network (routing.network_hidden = 0), training took {:.2}s",
        started.elapsed().as_secs_f64()
    );
    c.bench_function(
        "route one message (top 5 of 77 intents, linear model only)",
        |b| {
            b.iter(|| {
                i = (i + 1) % texts.len();
                std::hint::black_box(linear.classify_top(texts[i], 5))
            })
        },
    );
    let long = "I was charged twice for the same card payment and I would like a refund please "
        .repeat(50);
    c.bench_function("classify a 4 KB message", |b| {
        b.iter(|| std::hint::black_box(model.classify(&long)))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50);
    targets = router
}
criterion_main!(benches);

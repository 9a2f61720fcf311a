//! Routing: which intent a message is about, how sure we are, and which
//! sensitivity flags it raises. The classifier only ranks intents; it never
//! decides escalation (that is `pipeline`'s job, from declared rules).

pub mod calibration;
pub mod classifier;
pub mod dataset;
pub mod eval;
pub mod mlp;
pub mod screen;

pub use classifier::{Classifier, Ranked};
pub use screen::{Flag, Screen};

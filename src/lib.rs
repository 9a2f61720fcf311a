//! sopr: customer-support agents governed by versioned SOP files, with every
//! case the machine should not answer alone handed to a human review queue.
#![forbid(unsafe_code)]

pub mod agent;
pub mod cli;
pub mod config;
pub mod http;
pub mod keys;
pub mod llm;
pub mod notify;
pub mod pipeline;
pub mod retrain;
pub mod review;
pub mod routing;
pub mod service;
pub mod sop;
pub mod store;
pub mod telemetry;
pub mod users;

pub use http::{AppState, serve};

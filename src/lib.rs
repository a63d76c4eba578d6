//! clusterwatch: watches the live traffic of an AI assistant, clusters what people use it for, and
//! raises an alert when a cluster looks like coordinated abuse.
//!
//! The crate is laid out as the pipeline it runs, one stage per module, data flowing one way
//! through bounded channels:
//!
//! ```text
//! source (kafka | file) → decode → summarize → embed → cluster → detect → alert + export
//! ```
//!
//! Raw conversation text exists only between `decode` and `summarize`; everything downstream
//! sees a scrubbed summary, hashed account ids and vectors. See `ARCHITECTURE.md`.

pub mod alert;
pub mod bench;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod decode;
pub mod demo;
pub mod detect;
pub mod embed;
pub mod eval;
pub mod event;
pub mod export;
pub mod heap;
pub mod investigation;
pub mod llm;
pub mod naming;
pub mod pipeline;
pub mod privacy;
pub mod remote;
pub mod replay;
pub mod run;
pub mod scale;
pub mod shutdown;
pub mod source;
pub mod summarize;

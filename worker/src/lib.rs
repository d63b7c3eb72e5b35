//! The job engine: the worker loop that claims jobs from the queue and
//! keeps their heartbeat ([`engine`]), the reconciler that re-delivers and
//! cleans up after dead workers ([`reconciler`]), progress reporting
//! ([`reporter`]), and one module per kind of job ([`kinds`]).
//!
//! `supascale-worker` runs it as a process of its own (scale-out);
//! `supascale-api` runs it in-process for the embedded default. The job
//! record it works on (rows, queue, events) is `supascale_shared::jobs`.

pub mod context;
pub mod engine;
pub mod health;
pub mod kinds;
pub mod reconciler;
pub mod reporter;

pub use context::{JobContext, worker_id};
pub use engine::run;

//! mos-runtime: fine-tune language models on many datasets while an online Mixture-of-Skills
//! scheduler learns how much of each dataset to use.
//!
//! The crate is both the `mos-runtime` daemon and a library for hosts that embed it. Start here:
//! [`runtime::Runtime::start`] runs everything from a [`config::Config`] and returns a
//! [`runtime::RuntimeHandle`]; [`mixture`] is the scheduler's pure maths; [`service::serve`] runs
//! the scheduler alone behind an HTTP API for trainers in other processes or languages;
//! ARCHITECTURE.md in the repository maps the modules and states their invariants.

#![deny(missing_docs)]

pub mod actors;
pub mod checkpoint;
pub mod config;
pub mod control;
pub mod data;
pub mod experiment;
pub mod faults;
pub mod fsio;
pub mod learner;
pub mod mixture;
pub mod model;
pub mod replay;
pub mod report;
pub mod runlog;
pub mod runtime;
pub mod seed;
pub mod service;
pub mod telemetry;
pub mod trainer;

//! The webhook (`serve`, `mutate`, `explain`): admission over TLS, bad input, reloads,
//! shutdown, abuse, the decision's properties; on a real API server, the watch, the report and
//! `explain` of live pods.

mod abuse;
mod admission;
mod bad_input;
mod explain;
mod kubernetes;
mod operations;
mod proptest;
mod real;
mod reload;
mod shutdown;

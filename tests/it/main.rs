//! The integration tests, one binary: each module drives real nodes (in
//! process on 127.0.0.1:0, or the real binary) through their public interface.

mod common;

mod admin;
mod auth;
mod bad_input;
mod client;
mod cluster;
mod contract;
mod faults;
mod hostile;
mod integrity;
mod metrics;
mod process;
mod races;
mod ranges;
mod read_through;
mod round_trip;
mod s3;
mod s3_failures;
mod s3_faults;
mod tls;
mod warm;
mod write_back;

//! Support code for rimir's end-to-end tests.

pub mod fake_apiserver;

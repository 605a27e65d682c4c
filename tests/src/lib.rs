//! Support code for rimir's end-to-end tests.

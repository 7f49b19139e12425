//! Structure-aware client requests against an in-process state machine and a model.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: aspen_fuzz::client::ClientInput| {
    aspen_fuzz::client::client_requests(&input);
});

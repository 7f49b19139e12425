//! Peer RPC payloads from a peer that sends garbage.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    aspen_fuzz::peer_messages(data);
});

//! Storage decoders on arbitrary bytes: log entries, state records, snapshot frames, whole
//! Aspen and etcd snapshot files (restored as `aspen snapshot restore` does).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    aspen_fuzz::storage_decode(data);
});

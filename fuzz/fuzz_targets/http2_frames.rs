#![no_main]
//! See bao_kms_provider::fuzzing::http2_frames.
libfuzzer_sys::fuzz_target!(|data: &[u8]| bao_kms_provider::fuzzing::http2_frames(data));

#![no_main]
//! See bao_kms_provider::fuzzing::key_registry.
libfuzzer_sys::fuzz_target!(|data: &[u8]| bao_kms_provider::fuzzing::key_registry(data));

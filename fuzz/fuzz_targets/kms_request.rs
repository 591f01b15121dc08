#![no_main]
//! See bao_kms_provider::fuzzing::kms_request.
libfuzzer_sys::fuzz_target!(|data: &[u8]| bao_kms_provider::fuzzing::kms_request(data));

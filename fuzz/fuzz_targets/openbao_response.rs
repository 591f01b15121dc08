#![no_main]
//! See bao_kms_provider::fuzzing::openbao_response.
libfuzzer_sys::fuzz_target!(|data: &[u8]| bao_kms_provider::fuzzing::openbao_response(data));
